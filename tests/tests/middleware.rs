//! Middlewares against the real binary: rate limits, JWT (tokens signed by jsonwebtoken with the
//! test's own keys), CORS, and the order a route lists them in.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use locci_e2e::*;
use serde::Serialize;

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
const RSA_PRIVATE: &str = include_str!("../fixtures/jwt-rsa-private.pem");
const RSA_PUBLIC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt-rsa-public.pem");

fn config(servers: &str, routes: &str, middlewares: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\ncontrol_api: {{ enabled: false }}\n\
         upstreams:\n  pool: {{ servers: {servers} }}\napi_gateway:\n  routes:\n{routes}  middlewares:\n{middlewares}"
    )
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

#[allow(clippy::disallowed_methods)] // tokens are made against the real wall clock the proxy uses
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(exp_in: i64) -> Claims<'static> {
    Claims { sub: "u1", exp: (unix_now() as i64 + exp_in) as u64, nbf: None, iss: Some("locci-test"), aud: Some("api") }
}

fn hs256(c: &Claims<'_>, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), c, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn rs256(c: &Claims<'_>) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), c, &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap())
        .unwrap()
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn rate_limit_answers_429_after_the_burst_and_keys_have_their_own_buckets() {
    let b = backends(1);
    let routes = "    api: { path_pattern: \"^/\", upstream: pool, middlewares: [rate_limit] }\n";
    let mw = "    rate_limiting: { requests_per_minute: 60, burst_size: 5, key_header: X-Api-Key }\n";
    let proxy = Proxy::start(&config(&servers_yaml(&b), routes, mw));
    let http = client();
    for i in 0..5 {
        let resp = http.get(proxy.url("/")).header("X-Api-Key", "a").send().unwrap();
        assert_eq!(resp.status(), 200, "request {i} within the burst");
        assert_eq!(resp.headers()["ratelimit-limit"], "5");
        assert_eq!(resp.headers()["ratelimit-remaining"], (4 - i).to_string().as_str());
    }
    let resp = http.get(proxy.url("/")).header("X-Api-Key", "a").send().unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert_eq!(
        http.get(proxy.url("/")).header("X-Api-Key", "b").send().unwrap().status(),
        200,
        "key b has its own bucket"
    );
    assert_eq!(b[0].requests(), 6, "the refused request never reached the upstream");
}

fn auth_proxy(b: &[Backend], auth: &str) -> Proxy {
    let routes = "    api: { path_pattern: \"^/\", upstream: pool, middlewares: [auth] }\n";
    Proxy::start(&config(&servers_yaml(b), routes, &format!("    authentication: {auth}\n")))
}

