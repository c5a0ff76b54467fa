//! The edge (SPEC §10), through the real binary over raw sockets, since HTTP clients tidy paths before
//! sending them: every spelling of a path is normalised before routing and auth read it, the upstream receives
//! the normalised path, and what cannot be normalised is refused with 400 and a JSON body, never forwarded.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use locci_e2e::*;

/// A raw exchange's answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Sends `head` (request line and headers, without the final blank line) on a fresh connection and reads
/// the answer to the end (the request says `Connection: close`).
fn raw(addr: SocketAddr, head: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("{head}\r\nHost: locci.test\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

/// The path the demo backend says it received.
fn upstream_path(answer: &Answer) -> String {
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.head));
    json["path"].as_str().unwrap_or("").to_string()
}

fn gateway(b: &[Backend], path_settings: &str) -> Proxy {
    Proxy::start(&format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\", path: {path_settings} }}\ncontrol_api: {{ enabled: false }}\n\
         upstreams: {{ u: {{ servers: {} }} }}\n\
         api_gateway:\n  routes:\n\
         \x20   api: {{ path_pattern: \"^/api\", upstream: u, strip_prefix: true }}\n\
         \x20   all: {{ path_pattern: \"^/\", upstream: u, middlewares: [auth] }}\n\
         \x20 middlewares:\n    authentication: {{ jwt_secret: \"edge-test-secret-of-some-length\", excluded_paths: [\"^/public/\"] }}\n",
        servers_yaml(b)
    ))
}

#[test]
fn dot_segments_cannot_walk_around_an_auth_exclusion() {
    // The table: an excluded prefix followed by a climb out of it must be judged where it lands.
    let b = backends(1);
    let proxy = gateway(&b, "{}");
    for spelling in ["/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2e/admin", "/public/.%2e/admin"] {
        let answer = raw(proxy.addr, &format!("GET {spelling} HTTP/1.1"));
        assert_eq!(answer.status, 401, "{spelling}: {}", answer.head);
    }
    assert_eq!(b[0].requests(), 0, "a refused request reached the upstream");

    // The other way round: a path that lands inside the exclusion is served, and the upstream is sent the
    // path the decision was made on, not the spelling.
    let answer = raw(proxy.addr, "GET /private/../public/%7Ex/./y HTTP/1.1");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(upstream_path(&answer), "/public/~x/y");
}

#[test]
fn escaped_slashes_are_refused_with_a_json_400_and_never_forwarded() {
    let b = backends(1);
    let proxy = gateway(&b, "{}");
    for (spelling, error) in [
        ("/public/..%2fadmin", "escaped slash in path"),
        ("/public%2F..%2Fadmin", "escaped slash in path"),
        ("/public/..%5Cadmin", "escaped slash in path"),
        ("/public/%C0%AE%C0%AE/admin", "path is not valid UTF-8"),
        ("/public/a%zz", "malformed percent-encoding in path"),
        ("/public/a%00", "path is not valid UTF-8"),
    ] {
        let answer = raw(proxy.addr, &format!("GET {spelling} HTTP/1.1"));
        assert_eq!(answer.status, 400, "{spelling}: {}", answer.head);
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{spelling}: {e}"));
        assert_eq!(json["error"], error, "{spelling}");
        assert!(json["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{spelling}: {json}");
    }
    assert_eq!(b[0].requests(), 0, "a refused request reached the upstream");
}

#[test]
fn strip_prefix_and_routing_read_the_normalised_path() {
    let b = backends(1);
    let proxy = gateway(&b, "{}");
    // `/x/../api/users` is `/api/users`: the api route takes it and strips its prefix.
    let answer = raw(proxy.addr, "GET /x/../api/users?id=1 HTTP/1.1");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(upstream_path(&answer), "/users");
}

#[test]
fn each_path_setting_does_what_it_says() {
    let b = backends(1);
    // keep: the escaped slash is forwarded as written and is not a separator, so this stays under /public/.
    let keep = gateway(&b, "{ escaped_slashes: keep }");
    let answer = raw(keep.addr, "GET /public/..%2fadmin HTTP/1.1");
    assert_eq!(answer.status, 200, "{}", answer.head);
    // axum decodes nothing in the path, so this is the exact text the upstream read.
    assert_eq!(upstream_path(&answer), "/public/..%2Fadmin");
    drop(keep);

    // unescape: decoded first, so the climb out of /public/ is seen and auth applies.
    let unescape = gateway(&b, "{ escaped_slashes: unescape }");
    assert_eq!(raw(unescape.addr, "GET /public/..%2fadmin HTTP/1.1").status, 401);
    drop(unescape);

    // merge_slashes: runs of slashes become one before routing.
    let merge = gateway(&b, "{ merge_slashes: true }");
    let answer = raw(merge.addr, "GET //public//x HTTP/1.1");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(upstream_path(&answer), "/public/x");
    drop(merge);

    // normalize off: the path goes through as written (the operator chose to trust the upstream).
    let off = gateway(&b, "{ normalize: false }");
    let answer = raw(off.addr, "GET /public/../admin HTTP/1.1");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(upstream_path(&answer), "/public/../admin");
}
