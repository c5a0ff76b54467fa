//! The network seams of the proxy, over turmoil's simulated TCP: the downstream socket Pingora reads
//! (`SimSock` in a `VirtualSocketStream`), the upstream connector (`custom_l4`) and the health prober.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use locci_proxy::server::transport::{Prober, UpstreamTransport, http_probe};
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turmoil::net::TcpStream;

/// A turmoil TCP stream as a Pingora virtual socket.
#[derive(Debug)]
pub struct SimSock(pub TcpStream);

impl SimSock {
    /// Wraps a stream into the Pingora stream type.
    pub fn into_stream(self) -> Stream {
        Stream::from(VirtualSocketStream::new(Box::new(self)))
    }
}

impl VirtualSocket for SimSock {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for SimSock {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimSock {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects upstream through turmoil. Pingora applies `total_connection_timeout` around it.
#[derive(Debug)]
pub struct SimConnect;

#[async_trait]
impl L4Connect for SimConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Err(Error::explain(ErrorType::ConnectError, "the simulator only connects to IP addresses"));
        };
        match TcpStream::connect(*inet).await {
            Ok(stream) => Ok(SimSock(stream).into_stream()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(e).or_err(ErrorType::ConnectRefused, "simulated connect refused")
            }
            Err(e) => Err(e).or_err(ErrorType::ConnectError, "simulated connect failed"),
        }
    }
}

/// The simulator's transport: every upstream connection goes through [`SimConnect`].
#[derive(Debug, Clone, Copy)]
pub struct SimTransport;

impl UpstreamTransport for SimTransport {
    fn custom_l4(&self) -> Option<Arc<dyn L4Connect + Send + Sync>> {
        Some(Arc::new(SimConnect))
    }

    fn idle_timeout(&self, _configured: Duration) -> Option<Duration> {
        // Pingora's pool idle timer runs on a real thread, and virtual streams are never reused anyway
        // (pingora#883): no idle timeout in the simulator.
        None
    }
}

/// Health checks over turmoil.
#[derive(Debug, Clone, Copy)]
pub struct SimProber;

#[async_trait]
impl Prober for SimProber {
    async fn tcp(&self, addr: &str, timeout: Duration) -> io::Result<()> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| io::Error::other("not an IP address"))?;
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| io::ErrorKind::TimedOut)??;
        Ok(())
    }

    async fn http(&self, addr: &str, host: &str, path: &str, timeout: Duration) -> io::Result<u16> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| io::Error::other("not an IP address"))?;
        tokio::time::timeout(timeout, async {
            let mut stream = TcpStream::connect(addr).await?;
            http_probe(&mut stream, host, path).await
        })
        .await
        .map_err(|_| io::ErrorKind::TimedOut)?
    }
}

/// The simulated DNS: names the timeline's `dns` events set, each to addresses or to failing lookups.
pub type DnsTable = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Option<Vec<std::net::IpAddr>>>>>;

/// The proxy's resolver in the simulator: answers from the [`DnsTable`] at once (the driver changes it at
/// the timeline's times); a name it lacks is NXDOMAIN, a failing one SERVFAIL. SRV is not simulated.
#[derive(Debug, Clone, Default)]
pub struct SimResolver(pub DnsTable);

#[async_trait]
impl locci_proxy::server::discovery::Resolver for SimResolver {
    async fn ips(&self, _server: Option<std::net::SocketAddr>, host: &str) -> io::Result<Vec<std::net::IpAddr>> {
        let table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(host) {
            Some(Some(ips)) => Ok(ips.clone()),
            Some(None) => Err(io::Error::other(format!("{host}: SERVFAIL (simulated)"))),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{host}: NXDOMAIN (simulated)"))),
        }
    }

    async fn srv(&self, _server: Option<std::net::SocketAddr>, name: &str) -> io::Result<Vec<(String, u16)>> {
        Err(io::Error::other(format!("{name}: SRV is not simulated")))
    }
}