#[test]
fn hs256_tokens_pass_and_every_bad_token_gets_401() {
    let b = backends(1);
    let proxy = auth_proxy(
        &b,
        &format!(
            "{{ jwt_secret: \"{SECRET}\", algorithms: [HS256], issuer: locci-test, audience: api, leeway_secs: 0, excluded_paths: [\"/login\", \"^/public/\"] }}"
        ),
    );
    let http = client();
    let get = |token: Option<String>| {
        let mut req = http.get(proxy.url("/private"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.send().unwrap()
    };
    assert_eq!(get(Some(hs256(&claims(300), SECRET))).status(), 200);
    let missing = get(None);
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        b64(format!(r#"{{"sub":"u1","exp":{},"iss":"locci-test","aud":"api"}}"#, unix_now() + 300).as_bytes());
    let bad = [
        ("expired", hs256(&claims(-60), SECRET)),
        ("wrong key", hs256(&claims(300), "another-secret-of-sufficient-length!!")),
        ("wrong issuer", hs256(&Claims { iss: Some("evil"), ..claims(300) }, SECRET)),
        ("wrong audience", hs256(&Claims { aud: Some("other"), ..claims(300) }, SECRET)),
        ("missing issuer", hs256(&Claims { iss: None, ..claims(300) }, SECRET)),
        ("not yet valid", hs256(&Claims { nbf: Some(unix_now() + 600), ..claims(900) }, SECRET)),
        ("alg none", format!("{none_header}.{payload}.")),
        ("other allowed-family alg", rs256(&claims(300))),
        ("malformed", "not.a.jwt".to_string()),
    ];
    for (what, token) in bad {
        let resp = get(Some(token));
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer error=\"invalid_token\"", "{what}");
    }
    assert_eq!(http.get(proxy.url("/login")).send().unwrap().status(), 200, "exact excluded path");
    assert_eq!(http.get(proxy.url("/public/x")).send().unwrap().status(), 200, "regex excluded path");
    assert!(!proxy.logs().contains(SECRET), "the secret leaked into the logs");
}

#[test]
fn rs256_tokens_pass_and_the_hs256_key_confusion_attack_fails() {
    let b = backends(1);
    let proxy = auth_proxy(&b, &format!("{{ jwt_public_key_path: \"{RSA_PUBLIC_PATH}\", algorithms: [RS256] }}"));
    let http = client();
    let c = Claims { iss: None, aud: None, ..claims(300) };
    let ok = http.get(proxy.url("/")).header("Authorization", format!("Bearer {}", rs256(&c))).send().unwrap();
    assert_eq!(ok.status(), 200);
    // The classic attack: sign with HS256 using the RSA public key as the HMAC secret.
    let public = std::fs::read_to_string(RSA_PUBLIC_PATH).unwrap();
    let forged = hs256(&c, &public);
    let resp = http.get(proxy.url("/")).header("Authorization", format!("Bearer {forged}")).send().unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn cors_preflight_from_an_allowed_origin_is_answered_and_others_are_refused() {
    let b = backends(1);
    let routes = "    api: { path_pattern: \"^/api\", upstream: pool, methods: [GET], middlewares: [cors] }\n";
    let mw = "    cors: { allowed_origins: [\"https://app.example.com\"], allowed_methods: [GET, POST], allowed_headers: [Authorization], expose_headers: [X-Request-Id], max_age_secs: 600 }\n";
    let proxy = Proxy::start(&config(&servers_yaml(&b), routes, mw));
    let http = client();
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, proxy.url("/api/x"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
            .unwrap()
    };
    let ok = preflight("https://app.example.com");
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "Authorization");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    let refused = preflight("https://evil.example.com");
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    assert_eq!(b[0].requests(), 0, "preflights are not forwarded");
    let actual = http.get(proxy.url("/api/x")).header("Origin", "https://app.example.com").send().unwrap();
    assert_eq!(actual.status(), 200);
    assert_eq!(actual.headers()["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(actual.headers()["access-control-expose-headers"], "X-Request-Id");
}

#[test]
fn middleware_order_is_the_route_order() {
    // Goal: with [auth, rate_limit] unauthenticated requests are refused before they spend tokens;
    // with [rate_limit, auth] they spend them. Method: the same burst of bad requests on both routes.
    let b = backends(1);
    let routes = "    auth_first: { path_pattern: \"^/a\", upstream: pool, middlewares: [auth, rate_limit] }\n    \
                  limit_first: { path_pattern: \"^/l\", upstream: pool, middlewares: [rate_limit, auth] }\n";
    let mw = format!(
        "    rate_limiting: {{ requests_per_minute: 60, burst_size: 3 }}\n    authentication: {{ jwt_secret: \"{SECRET}\" }}\n"
    );
    let proxy = Proxy::start(&config(&servers_yaml(&b), routes, &mw));
    let http = client();
    for _ in 0..5 {
        assert_eq!(http.get(proxy.url("/a")).send().unwrap().status(), 401);
    }
    let statuses: Vec<u16> = (0..5).map(|_| http.get(proxy.url("/l")).send().unwrap().status().as_u16()).collect();
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
    let token = hs256(&Claims { iss: None, aud: None, ..claims(300) }, SECRET);
    let resp = http.get(proxy.url("/a")).header("Authorization", format!("Bearer {token}")).send().unwrap();
    assert_eq!(resp.status(), 200, "auth-first route kept its tokens");
}
