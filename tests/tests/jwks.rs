//! JWT keys from a JWKS endpoint (SPEC §15) against the real binary: an HTTPS JWKS server the test runs (its
//! certificate from the test's own CA, given to locci as `jwks_ca_path`) serving RS256 and ES256 keys the test
//! makes, rotated and taken down while locci serves.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use locci_e2e::*;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key the test made, with its public JWK.
struct TestKey {
    jwk: serde_json::Value,
    signer: EncodingKey,
    alg: Algorithm,
    kid: String,
    public_pem: Vec<u8>,
}

fn rsa_key(kid: &str) -> TestKey {
    let key = Rsa::generate(2048).unwrap();
    let jwk = serde_json::json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(&key.n().to_vec()), "e": b64(&key.e().to_vec()) });
    let public_pem = key.public_key_to_pem().unwrap();
    let pem = PKey::from_rsa(key).unwrap().private_key_to_pem_pkcs8().unwrap();
    TestKey {
        jwk,
        signer: EncodingKey::from_rsa_pem(&pem).unwrap(),
        alg: Algorithm::RS256,
        kid: kid.into(),
        public_pem,
    }
}

fn ec_key(kid: &str) -> TestKey {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    key.public_key().affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap()).unwrap();
    let jwk = serde_json::json!({ "kty": "EC", "kid": kid, "crv": "P-256",
        "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap()) });
    let public_pem = key.public_key_to_pem().unwrap();
    let pem = PKey::from_ec_key(key).unwrap().private_key_to_pem_pkcs8().unwrap();
    TestKey { jwk, signer: EncodingKey::from_ec_pem(&pem).unwrap(), alg: Algorithm::ES256, kid: kid.into(), public_pem }
}

fn exp() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600
}

impl TestKey {
    fn token(&self) -> String {
        self.token_as(self.alg)
    }

    /// A token signed by this key whose header claims `alg`.
    fn token_as(&self, alg: Algorithm) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let honest =
            jsonwebtoken::encode(&header, &serde_json::json!({ "sub": "u", "exp": exp() }), &self.signer).unwrap();
        if alg == self.alg {
            return honest;
        }
        // Same signature, header rewritten to claim another algorithm.
        let mut parts: Vec<&str> = honest.split('.').collect();
        let claimed = b64(format!("{{\"alg\":\"{alg:?}\",\"typ\":\"JWT\",\"kid\":\"{}\"}}", self.kid).as_bytes());
        parts[0] = &claimed;
        parts.join(".")
    }
}

/// An HTTPS server with one JWKS document the test can replace, or take away (then it answers 503).
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<Option<Vec<u8>>>>,
    fetches: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    dir: tempfile::TempDir,
}

impl JwksServer {
    fn start(pki: &TestPki, keys: &[&TestKey]) -> JwksServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &pki.key_pem).unwrap();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate_chain_file(dir.path().join("cert.pem")).unwrap();
        acceptor.set_private_key_file(dir.path().join("key.pem"), SslFiletype::PEM).unwrap();
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = JwksServer {
            addr,
            document: Arc::new(Mutex::new(None)),
            fetches: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            dir,
        };
        server.publish(keys);
        let (document, fetches, stop) =
            (Arc::clone(&server.document), Arc::clone(&server.fetches), Arc::clone(&server.stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let Ok(tls) = acceptor.accept(stream) else { continue };
                let mut reader = BufReader::new(tls);
                let mut line = String::new();
                let mut first = None;
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    first.get_or_insert_with(|| line.clone());
                    line.clear();
                }
                if !first.is_some_and(|l| l.starts_with("GET /jwks.json ")) {
                    continue;
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                let answer = match document.lock().unwrap().clone() {
                    Some(body) => {
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        head.extend(body);
                        head
                    }
                    None => {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                    }
                };
                let tls = reader.get_mut();
                let _ = tls.write_all(&answer);
                let _ = tls.shutdown();
            }
        });
        server
    }

    /// Serves these keys from now on.
    fn publish(&self, keys: &[&TestKey]) {
        let doc = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        *self.document.lock().unwrap() = Some(serde_json::to_vec(&doc).unwrap());
    }

    /// Answers 503 from now on.
    fn take_down(&self) {
        *self.document.lock().unwrap() = None;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.addr.port())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = &self.dir;
    }
}

