//! The network seams: how the proxy reaches upstream servers, and how health checks probe them.
//! Production uses the kernel; the simulator substitutes simulated sockets.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How upstream connections are made.
pub trait UpstreamTransport: Send + Sync + 'static {
    /// `None`: Pingora's own TCP/TLS connector. `Some`: a custom L4 connector (the simulator's).
    fn custom_l4(&self) -> Option<Arc<dyn L4Connect + Send + Sync>>;

    /// The idle timeout for pooled upstream connections, given the configured one.
    fn idle_timeout(&self, configured: Duration) -> Option<Duration> {
        Some(configured)
    }
}

/// Pingora's native connector.
#[derive(Debug, Clone, Copy)]
pub struct NativeTransport;

impl UpstreamTransport for NativeTransport {
    fn custom_l4(&self) -> Option<Arc<dyn L4Connect + Send + Sync>> {
        None
    }
}

/// Largest health-check response head read, so a misbehaving server cannot make the prober buffer much.
pub const MAX_PROBE_RESPONSE: usize = 8 * 1024;

/// How health checks reach a server.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Succeeds when a TCP connection opens within `timeout`.
    async fn tcp(&self, addr: &str, timeout: Duration) -> io::Result<()>;
    /// Sends `GET path` and returns the status code, within `timeout`.
    async fn http(&self, addr: &str, host: &str, path: &str, timeout: Duration) -> io::Result<u16>;
}

/// The production prober over kernel TCP (hostnames resolved by tokio).
#[derive(Debug, Clone, Copy)]
pub struct TcpProber;

#[async_trait]
impl Prober for TcpProber {
    async fn tcp(&self, addr: &str, timeout: Duration) -> io::Result<()> {
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| timed_out())??;
        Ok(())
    }

    async fn http(&self, addr: &str, host: &str, path: &str, timeout: Duration) -> io::Result<u16> {
        tokio::time::timeout(timeout, async {
            let mut stream = TcpStream::connect(addr).await?;
            http_probe(&mut stream, host, path).await
        })
        .await
        .map_err(|_| timed_out())?
    }
}

/// Writes a health-check GET on `stream` and reads the status code; shared with the simulator's prober.
pub async fn http_probe<S>(stream: &mut S, host: &str, path: &str) -> io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: locci-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; MAX_PROBE_RESPONSE];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') || len == buf.len() {
            break;
        }
    }
    parse_status(&buf[..len]).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "health check timed out")
}

/// Resolves `host:port` without blocking a worker (tokio runs the lookup on its blocking pool): only for a
/// hostname whose background answer is not in yet (the first moments after start).
pub async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines_and_rejects_junk() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
