//! One keep-alive connection on hyper — HTTP/1.1, or HTTP/2 (h2 by ALPN over TLS, h2c with prior knowledge
//! on plain TCP), over TCP or TLS (rustls) — reopened when it breaks. A TLS handshake that fails is reported
//! once and that connection gives up, so a bad certificate never turns into a reconnect storm.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Options;

/// The error kind of a failed TLS handshake: the connection that met it stops (see the module docs).
pub const TLS_FAILED: &str = "tls";

/// Where requests go, and the parts of every request that never change, built once.
pub struct Target {
    addr: SocketAddr,
    /// One per request class (a scenario's), or the one request of the command line.
    templates: Vec<Template>,
    /// The name the certificate must carry, for https.
    server_name: Option<ServerName<'static>>,
}

/// One class of request, built once.
struct Template {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
    /// The key header and its values `key-0` … `key-{keys-1}`, when the class has one.
    keys: Option<(http::HeaderName, Vec<http::HeaderValue>)>,
}

impl Target {
    /// Resolves the URL once, before the run.
    pub async fn resolve(opts: &Options) -> anyhow::Result<Arc<Target>> {
        let https = match opts.url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("only http:// and https:// URLs are supported (got {})", opts.url),
        };
        if https && opts.tls.is_none() {
            anyhow::bail!("an https:// URL needs a TLS configuration");
        }
        let authority = opts.url.authority().ok_or_else(|| anyhow::anyhow!("the URL has no host"))?.to_string();
        let default_port = if https { 443 } else { 80 };
        let with_port =
            if opts.url.port().is_some() { authority.clone() } else { format!("{authority}:{default_port}") };
        let server_name = match (https, opts.url.host()) {
            (true, Some(host)) => Some(
                ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                    .map_err(|e| anyhow::anyhow!("{host} is not a TLS server name: {e}"))?,
            ),
            _ => None,
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
        let scheme = if https { "https" } else { "http" };
        // h2 carries the authority in the request URI (its :authority), HTTP/1.1 in a Host header.
        let uri_for = |path_and_query: &str| -> anyhow::Result<http::Uri> {
            Ok(if opts.http2 {
                format!("{scheme}://{authority}{path_and_query}").parse()?
            } else {
                path_and_query.parse()?
            })
        };
        let mut base = http::HeaderMap::new();
        if !opts.http2 {
            base.insert(http::header::HOST, authority.parse()?);
        }
        let with = |mut headers: http::HeaderMap, extra: &[(http::HeaderName, http::HeaderValue)]| {
            for (name, value) in extra {
                // A Host given explicitly replaces the URL's; other names may repeat.
                if name == http::header::HOST {
                    headers.insert(name, value.clone());
                } else {
                    headers.append(name, value.clone());
                }
            }
            headers
        };
        let templates = match &opts.scenario {
            None => vec![Template {
                method: opts.method.clone(),
                uri: uri_for(opts.url.path_and_query().map_or("/", |p| p.as_str()))?,
                headers: with(base.clone(), &opts.headers),
                body: opts.body.clone(),
                keys: None,
            }],
            Some(s) => s
                .load
                .requests
                .iter()
                .map(|r| {
                    let mut extra = opts.headers.clone();
                    for (name, value) in &r.headers {
                        extra.push((name.parse()?, value.parse()?));
                    }
                    let keys = match &r.key_header {
                        Some(h) => Some((
                            h.parse::<http::HeaderName>()?,
                            (0..r.keys.max(1)).map(|n| format!("key-{n}").parse()).collect::<Result<_, _>>()?,
                        )),
                        None => None,
                    };
                    Ok(Template {
                        method: r.method.parse()?,
                        uri: uri_for(&r.path)?,
                        headers: with(base.clone(), &extra),
                        body: r.body.clone().map(Bytes::from).unwrap_or_default(),
                        keys,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Arc::new(Target { addr, templates, server_name }))
    }
}

/// A plain or TLS stream, dispatched statically (no boxed stream on the request path).
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The request half of a connection.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// The connection half: the future that drives the connection's I/O.
enum Driver {
    // Boxed: an HTTP/1 connection's buffers make it several times the size of the h2 handle.
    H1(Box<http1::Connection<TokioIo<Io>, Full<Bytes>>>),
    H2(http2::Connection<TokioIo<Io>, Full<Bytes>, TokioExecutor>),
}

impl Future for Driver {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Driver::H1(d) => Pin::new(d.as_mut()).poll(cx),
            Driver::H2(d) => Pin::new(d).poll(cx),
        }
    }
}

/// An open connection: the request half and the connection driver, both polled by the worker's own task
/// (no second task per connection, so no cross-task wake-up per request).
pub struct Connection {
    sender: Sender,
    driver: Driver,
}

async fn connect(target: &Target, opts: &Options) -> Result<Connection, &'static str> {
    let stream = TcpStream::connect(target.addr).await.map_err(|_| "connect")?;
    let _ = stream.set_nodelay(true);
    let io = match (&opts.tls, &target.server_name) {
        (Some(config), Some(name)) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            match connector.connect(name.clone(), stream).await {
                Ok(tls) => {
                    if opts.http2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                        eprintln!("locci-loadgen: {} did not agree to h2 (ALPN); this connection stops", target.addr);
                        return Err(TLS_FAILED);
                    }
                    Io::Tls(Box::new(tls))
                }
                Err(e) => {
                    // Once per connection attempt, and the connection stops: never a retry loop.
                    eprintln!("locci-loadgen: TLS handshake with {} failed: {e}; this connection stops", target.addr);
                    return Err(TLS_FAILED);
                }
            }
        }
        _ => Io::Plain(stream),
    };
    let io = TokioIo::new(io);
    if opts.http2 {
        let (sender, driver) = http2::handshake(TokioExecutor::new(), io).await.map_err(|_| "connect")?;
        Ok(Connection { sender: Sender::H2(sender), driver: Driver::H2(driver) })
    } else {
        let (sender, driver) = http1::handshake(io).await.map_err(|_| "connect")?;
        Ok(Connection { sender: Sender::H1(sender), driver: Driver::H1(Box::new(driver)) })
    }
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
    (class, key): (usize, Option<u32>),
) -> Result<u16, &'static str> {
    if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *conn = Some(connect(target, opts).await?);
    }
    // The timeout covers the exchange, as it always has; the connect is outside it.
    let deadline = Instant::now() + opts.timeout;
    let Some(Connection { sender, driver }) = conn.as_mut() else { return Err("connect") };
    let outcome = {
        let exchange = async {
            let t = target.templates.get(class).ok_or("io")?;
            let mut req = http::Request::new(Full::new(t.body.clone()));
            *req.method_mut() = t.method.clone();
            *req.uri_mut() = t.uri.clone();
            *req.headers_mut() = t.headers.clone();
            if let (Some((name, values)), Some(k)) = (&t.keys, key)
                && let Some(value) = values.get(k as usize)
            {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            sender.ready().await.map_err(|_| "io")?;
            let resp = sender.send(req).await.map_err(|_| "io")?;
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