fn gateway(b: &[Backend], auth: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\n\
         upstreams:\n  app: {{ servers: {} }}\n\
         api_gateway:\n  routes:\n    api: {{ path_pattern: \"^/\", upstream: app, middlewares: [auth] }}\n\
         \x20 middlewares:\n    authentication: {auth}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n",
        servers_yaml(b)
    )
}

fn status(proxy: &Proxy, token: &str) -> u16 {
    client().get(proxy.url("/x")).bearer_auth(token).send().unwrap().status().as_u16()
}

fn counted(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), name, labels)
}

#[test]
fn listed_keys_verify_and_a_rotation_is_followed_by_one_early_refresh() {
    let pki = pki();
    let (a, b, c, d) = (rsa_key("a"), ec_key("b"), rsa_key("c"), rsa_key("d"));
    let jwks = JwksServer::start(&pki, &[&a, &b]);
    let backends = backends(1);
    let auth = format!(
        "{{ jwks_url: \"{}\", jwks_ca_path: ca.pem, jwks_refresh_secs: 3600, algorithms: [RS256, ES256] }}",
        jwks.url()
    );
    let proxy = Proxy::start_with(&gateway(&backends, &auth), &[], &[("ca.pem", &pki.ca_pem)]);
    // No token before the first fetch is in: one then would (rightly) bring a refresh forward.
    assert!(
        wait_until(WAIT, || counted(&proxy, "locci_jwks_refresh_total", &[("result", "success")]) == 1.0),
        "{}",
        proxy.logs()
    );
    assert_eq!(status(&proxy, &a.token()), 200, "RS256 key a");
    assert_eq!(status(&proxy, &b.token()), 200, "ES256 key b");
    assert_eq!(jwks.fetches(), 1, "one fetch at start-up; the next is an hour away");
    // The provider rotates: c is new, a is gone.
    jwks.publish(&[&c, &b]);
    assert_eq!(status(&proxy, &c.token()), 401, "c is unknown until the set is refreshed");
    assert!(wait_until(WAIT, || status(&proxy, &c.token()) == 200), "the unknown kid refreshed the set early");
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(status(&proxy, &a.token()), 401, "a was removed from the set");
    assert_eq!(status(&proxy, &b.token()), 200);
    // Another unknown kid within 30 s of the early refresh: refused, and no further fetch.
    assert_eq!(status(&proxy, &d.token()), 401);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(jwks.fetches(), 2, "at most one early refresh per 30 s");
    assert_eq!(counted(&proxy, "locci_jwks_refresh_total", &[("result", "success")]), 2.0);
    assert!(counted(&proxy, "locci_auth_rejected_total", &[("reason", "unknown_key")]) >= 3.0);
}

#[test]
fn a_jwks_server_that_goes_down_leaves_the_last_good_set_in_force() {
    let pki = pki();
    let a = rsa_key("a");
    let jwks = JwksServer::start(&pki, &[&a]);
    let backends = backends(1);
    let auth =
        format!("{{ jwks_url: \"{}\", jwks_ca_path: ca.pem, jwks_refresh_secs: 1, algorithms: [RS256] }}", jwks.url());
    let proxy = Proxy::start_with(&gateway(&backends, &auth), &[], &[("ca.pem", &pki.ca_pem)]);
    assert!(wait_until(WAIT, || status(&proxy, &a.token()) == 200), "{}", proxy.logs());
    jwks.take_down();
    assert!(
        wait_until(WAIT, || counted(&proxy, "locci_jwks_refresh_total", &[("result", "failure")]) >= 2.0),
        "the failed refreshes are counted:\n{}",
        proxy.logs()
    );
    assert_eq!(status(&proxy, &a.token()), 200, "the last good set is kept");
    assert!(proxy.logs().contains("JWKS refresh failed; the last good key set is kept"), "{}", proxy.logs());
}

#[test]
fn without_a_key_set_tokens_get_401_and_the_proxy_serves_on() {
    let pki = pki();
    let a = rsa_key("a");
    let backends = backends(1);
    // Nothing listens there: the first fetch fails, and every later one.
    let auth = format!(
        "{{ jwks_url: \"https://user:hunter2@localhost:{}/jwks.json\", jwks_ca_path: ca.pem, algorithms: [RS256] }}",
        free_addr().port()
    );
    let proxy = Proxy::start_with(&gateway(&backends, &auth), &[], &[("ca.pem", &pki.ca_pem)]);
    assert!(wait_until(WAIT, || counted(&proxy, "locci_jwks_refresh_total", &[("result", "failure")]) >= 1.0));
    assert_eq!(status(&proxy, &a.token()), 401);
    assert_eq!(client().get(proxy.control_url("/healthz")).send().unwrap().status(), 200);
    let logs = proxy.logs();
    assert!(logs.contains("no key set is loaded yet"), "{logs}");
    assert!(!logs.contains("hunter2"), "the URL's password never reaches the log:\n{logs}");
    let config = client().get(proxy.control_url("/api/v1/config")).send().unwrap().text().unwrap();
    assert!(!config.contains("hunter2"), "{config}");
}