/// A shared rate-limit store that never answers: the simulator's model of a dead Redis, so scenarios with
/// `backend: redis` exercise the `on_error` fallback.
#[derive(Debug, Clone, Copy)]
pub struct DeadStores;

#[async_trait]
impl locci_proxy::server::rate_store::RateStore for DeadStores {
    async fn take(
        &self,
        _key: &str,
        _settings: &locci_core::middleware::RateSettings,
    ) -> locci_core::middleware::StoreReply {
        locci_core::middleware::StoreReply::Unavailable
    }
}

impl locci_proxy::server::rate_store::RateStores for DeadStores {
    fn store(&self, _url: &str) -> Arc<dyn locci_proxy::server::rate_store::RateStore> {
        Arc::new(DeadStores)
    }
}

/// The proxy's clock in the simulator: tokio's simulated time, with a wall clock that timeline
/// `clock_jump` events step (as NTP steps a real one) while monotonic time runs on untouched.
#[derive(Debug)]
pub struct SimClock {
    inner: locci_core::clock::TokioClock,
    /// Milliseconds the wall clock has been stepped by, in total.
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl SimClock {
    /// A clock whose wall time starts at `epoch`, stepped by what `offset_ms` holds.
    pub fn new(epoch: Duration, offset_ms: Arc<std::sync::atomic::AtomicI64>) -> SimClock {
        SimClock { inner: locci_core::clock::TokioClock::with_epoch(epoch), offset_ms }
    }
}

impl locci_core::clock::Clock for SimClock {
    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn unix_now(&self) -> Duration {
        let wall = self.inner.unix_now();
        let step = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        let magnitude = Duration::from_millis(step.unsigned_abs());
        if step >= 0 { wall + magnitude } else { wall.saturating_sub(magnitude) }
    }
}

/// Shared rate-limit stores on the simulated Redis host: each `take` is one command over a new turmoil
/// connection, bounded by the limit's timeout as production's is, so a partitioned, killed or slow Redis
/// gives the same `Unavailable` (and the same `on_error` fallback) as a real one. Production keeps one
/// multiplexed connection instead; the verdicts do not depend on it.
#[derive(Debug, Clone, Copy)]
pub struct SimRedisStores;

impl locci_proxy::server::rate_store::RateStores for SimRedisStores {
    fn store(&self, url: &str) -> Arc<dyn locci_proxy::server::rate_store::RateStore> {
        Arc::new(SimRedisStore { addr: redis_addr(url) })
    }
}

/// `redis://[user:password@]IP:PORT[/db]` to its address; `None` for anything else (then it never answers).
fn redis_addr(url: &str) -> Option<std::net::SocketAddr> {
    let rest = url.strip_prefix("redis://")?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split('/').next()?.parse().ok()
}

struct SimRedisStore {
    addr: Option<std::net::SocketAddr>,
}

#[async_trait]
impl locci_proxy::server::rate_store::RateStore for SimRedisStore {
    async fn take(
        &self,
        key: &str,
        settings: &locci_core::middleware::RateSettings,
    ) -> locci_core::middleware::StoreReply {
        use locci_core::middleware::{StoreAnswer, StoreReply};
        let (Some(remote), Some(addr)) = (&settings.remote, self.addr) else { return StoreReply::Unavailable };
        let (interval_us, capacity_us) = locci_proxy::server::rate_store::script_args(settings);
        let command = format!("{interval_us} {capacity_us} {key}\n");
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            tokio::io::AsyncWriteExt::write_all(&mut stream, command.as_bytes()).await?;
            let mut reply = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply).await?;
            io::Result::Ok(reply)
        };
        let Ok(Ok(reply)) = tokio::time::timeout(remote.timeout, exchange).await else {
            return StoreReply::Unavailable;
        };
        match reply.trim().split_once(' ').map(|(a, b)| (a.parse::<u8>(), b.parse::<u64>())) {
            Some((Ok(admitted), Ok(ahead_us))) => {
                StoreReply::Answer(StoreAnswer { allowed: admitted == 1, ahead_ns: ahead_us * 1000 })
            }
            _ => StoreReply::Unavailable,
        }
    }
}
