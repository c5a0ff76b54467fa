//! TLS: termination on the listener (HTTP/1.1 and h2 by ALPN) and TLS to upstream servers with SNI,
//! with certificates made by the test's own CA.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{Read, Write};

use locci_e2e::*;

fn tls_gateway(servers: &str) -> String {
    format!(
        "mode: load_balancer\nserver:\n  bind_address: \"{{BIND}}\"\n  tls: {{ cert_path: server.crt, key_path: server.key }}\n\
         control_api: {{ enabled: false }}\nupstreams:\n  u: {{ servers: {servers} }}\nload_balancer: {{ upstream: u }}\n"
    )
}

fn start_tls(pki: &TestPki, servers: &str) -> Proxy {
    Proxy::start_with(&tls_gateway(servers), &[], &[("server.crt", &pki.cert_pem), ("server.key", &pki.key_pem)])
}

#[test]
fn https_with_the_test_ca_trusted_reaches_the_upstream_over_http1_and_h2() {
    let pki = pki();
    let b = backends(1);
    let proxy = start_tls(&pki, &servers_yaml(&b));
    let url = format!("https://localhost:{}/hello", proxy.addr.port());
    let h1 = reqwest::blocking::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let resp = h1.get(&url).send().unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["server"], "s0");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    let resp = tls_client(&pki.ca_pem).get(&url).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 offered by ALPN is negotiated");
}

#[test]
fn plain_http_to_the_tls_port_fails_cleanly_and_the_proxy_keeps_serving() {
    let pki = pki();
    let b = backends(1);
    let proxy = start_tls(&pki, &servers_yaml(&b));
    let mut plain = std::net::TcpStream::connect(proxy.addr).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"), "plain HTTP must not be served");
    let url = format!("https://localhost:{}/still", proxy.addr.port());
    assert_eq!(tls_client(&pki.ca_pem).get(&url).send().unwrap().status(), 200);
}

#[test]
fn bad_certificate_files_each_give_exit_1_naming_the_file() {
    let pki = pki();
    let other = self::pki();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("good.crt", pki.cert_pem.as_str()),
        ("good.key", pki.key_pem.as_str()),
        ("other.key", other.key_pem.as_str()),
        ("garbage.pem", "not pem at all"),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let cases = [
        ("missing.crt", "good.key", "server.tls.cert_path: file \"missing.crt\" does not exist"),
        ("good.crt", "missing.key", "server.tls.key_path: file \"missing.key\" does not exist"),
        ("garbage.pem", "good.key", "server.tls.cert_path: \"garbage.pem\" is not a PEM certificate"),
        ("good.crt", "garbage.pem", "server.tls.key_path: \"garbage.pem\" is not a PEM private key"),
        ("good.crt", "other.key", "server.tls.key_path: \"other.key\" does not belong to the certificate \"good.crt\""),
    ];
    for (cert, key, expected) in cases {
        let cfg = format!(
            "mode: load_balancer\nserver:\n  bind_address: \"{}\"\n  tls: {{ cert_path: {cert}, key_path: {key} }}\n\
             upstreams: {{ u: {{ servers: [\"127.0.0.1:9\"] }} }}\nload_balancer: {{ upstream: u }}\ncontrol_api: {{ enabled: false }}\n",
            free_addr()
        );
        std::fs::write(dir.path().join("config.yaml"), cfg).unwrap();
        let out = run_cli(&["--config", "config.yaml"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cert}/{key}: {stderr}");
        assert!(stderr.contains(expected), "{cert}/{key}: expected {expected:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn tls_to_upstreams_uses_sni_and_verifies_against_the_configured_ca() {
    // Goal: upstream TLS works and is verified. Method: a TLS-terminating locci in front of a backend plays
    // the TLS upstream; a second locci reaches it with tls: true, sni: localhost and the test CA, and fails
    // (502) without the CA, since the certificate is not in the system roots.
    let pki = pki();
    let b = backends(1);
    let tls_upstream = start_tls(&pki, &servers_yaml(&b));
    let front = |ca: &str| {
        let cfg = format!(
            "mode: load_balancer\nserver: {{ bind_address: \"{{BIND}}\" }}\ncontrol_api: {{ enabled: false }}\n\
             upstreams:\n  secure:\n    servers: [\"{}\"]\n    tls: true\n    sni: localhost\n{ca}load_balancer: {{ upstream: secure }}\n",
            tls_upstream.addr
        );
        Proxy::start_with(&cfg, &[], &[("ca.pem", &pki.ca_pem)])
    };
    let trusted = front("    ca_path: ca.pem\n");
    let resp = client().get(trusted.url("/through")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["server"], "s0");
    assert_eq!(body["path"], "/through");
    let untrusted = front("");
    assert_eq!(client().get(untrusted.url("/through")).send().unwrap().status(), 502);
}
