//! One keep-alive HTTP/1.1 connection on hyper, reopened when it breaks.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Options;

/// Where requests go.
pub struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
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
        let path = opts.url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Arc::new(Target { addr, authority, path }))
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

/// Sends one request on `conn` (opening it first if needed); the status, or the kind of error.
pub async fn send(target: &Target, conn: &mut Option<Connection>, opts: &Options) -> Result<u16, &'static str> {
    if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *conn = Some(connect(target).await?);
    }
    let Some(Connection { sender, driver }) = conn.as_mut() else { return Err("connect") };
    let mut req = http::Request::builder()
        .method(opts.method.clone())
        .uri(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str());
    for (name, value) in &opts.headers {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(opts.body.clone())).map_err(|_| "request")?;
    let exchange = async {
        sender.ready().await.map_err(|_| "io")?;
        let resp = sender.send_request(req).await.map_err(|_| "io")?;
        let status = resp.status().as_u16();
        // The server will close after this answer: the connection must not be reused.
        let closing =
            resp.headers().get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        resp.into_body().collect().await.map_err(|_| "io")?;
        Ok((status, closing))
    };
    let exchange = async {
        tokio::pin!(exchange);
        tokio::select! {
            biased;
            result = &mut exchange => result,
            // The driver finishes when the connection does: cleanly after a `Connection: close` answer (which
            // the exchange then reads from its buffer), or with an error, which breaks the exchange.
            done = driver => match done {
                Ok(()) => exchange.await,
                Err(_) => Err("io"),
            },
        }
    };
    match tokio::time::timeout(opts.timeout, exchange).await {
        Ok(Ok((status, closing))) => {
            if closing {
                *conn = None;
            }
            Ok(status)
        }
        Ok(Err(kind)) => {
            *conn = None;
            Err(kind)
        }
        Err(_) => {
            *conn = None;
            Err("timeout")
        }
    }
}
