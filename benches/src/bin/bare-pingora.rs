//! The floor under locci: a Pingora HTTP proxy that does nothing but round-robin over fixed servers, with
//! the same server settings locci uses. `just bench-peers` runs it beside locci, so the share of the gap to
//! nginx that belongs to Pingora itself, and the share that is locci's, can be read off one table.
//!
//! Usage: `bare-pingora LISTEN UPSTREAM...` (one worker thread; `BARE_THREADS=N` for N).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session, http_proxy_service};

// The same allocator as locci-proxy, so the two differ only in what locci does per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Round robin over fixed addresses, nothing else.
struct Bare {
    servers: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora_error::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len();
        let server = self
            .servers
            .get(i)
            .copied()
            .ok_or_else(|| pingora_error::Error::new(pingora_error::ErrorType::InternalError))?;
        Ok(Box::new(HttpPeer::new(server, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Result<Vec<SocketAddr>, _> = args.iter().map(|a| a.parse::<SocketAddr>()).collect();
    let Some((listen, servers)) = parsed
        .ok()
        .and_then(|all| all.split_first().map(|(l, s)| (*l, s.to_vec())))
        .filter(|(_, servers)| !servers.is_empty())
    else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM... (socket addresses)");
        return ExitCode::FAILURE;
    };
    // A bench tool: SIGTERM stops it at once instead of after Pingora's default grace period.
    let threads = std::env::var("BARE_THREADS").ok().and_then(|n| n.parse().ok()).filter(|n| *n >= 1).unwrap_or(1);
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 64,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = http_proxy_service(&server.configuration, Bare { servers, next: AtomicUsize::new(0) });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