#[test]
fn algorithm_and_key_type_mismatches_are_refused_including_the_key_confusion_forgery() {
    let pki = pki();
    let (a, b) = (rsa_key("a"), ec_key("b"));
    let jwks = JwksServer::start(&pki, &[&a, &b]);
    let backends = backends(1);
    let auth = format!(
        "{{ jwks_url: \"{}\", jwks_ca_path: ca.pem, algorithms: [RS256, ES256, HS256], jwt_secret: an-hmac-secret-that-is-long-enough-1234 }}",
        jwks.url()
    );
    let proxy = Proxy::start_with(&gateway(&backends, &auth), &[], &[("ca.pem", &pki.ca_pem)]);
    assert!(wait_until(WAIT, || status(&proxy, &a.token()) == 200), "{}", proxy.logs());
    let before = counted(&proxy, "locci_auth_rejected_total", &[("reason", "wrong_algorithm")]);
    // The RSA key's token claiming ES256, the EC key's claiming RS256: the key's type decides.
    assert_eq!(status(&proxy, &a.token_as(Algorithm::ES256)), 401);
    assert_eq!(status(&proxy, &b.token_as(Algorithm::RS256)), 401);
    // a names RS256 in the set: RS384 is not allowed (and not a's algorithm).
    assert_eq!(status(&proxy, &a.token_as(Algorithm::RS384)), 401);
    assert_eq!(counted(&proxy, "locci_auth_rejected_total", &[("reason", "wrong_algorithm")]) - before, 3.0);
    // The key-confusion forgery: HS256 "signed" with the RSA public key, naming it. HS256 is verified with
    // jwt_secret alone, so the signature is simply wrong.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("a".into());
    let forged = jsonwebtoken::encode(
        &header,
        &serde_json::json!({ "sub": "u", "exp": exp() }),
        &EncodingKey::from_secret(&a.public_pem),
    )
    .unwrap();
    assert_eq!(status(&proxy, &forged), 401);
    assert_eq!(counted(&proxy, "locci_auth_rejected_total", &[("reason", "bad_signature")]), 1.0);
    let _ = &b.public_pem;
}

#[test]
fn check_refuses_a_static_public_key_beside_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let a = rsa_key("a");
    std::fs::write(dir.path().join("public.pem"), &a.public_pem).unwrap();
    let config = "mode: api_gateway\nupstreams: { app: { servers: [\"127.0.0.1:9\"] } }\n\
                  api_gateway:\n  routes: { api: { path_pattern: \"^/\", upstream: app, middlewares: [auth] } }\n  \
                  middlewares:\n    authentication: { jwks_url: \"https://idp.example/jwks.json\", jwt_public_key_path: public.pem, algorithms: [RS256] }\n";
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let out = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("jwks_url and jwt_public_key_path both give the keys of RS, PS, ES and EdDSA tokens"),
        "{text}"
    );
}

#[test]
fn a_jwks_endpoint_whose_certificate_is_not_trusted_gives_no_keys() {
    let pki = pki();
    let a = rsa_key("a");
    let jwks = JwksServer::start(&pki, &[&a]);
    let backends = backends(1);
    // No jwks_ca_path: the system's roots do not know the test's CA.
    let auth = format!("{{ jwks_url: \"{}\", algorithms: [RS256] }}", jwks.url());
    let proxy = Proxy::start(&gateway(&backends, &auth));
    assert!(wait_until(WAIT, || counted(&proxy, "locci_jwks_refresh_total", &[("result", "failure")]) >= 1.0));
    assert_eq!(status(&proxy, &a.token()), 401);
    assert_eq!(counted(&proxy, "locci_jwks_refresh_total", &[("result", "success")]), 0.0);
    assert!(proxy.logs().contains("certificate"), "the log says why:\n{}", proxy.logs());
}
