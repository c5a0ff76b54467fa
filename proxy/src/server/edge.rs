//! The edge in front of Pingora's HTTP/1 server: reads each request head itself, so that a head that is
//! slow, too large or ambiguously framed is answered by locci (408, 431, 400, with the JSON body of every
//! other answer) and never reaches Pingora or an upstream.
//!
//! Pingora reads the head before any `ProxyHttp` hook runs, with a per-read timeout (a client sending one
//! header line a second never trips it), a fixed 1 MB ceiling, an empty-bodied 400, and it drops
//! `Content-Length` when `Transfer-Encoding` is also present, then forwards the body chunked. So this layer
//! reads the head under `server.client`'s deadline and size, asks the core for the framing verdict
//! ([`locci_core::edge::check_framing`]), and hands the bytes it read to Pingora as the session's
//! pipelined prefix: Pingora parses them without another read, and the rest of its path is unchanged.
//! It also runs the keep-alive loop (the idle wait between requests is `keepalive_timeout_secs`) and counts
//! connections against `max_connections`. HTTP/2 (by ALPN) frames its own messages and goes straight to
//! Pingora.
//!
//! Cost on the request path: one scan of the head's bytes for its end and one `httparse` pass over it.

use std::mem::MaybeUninit;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use locci_core::edge::{ClientError, ClientLimits, MAX_HEADERS, check_framing, check_method};
use locci_core::forwarding;
use locci_core::respond::Failure;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{ALPN, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::gateway::Gateway;
use crate::app::Shared;

/// The proxy application as Pingora's listeners and the simulator see it.
pub struct Edge {
    proxy: Arc<HttpProxy<Gateway>>,
    shared: Arc<Shared>,
}

impl Edge {
    /// The edge in front of `proxy`.
    pub fn new(proxy: HttpProxy<Gateway>, shared: Arc<Shared>) -> Edge {
        Edge { proxy: Arc::new(proxy), shared }
    }

    /// Answers a refused head itself and counts it; the connection is closed after.
    async fn refuse(&self, stream: &mut Stream, error: ClientError) {
        self.shared.client_rejected(error);
        let Some((status, text)) = error.status() else { return };
        let request_id = forwarding::request_id(None, &*self.shared.env.entropy);
        let reply = Failure::Client(error).reply();
        let body = reply.body(&request_id);
        let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-request-id: {request_id}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tracing::debug!(status, error = text, "request refused at the edge");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        linger(stream).await;
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_connection) = self.shared.begin_connection() else {
            self.shared.client_rejected(ClientError::MaxConnections);
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        // After the first request: the settings Pingora carries from one request to the next on this connection.
        let mut reused: Option<Option<HttpPersistentSettings>> = None;
        // One receiver for the connection's life, not a clone per request.
        let mut shutdown_seen = shutdown.clone();
        loop {
            let limits = *self.shared.runtime().client_limits();
            let prefix = tokio::select! {
                biased;
                head = read_head(&mut stream, &limits, reused.is_some()) => head,
                // A connection idle or mid-head when the proxy shuts down is simply closed.
                _ = shutdown_signalled(&mut shutdown_seen) => return None,
            };
            let prefix = match prefix {
                Ok(Some(prefix)) => prefix,
                Ok(None) => return None,
                Err(error) => {
                    self.refuse(&mut stream, error).await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = reused.take().flatten() {
                settings.apply_to_session(&mut session);
            }
            // Keep-alive is Pingora's to decide from the head it parses (the gateway then applies
            // `keepalive_timeout_secs: 0` and draining); the idle wait between requests is this loop's.
            session.set_pipelined_prefix(prefix);
            let (next, settings) = self.proxy.process_new_http(session, shutdown).await?.consume();
            stream = next;
            reused = Some(settings);
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

async fn shutdown_signalled(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads and drops what the client still sends after a refusal, for a bounded time, before the socket closes:
/// closing with unread bytes makes the kernel reset the connection, and a client still writing its (too
/// large) head would lose the answer with it. nginx's lingering close does the same.
async fn linger(stream: &mut Stream) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: usize = 1 << 20;
    let until = Instant::now() + LINGER;
    let (mut buf, mut read) = (vec![0u8; 16 * 1024], 0);
    while read < MOST {
        match timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => return,
        }
    }
}

/// Reads one request head (and whatever follows it in the same reads). `Ok(None)`: the client closed or
/// stayed idle past the keep-alive timeout before sending a byte, and the connection just closes.
async fn read_head(stream: &mut Stream, limits: &ClientLimits, idle: bool) -> Result<Option<BytesMut>, ClientError> {
    let mut buf = BytesMut::with_capacity(4096);
    if idle {
        // Between requests the wait for a first byte is the keep-alive timeout; the header deadline starts
        // with that byte.
        match timeout(limits.keepalive_timeout, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    }
    let deadline = Instant::now() + limits.header_timeout;
    let mut scanned = 0;
    loop {
        while let Some(end) = head_end(&buf, &mut scanned) {
            if end > limits.max_header_bytes {
                return Err(ClientError::HeaderTooLarge);
            }
            match judge(&buf[..end]) {
                Verdict::Complete => return Ok(Some(buf)),
                Verdict::Partial => continue,
                Verdict::Refused(error) => return Err(error),
            }
        }
        if buf.len() > limits.max_header_bytes {
            return Err(ClientError::HeaderTooLarge);
        }
        buf.reserve(4096.min(limits.max_header_bytes + 1 - buf.len()).max(1));
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) if buf.is_empty() => return Err(ClientError::Silent),
            Err(_) => return Err(ClientError::HeaderTimeout),
            Ok(Ok(0) | Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Finds the next place the head may end (after a blank line: `\n\n` or `\n\r\n`), scanning only bytes not
/// scanned before, so a client that trickles its head byte by byte costs one pass in total.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    // memchr, not a byte loop: the scan was the edge's largest cost per request (`just bench-instructions`).
    while let Some(at) = buf.get(*scanned..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        let i = *scanned + at;
        *scanned = i + 1;
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
            // Not enough bytes yet to know: look at this newline again after the next read.
            (None, _) | (Some(b'\r'), None) => {
                *scanned = i;
                return None;
            }
            (Some(_), _) => {}
        }
    }
    *scanned = buf.len();
    None
}

enum Verdict {
    Complete,
    Partial,
    Refused(ClientError),
}

/// Parses a head that looks complete and asks the core about its framing.
fn judge(head: &[u8]) -> Verdict {
    // Uninitialised slots: initialising all MAX_HEADERS of them (8 KiB) cost more than the parse.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = match req.parse_with_uninit_headers(head, &mut headers) {
        // Pingora percent-encodes bytes in the request target that httparse refuses and parses again; do
        // the same here so those requests still pass, and their framing is still judged.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            return match escape_target(head) {
                Some(escaped) => judge_escaped(&escaped),
                None => Verdict::Refused(ClientError::Malformed("malformed request line")),
            };
        }
        other => other,
    };
    verdict(parsed, &req)
}

fn judge_escaped(head: &[u8]) -> Verdict {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(head, &mut headers);
    match verdict(parsed, &req) {
        Verdict::Refused(ClientError::Malformed(_)) if parsed.is_err() => {
            Verdict::Refused(ClientError::Malformed("malformed request line"))
        }
        other => other,
    }
}

fn verdict(parsed: httparse::Result<usize>, req: &httparse::Request<'_, '_>) -> Verdict {
    match parsed {
        Ok(httparse::Status::Partial) => Verdict::Partial,
        Ok(httparse::Status::Complete(_)) => {
            let headers = req.headers.iter().map(|h| (h.name, h.value));
            let verdict = check_method(req.method.unwrap_or(""))
                .and_then(|()| check_framing(req.version.unwrap_or(1), req.path.unwrap_or(""), headers));
            match verdict {
                Ok(()) => Verdict::Complete,
                Err(error) => Verdict::Refused(error),
            }
        }
        Err(httparse::Error::TooManyHeaders) => Verdict::Refused(ClientError::HeaderTooLarge),
        Err(_) => Verdict::Refused(ClientError::Malformed("malformed request head")),
    }
}

/// The head with the request target's bytes that are not URI characters percent-encoded, or `None` when
/// the first line is not `METHOD SP TARGET SP VERSION`.
fn escape_target(head: &[u8]) -> Option<Vec<u8>> {
    let line_end = head.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = &head[..line_end];
    let first = line.iter().position(|&b| b == b' ')?;
    let last = line.iter().rposition(|&b| b == b' ')?;
    if last <= first + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 32);
    out.extend_from_slice(&line[..=first]);
    for &b in &line[first + 1..last] {
        if b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.extend_from_slice(&line[last..]);
    out.extend_from_slice(&head[line_end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads_and_line_endings() {
        let mut scanned = 0;
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut scanned), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", &mut scanned), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", &mut scanned), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY", &mut 0), Some(24));
    }

    #[test]
    fn heads_are_judged_as_the_core_says() {
        let ok = |head: &str| matches!(judge(head.as_bytes()), Verdict::Complete);
        let refused = |head: &str| match judge(head.as_bytes()) {
            Verdict::Refused(e) => Some(e),
            _ => None,
        };
        assert!(ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ok("GET /a{b}|c HTTP/1.1\r\nHost: a\r\n\r\n"), "illegal target bytes are escaped, as Pingora does");
        assert_eq!(
            refused("POST /a{b} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(ClientError::Malformed("both content-length and transfer-encoding")),
            "escaping does not skip the framing verdict"
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
            Some(ClientError::Malformed("malformed request head"))
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n"),
            Some(ClientError::Malformed("malformed request head"))
        );
        let many: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), Some(ClientError::HeaderTooLarge));
        assert_eq!(refused("GARBAGE\r\n\r\n"), Some(ClientError::Malformed("malformed request line")));
    }
}
