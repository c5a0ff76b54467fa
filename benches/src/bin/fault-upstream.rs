//! An upstream server for `just bench-failover` that turns bad on a signal: SIGUSR1 makes every answer
//! (health checks included) wait 200 ms, SIGUSR2 makes every answer a 500. Killing it is the third fault.
//! It records when each request other than a health check arrived, so the script can tell when a proxy
//! stopped sending it traffic; SIGTERM writes that record and exits.
//!
//! Usage: `fault-upstream LISTEN ARRIVALS_FILE` (health checks are `GET /health`).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{SignalKind, signal};

const HEALTHY: u8 = 0;
const SLOW: u8 = 1;
const FAILING: u8 = 2;

/// What the server does now and when each proxied request arrived (milliseconds since the epoch).
struct State {
    mode: AtomicU8,
    arrivals: Mutex<Vec<u64>>,
}

// Wall-clock time on purpose: the script compares arrivals with the moment it injected the fault (`date`).
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/health"
        && let Ok(mut arrivals) = state.arrivals.lock()
    {
        arrivals.push(now_ms());
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    match state.mode.load(Ordering::Relaxed) {
        SLOW => tokio::time::sleep(Duration::from_millis(200)).await,
        FAILING => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        _ => {}
    }
    Ok(response)
}

async fn serve(listen: SocketAddr, out: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let state = Arc::new(State { mode: AtomicU8::new(HEALTHY), arrivals: Mutex::new(Vec::with_capacity(1 << 16)) });
    let (mut slow, mut failing, mut term) =
        (signal(SignalKind::user_defined1())?, signal(SignalKind::user_defined2())?, signal(SignalKind::terminate())?);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = slow.recv() => state.mode.store(SLOW, Ordering::Relaxed),
            _ = failing.recv() => state.mode.store(FAILING, Ordering::Relaxed),
            _ = term.recv() => break,
        }
    }
    let arrivals = state.arrivals.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for at in arrivals {
        writeln!(file, "{at}")?;
    }
    file.flush()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(out)) = (args.first().and_then(|a| a.parse().ok()), args.get(1)) else {
        eprintln!("usage: fault-upstream LISTEN ARRIVALS_FILE");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fault-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, out.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
