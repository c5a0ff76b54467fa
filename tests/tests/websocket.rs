//! HTTP/1.1 upgrades through the real binary (SPEC §10): a WebSocket echo upstream the test runs, a real
//! WebSocket client; messages cross both ways, the upgraded connection is counted while it is open, a route
//! with `websocket: false` refuses the upgrade, an idle tunnel is closed after the keep-alive timeout, and a
//! graceful shutdown ends open tunnels within its timeout.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locci_e2e::*;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket upstream on a free loopback port, served by `rt`: it greets each client, then echoes every
/// text message.
fn echo_upstream(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                if ws.send(Message::text("welcome")).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    let Ok(text) = message.to_text() else { return };
                    if message.is_text() && ws.send(Message::text(format!("echo {text}"))).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The tests' runtime: the upstream and the client run on it; blocking calls (the proxy's process, the
/// metrics scrape) stay outside `block_on`.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(proxy_addr: SocketAddr, path: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("ws://{proxy_addr}{path}")).await.map(|(ws, response)| {
        assert_eq!(response.status(), 101);
        ws
    })
}

fn config(upstream: SocketAddr, client: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\", graceful_shutdown_timeout_secs: 2, client: {client} }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n\
         upstreams: {{ ws: {{ servers: [\"{upstream}\"] }} }}\n\
         api_gateway:\n  routes:\n\
         \x20   chat: {{ path_pattern: \"^/chat\", upstream: ws }}\n\
         \x20   plain: {{ path_pattern: \"^/plain\", upstream: ws, websocket: false }}\n"
    )
}

fn upgraded(proxy: &Proxy) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), "locci_upgraded_connections", &[])
}

async fn next_text(ws: &mut Ws) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no message within 10 s");
    message.expect("stream ended").expect("websocket error").to_text().unwrap().to_string()
}

/// Whatever ends the tunnel (a close frame, an error, the end of the stream) within 10 s; not a text message.
async fn ends(ws: &mut Ws) -> bool {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Err(_) => false,
        Ok(Some(Ok(Message::Text(_)))) => false,
        Ok(_) => true,
    }
}

#[test]
fn websocket_messages_cross_both_ways_and_the_tunnel_is_counted() {
    let rt = runtime();
    let proxy = Proxy::start(&config(echo_upstream(&rt), "{}"));
    let mut ws = rt.block_on(async {
        let mut ws = open(proxy.addr, "/chat").await.unwrap();
        assert_eq!(next_text(&mut ws).await, "welcome", "upstream to client");
        for i in 0..3 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
            assert_eq!(next_text(&mut ws).await, format!("echo m{i}"), "client to upstream and back");
        }
        ws
    });
    assert_eq!(upgraded(&proxy), 1.0);
    rt.block_on(ws.close(None)).unwrap();
    drop(ws);
    assert!(wait_until(WAIT, || upgraded(&proxy) == 0.0), "the gauge stayed up");
}

#[test]
fn a_route_with_websocket_false_refuses_the_upgrade_with_400() {
    let rt = runtime();
    let proxy = Proxy::start(&config(echo_upstream(&rt), "{}"));
    let Err(err) = rt.block_on(open(proxy.addr, "/plain")) else { panic!("the upgrade was proxied") };
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else { panic!("not an HTTP refusal: {err}") };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("upgrade not allowed on this route"), "{body}");
}

#[test]
fn an_idle_tunnel_is_closed_after_the_keepalive_timeout() {
    let rt = runtime();
    let proxy = Proxy::start(&config(echo_upstream(&rt), "{ keepalive_timeout_secs: 1 }"));
    rt.block_on(async {
        let mut ws = open(proxy.addr, "/chat").await.unwrap();
        assert_eq!(next_text(&mut ws).await, "welcome");
        // Nobody speaks: the proxy ends the tunnel well before the 10 s bound.
        assert!(ends(&mut ws).await, "the idle tunnel stayed open");
    });
    assert!(wait_until(WAIT, || upgraded(&proxy) == 0.0));
}

#[test]
fn a_graceful_shutdown_ends_open_tunnels_within_its_timeout() {
    let rt = runtime();
    let mut proxy = Proxy::start(&config(echo_upstream(&rt), "{}"));
    let mut ws = rt.block_on(async {
        let mut ws = open(proxy.addr, "/chat").await.unwrap();
        assert_eq!(next_text(&mut ws).await, "welcome");
        ws
    });
    proxy.signal("TERM");
    // graceful_shutdown_timeout_secs is 2: the process is gone, and the tunnel with it, well within WAIT.
    assert_eq!(proxy.wait_exit(WAIT), Some(0), "{}", proxy.logs());
    assert!(rt.block_on(ends(&mut ws)), "the tunnel outlived the proxy");
}
