//! One keep-alive HTTP/1.1 connection on hyper, reopened when it breaks.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Options;

/// Where requests go, and the parts of every request that never change, built once.
pub struct Target {
    addr: SocketAddr,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Target {
    /// Resolves the URL once, before the run.
    pub async fn resolve(opts: &Options) -> anyhow::Result<Arc<Target>> {
        if opts.url.scheme_str() != Some("http") {
            anyhow::bail!("only http:// URLs are supported (got {})", opts.url);
        }
        let authority = opts.url.authority().ok_or_else(|| anyhow::anyhow!("the URL has no host"))?.to_string();
        let with_port = if opts.url.port().is_some() { authority.clone() } else { format!("{authority}:80") };
        let addr = tokio::net::lookup_host(&with_port)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
        let uri: http::Uri = opts.url.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, authority.parse()?);
        for (name, value) in &opts.headers {
            // A Host given with -H replaces the URL's; other names may repeat.
            if name == http::header::HOST {
                headers.insert(name, value.clone());
            } else {
                headers.append(name, value.clone());
            }
        }
        Ok(Arc::new(Target { addr, uri, headers }))
    }
}

/// An open connection: the request half and the connection driver, both polled by the worker's own task
/// (no second task per connection, so no cross-task wake-up per request).
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

async fn connect(target: &Target) -> Result<Connection, &'static str> {
    let stream = TcpStream::connect(target.addr).await.map_err(|_| "connect")?;
    let _ = stream.set_nodelay(true);
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| "connect")?;
    Ok(Connection { sender, driver })
}

/// A worker's request timeout: one timer that stays armed and is moved on only when it fires before the
/// current request's deadline, instead of a timer armed and cancelled for every request.
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    /// A timer that first fires after `timeout`.
    pub fn new(timeout: std::time::Duration) -> Timer {
        Timer { sleep: Box::pin(tokio::time::sleep(timeout)) }
    }

    /// Resolves once `deadline` has passed.
    async fn expired(&mut self, deadline: Instant) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// Sends one request on `conn` (opening it first if needed); the status, or the kind of error.
pub async fn send(
    target: &Target,
    conn: &mut Option<Connection>,
    timer: &mut Timer,
    opts: &Options,
) -> Result<u16, &'static str> {
    if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *conn = Some(connect(target).await?);
    }
    // The timeout covers the exchange, as it always has; the connect is outside it.
    let deadline = Instant::now() + opts.timeout;
    let Some(Connection { sender, driver }) = conn.as_mut() else { return Err("connect") };
    let outcome = {
        let exchange = async {
            let mut req = http::Request::new(Full::new(opts.body.clone()));
            *req.method_mut() = opts.method.clone();
            *req.uri_mut() = target.uri.clone();
            *req.headers_mut() = target.headers.clone();
            sender.ready().await.map_err(|_| "io")?;
            let resp = sender.send_request(req).await.map_err(|_| "io")?;
            let status = resp.status().as_u16();
            // The server will close after this answer: the connection must not be reused.
            let closing = resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            // Read the body through and drop it frame by frame: nothing is kept, so nothing is gathered.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|_| "io")?;
            }
            Ok((status, closing))
        };
        // One select over the exchange, the connection driver and the timeout, polled in place: the futures are
        // not moved from one wrapper into the next on every request.
        tokio::pin!(exchange);
        let mut driver_done = false;
        loop {
            tokio::select! {
                biased;
                result = &mut exchange => break result,
                // The driver finishes when the connection does: cleanly after a `Connection: close` answer (which
                // the exchange then reads from its buffer), or with an error, which breaks the exchange.
                done = &mut *driver, if !driver_done => match done {
                    Ok(()) => driver_done = true,
                    Err(_) => break Err("io"),
                },
                () = timer.expired(deadline) => break Err("timeout"),
            }
        }
    };
    match outcome {
        Ok((status, closing)) => {
            if closing {
                *conn = None;
            }
            Ok(status)
        }
        Err(kind) => {
            *conn = None;
            Err(kind)
        }
    }
}
