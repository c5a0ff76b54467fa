//! locci-loadgen against staging-like targets (SPEC §12): HTTPS verified against the test's own CA, refused
//! without it (once per connection, no retry storm), `--insecure` saying so, and HTTP/2 by ALPN and as h2c,
//! each counted by a real loopback server the test runs (rustls + hyper), which records every connection and
//! the protocol of every request.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    http1: AtomicU64,
    http2: AtomicU64,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

/// Starts a server on a free loopback port: TLS with a certificate for 127.0.0.1 from a fresh CA (HTTP/1.1 or
/// h2 by ALPN), or plain h2 only (h2c, prior knowledge).
fn server(tls: bool) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    let acceptor = tls.then(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counted = Arc::clone(&seen);
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::Relaxed);
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let counter = if req.version() == hyper::Version::HTTP_2 { &seen.http2 } else { &seen.http1 };
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else { return };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = TokioIo::new(tls);
                        let _ = if h2 {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        } else {
                            hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                        };
                    }
                    None => {
                        let io = TokioIo::new(stream);
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    }
                }
            });
        }
    });
    Server { addr, seen, ca_pem: ca.pem(), _runtime: runtime }
}

mod common;

/// Runs locci-loadgen: exit code, stdout, stderr and the JSON report.
fn loadgen(args: &[&str]) -> (Option<i32>, String, String, serde_json::Value) {
    let run = common::run(args);
    (run.status.code(), run.stdout, run.stderr, run.report)
}

fn ca_file(server: &Server) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &server.ca_pem).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn https_is_verified_against_the_given_ca_and_every_answer_counted() {
    let s = server(true);
    let (_dir, ca) = ca_file(&s);
    let url = format!("https://{}/", s.addr);
    let (code, out, err, r) = loadgen(&[&url, "--cacert", &ca, "--concurrency", "2", "--duration", "500ms"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests > 20, "{r}");
    assert_eq!(r["status"]["200"].as_u64(), Some(requests), "{r}");
    assert_eq!(s.seen.http1.load(Ordering::Relaxed), requests, "every request went over TLS as HTTP/1.1");
    assert!(s.seen.connections.load(Ordering::Relaxed) <= 4, "connections are kept alive and reused");
}

#[test]
fn https_without_the_ca_fails_once_per_connection_and_exits_1_without_a_retry_storm() {
    let s = server(true);
    let url = format!("https://{}/", s.addr);
    let (code, out, err, r) = loadgen(&[&url, "--concurrency", "3", "--duration", "2s"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(r["errors"]["tls"].as_u64(), Some(3), "one TLS failure per connection: {r}");
    assert_eq!(err.matches("TLS handshake with").count(), 3, "{err}");
    assert_eq!(s.seen.connections.load(Ordering::Relaxed), 3, "no connection retried its handshake");
    assert_eq!(s.seen.http1.load(Ordering::Relaxed) + s.seen.http2.load(Ordering::Relaxed), 0);
}

#[test]
fn insecure_connects_without_verifying_and_says_so() {
    let s = server(true);
    let url = format!("https://{}/", s.addr);
    let (code, out, err, r) = loadgen(&[&url, "--insecure", "--concurrency", "1", "--duration", "300ms"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("--insecure: the server's certificate is NOT verified"), "{err}");
    assert!(r["status"]["200"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn http2_by_alpn_and_h2c_send_every_request_as_http2() {
    let tls = server(true);
    let (_dir, ca) = ca_file(&tls);
    let url = format!("https://{}/", tls.addr);
    let (code, out, err, r) = loadgen(&[&url, "--cacert", &ca, "--http2", "--concurrency", "2", "--duration", "500ms"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests > 20, "{r}");
    assert_eq!(tls.seen.http2.load(Ordering::Relaxed), requests, "h2 by ALPN");
    assert_eq!(tls.seen.http1.load(Ordering::Relaxed), 0);

    let plain = server(false);
    let url = format!("http://{}/", plain.addr);
    let (code, out, err, r) = loadgen(&[&url, "--http2", "--rate", "200", "--connections", "2", "--duration", "500ms"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let requests = r["requests"].as_u64().unwrap();
    assert_eq!(r["status"]["200"].as_u64(), Some(requests), "{r}");
    assert_eq!(plain.seen.http2.load(Ordering::Relaxed), requests, "h2c with prior knowledge");
}

#[test]
fn tls_options_on_a_plain_url_are_refused() {
    let (code, _, err, _) = loadgen(&["http://127.0.0.1:1/", "--insecure", "--duration", "100ms"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("for https:// URLs"), "{err}");
}
