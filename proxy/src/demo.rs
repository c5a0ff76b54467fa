//! Built-in demo backends: small HTTP servers on loopback that the demo and the end-to-end tests put
//! behind the proxy.
//!
//! Each answers every path with JSON naming itself and echoing what it received, and has a few
//! behaviours to provoke: `GET /health` (200, or 503 when told to be unhealthy), `/slow?ms=N` (answers
//! after N ms, at most 60 s), `/status/N` (answers with status N); and, set by the test that owns it, a
//! status for every request ([`Backend::fail_with`]) and a delay before every answer ([`Backend::delay_ms`]).
//! The JSON includes `peer`, the address the request came from, so tests can see whether connections are
//! reused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::oneshot;

/// Longest delay `/slow` accepts.
pub const MAX_SLOW_MS: u64 = 60_000;

/// Most received requests a backend remembers (for tests that compare against the simulator).
pub const MAX_RECEIVED: usize = 100_000;

#[derive(Debug)]
struct BackendState {
    name: String,
    healthy: AtomicBool,
    /// A status every request gets (0: none).
    fail_with: AtomicU16,
    /// A delay before every answer, in ms.
    delay_ms: AtomicU64,
    /// The `x-request-id` of each request, in arrival order (at most MAX_RECEIVED).
    request_ids: std::sync::Mutex<Vec<String>>,
    requests: AtomicU64,
    received: std::sync::Mutex<Vec<Received>>,
}

/// A request a backend received, as the simulator's upstream records one.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: tokio::time::Instant,
    /// Its `x-sim-id`, when it had one.
    pub id: Option<u64>,
    /// Its path.
    pub path: String,
    /// Its `traceparent` and `tracestate`.
    pub traceparent: Option<String>,
    /// Its `tracestate`.
    pub tracestate: Option<String>,
}

/// A running demo backend; it stops when dropped.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend named `name` on `bind` (port 0 picks a free port), on a thread of its own.
    pub fn start(name: &str, bind: SocketAddr) -> std::io::Result<Backend> {
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BackendState {
            name: name.into(),
            healthy: AtomicBool::new(true),
            fail_with: AtomicU16::new(0),
            delay_ms: AtomicU64::new(0),
            request_ids: std::sync::Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            received: std::sync::Mutex::new(Vec::new()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(format!("backend-{name}")).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "demo backend stopped");
                }
            });
        })?;
        Ok(Backend { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Makes every request but `/health` answer `status` (0 turns it off).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_with.store(status, Ordering::Relaxed);
    }

    /// Makes every request but `/health` wait `ms` (at most [`MAX_SLOW_MS`]) before its answer.
    pub fn delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms.min(MAX_SLOW_MS), Ordering::Relaxed);
    }

    /// The `X-Request-Id` of every request received, in order.
    pub fn request_ids(&self) -> Vec<String> {
        self.state.request_ids.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Requests served so far, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Every request received, in order (at most [`MAX_RECEIVED`]).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(state: Arc<BackendState>) -> Router {
    Router::new().route("/health", get(health)).fallback(echo).with_state(state)
}

async fn health(State(state): State<Arc<BackendState>>) -> StatusCode {
    if state.healthy.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn echo(State(state): State<Arc<BackendState>>, req: Request) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut received) = state.received.lock()
        && received.len() < MAX_RECEIVED
    {
        let id = req.headers().get("x-sim-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        received.push(Received {
            at: tokio::time::Instant::now(),
            id,
            path: req.uri().path().to_string(),
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        });
    }
    if let (Ok(mut ids), Some(id)) = (state.request_ids.lock(), req.headers().get("x-request-id"))
        && ids.len() < MAX_RECEIVED
    {
        ids.push(String::from_utf8_lossy(id.as_bytes()).into_owned());
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    if path == "/slow" {
        let ms = query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000)
            .min(MAX_SLOW_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = StatusCode::from_u16(state.fail_with.load(Ordering::Relaxed)).ok();
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .or(forced)
        .unwrap_or(StatusCode::OK);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), serde_json::Value::from(v))))
        .collect();
    let body = serde_json::json!({
        "server": state.name,
        "method": req.method().as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "peer": peer,
    });
    (status, Json(body)).into_response()
}

/// The demo's gateway config in front of backends at `addrs`.
pub fn config_yaml(addrs: &[SocketAddr], bind: &str, control: &str) -> String {
    let servers: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"mode: api_gateway
server:
  bind_address: "{bind}"
  upstream_timeout_secs: 5
upstreams:
  demo:
    servers: [{servers}]
    strategy: round_robin
    health_check: {{ interval_secs: 2, timeout_secs: 1, path: /health }}
api_gateway:
  routes:
    api:
      path_pattern: "^/api"
      upstream: demo
      strip_prefix: true
      middlewares: [cors, rate_limit]
    echo:
      path_pattern: "^/"
      upstream: demo
  middlewares:
    rate_limiting: {{ requests_per_minute: 600, burst_size: 20 }}
    cors: {{ allowed_origins: ["http://localhost:3000"], allowed_methods: [GET, POST], allowed_headers: [Content-Type] }}
control_api:
  bind_address: "{control}"
"#,
        servers = servers.join(", ")
    )
}
