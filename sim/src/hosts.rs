//! The simulated hosts: upstream HTTP servers with programmable behaviour, the proxy (the real
//! `build_proxy()` over simulated sockets, time and randomness), and the client that plays the load.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use locci_core::clock::SeededEntropy;
use locci_proxy::config_file::{self, Overrides};
use locci_proxy::{ConfigSource, Env, Proxy, Shared, build_proxy};
use pingora_core::apps::ServerApp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use turmoil::net::{TcpListener, TcpStream};

use crate::net::{SimClock, SimProber, SimSock, SimTransport};
use crate::scenario::{Capacity, WireKind};
use crate::trace::{Event, Trace, now_us, us};

/// The port the proxy listens on inside the simulation.
pub const PROXY_PORT: u16 = 8484;
/// Largest request head an upstream host reads.
const MAX_HEAD: usize = 16 * 1024;

/// What an upstream host does now; the driver changes it between steps.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Service time range.
    pub latency: (Duration, Duration),
    /// Status answered (200 normally).
    pub status: u16,
    /// Accept but never answer.
    pub hang: bool,
    /// The share of requests answered 500 (a steady error rate, as a traffic profile measured it).
    pub error_rate: f64,
    /// How its answers go wrong on the wire, if they do (with the trickle interval).
    pub wire: Option<(WireKind, Duration)>,
}

/// The body a host sends while a wire fault is on: long enough that "halfway through it" is many bytes.
const WIRE_BODY: usize = 4096;

/// A behaviour shared between the driver and the host (one thread: Rc + RefCell).
pub type Live<T> = Rc<RefCell<T>>;

/// A host's capacity in force: service slots, and the requests waiting for one.
struct Gate {
    slots: tokio::sync::Semaphore,
    waiting: Cell<usize>,
    queue: usize,
}

impl Gate {
    fn new(capacity: Option<Capacity>) -> Option<Gate> {
        capacity.map(|c| Gate {
            slots: tokio::sync::Semaphore::new(c.concurrent),
            waiting: Cell::new(0),
            queue: c.queue,
        })
    }

    /// A service slot, after a wait in the queue; `None`: slots and queue are full (the request is shed).
    async fn enter(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if self.slots.available_permits() == 0 && self.waiting.get() >= self.queue {
            return None;
        }
        self.waiting.set(self.waiting.get() + 1);
        let permit = self.slots.acquire().await.ok();
        self.waiting.set(self.waiting.get() - 1);
        permit
    }
}

/// One upstream host: a minimal HTTP/1.1 server (one request per connection) that records what it
/// receives and answers, answers `/health`, follows its behaviour, and serves at most its capacity at once.
pub async fn upstream(
    name: String,
    port: u16,
    (behaviour, capacity): (Live<Behaviour>, Option<Capacity>),
    trace: Trace,
    seed: u64,
) -> turmoil::Result {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let rng = Rc::new(RefCell::new(ChaCha8Rng::seed_from_u64(seed)));
    let gate = Rc::new(Gate::new(capacity));
    loop {
        let (stream, _) = listener.accept().await?;
        let (name, behaviour, trace, rng, gate) =
            (name.clone(), Rc::clone(&behaviour), trace.clone(), Rc::clone(&rng), Rc::clone(&gate));
        tokio::task::spawn_local(async move {
            let _ = serve_one(stream, &name, (&behaviour, gate.as_ref().as_ref()), &trace, &rng).await;
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    name: &str,
    (behaviour, gate): (&Live<Behaviour>, Option<&Gate>),
    trace: &Trace,
    rng: &RefCell<ChaCha8Rng>,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (path, id) = parse_request(&head);
    let text = String::from_utf8_lossy(&head);
    let [traceparent, tracestate] = ["traceparent", "tracestate"].map(|name| header_raw(&text, name));
    drain_body(&mut stream, &head).await?;
    let health = path == "/health";
    let b = behaviour.borrow().clone();
    if !health {
        // Received before anything else happens to it: a server that then hangs has still got the request, so
        // a second delivery of it elsewhere shows (at_most_once).
        trace.push(Event::Received {
            t_us: now_us(),
            host: name.to_string(),
            id: id.unwrap_or(u64::MAX),
            path: path.clone(),
            traceparent,
            tracestate,
        });
    }
    if b.hang {
        std::future::pending::<()>().await;
    }
    // Health checks pass the gate: the model is a server whose check is cheap and whose work is not.
    let mut status = if health && b.status < 500 { 200 } else { b.status };
    let (mut _slot, mut shed) = (None, false);
    if let Some(gate) = gate.filter(|_| !health) {
        match gate.enter().await {
            Some(permit) => _slot = Some(permit),
            None => (status, shed) = (503, true),
        }
    }
    // Drawn only when there is a rate, so a host without one draws exactly what it always drew.
    if !health && !shed && status == 200 && b.error_rate > 0.0 && rng.borrow_mut().random_bool(b.error_rate) {
        status = 500;
    }
    if !health && !shed {
        let (lo, hi) = b.latency;
        let wait = if hi > lo { rng.borrow_mut().random_range(lo..=hi) } else { lo };
        tokio::time::sleep(wait).await;
    }
    let wire = b.wire.filter(|_| !health);
    let mut body = format!("{{\"server\":\"{name}\"}}");
    if wire.is_some() {
        body = format!("{{\"server\":\"{name}\",\"pad\":\"{}\"}}", "x".repeat(WIRE_BODY));
    }
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let written = write_answer(&mut stream, head.as_bytes(), body.as_bytes(), wire).await;
    if !health {
        // Answered (or the connection broke while answering): the request no longer holds the server.
        trace.push(Event::Served { t_us: now_us(), host: name.to_string(), id: id.unwrap_or(u64::MAX), status });
    }
    written
}

/// Writes an answer, or gets it wrong on the wire as the fault in force says.
async fn write_answer(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    wire: Option<(WireKind, Duration)>,
) -> std::io::Result<()> {
    match wire {
        // One write, as a server writes a small answer in one syscall: a partition then drops the answer whole
        // or not at all, never between its head and its body (a split a 17-byte body never sees for real).
        None => stream.write_all(&[head, body].concat()).await?,
        // turmoil has no RST: a close where none may come is what the proxy sees of a reset.
        Some((WireKind::Reset, _)) => stream.write_all(&head[..head.len() / 2]).await?,
        Some((WireKind::ShortBody, _)) => {
            stream.write_all(head).await?;
            stream.write_all(&body[..body.len() / 2]).await?;
        }
        Some((WireKind::Trickle, interval)) => {
            for byte in head {
                stream.write_all(std::slice::from_ref(byte)).await?;
                stream.flush().await?;
                tokio::time::sleep(interval).await;
            }
            stream.write_all(body).await?;
        }
        Some((WireKind::Stall, _)) => {
            stream.write_all(head).await?;
            stream.write_all(&body[..body.len() / 2]).await?;
            stream.flush().await?;
            // Held open and silent until the proxy gives up and closes its side.
            let mut buf = [0u8; 64];
            while stream.read(&mut buf).await? > 0 {}
            return Ok(());
        }
    }
    stream.flush().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// Reads the rest of a declared body (what `read_head` read past the head counts), so the answer comes after
/// the whole request, as a real server's does.
async fn drain_body(stream: &mut TcpStream, head: &[u8]) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(head);
    let Some((headers, after)) = text.split_once("\r\n\r\n") else { return Ok(()) };
    let length: usize = headers
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(MAX_HEAD);
    let mut left = length.saturating_sub(after.len());
    let mut buf = [0u8; 1024];
    while left > 0 {
        let n = stream.read(&mut buf[..left.min(1024)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n;
    }
    Ok(())
}

/// The path and the `x-sim-id` header of a request head.
fn parse_request(head: &[u8]) -> (String, Option<u64>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/").to_string();
    let id = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-sim-id"))
        .and_then(|(_, v)| v.trim().parse().ok());
    (path, id)
}

/// Commands from the driver to the proxy host.
#[derive(Debug)]
pub enum Command {
    /// Write this config text (the timeline's event `.0`) to the config file and reload (the SIGHUP path).
    Reload(usize, String),
}

/// Everything the proxy host needs.
pub struct ProxyHost {
    /// Config text with host names already replaced by addresses.
    pub config: String,
    /// Where the config file lives (reloads read it, as SIGHUP does).
    pub config_path: PathBuf,
    /// Seed for the proxy's random source.
    pub seed: u64,
    /// The simulated world's wall-clock epoch.
    pub epoch: Duration,
    /// Commands from the driver.
    pub commands: Rc<RefCell<Option<mpsc::UnboundedReceiver<Command>>>>,
    /// Where the host publishes its shared state for the driver to observe.
    pub shared: Rc<RefCell<Option<Arc<Shared>>>>,
    /// The trace.
    pub trace: Trace,
    /// Milliseconds the proxy's wall clock has been stepped by (`clock_jump`).
    pub clock_offset_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Whether the world has a simulated Redis (otherwise shared stores never answer).
    pub redis: bool,
    /// The simulated DNS the proxy's resolver asks.
    pub dns: crate::net::DnsTable,
}

/// Runs the proxy: the production `build_proxy()` fed by a turmoil accept loop, the production health
/// driver, and reloads through `Shared::reload`, exactly as SIGHUP does.
pub async fn proxy(host: Rc<ProxyHost>) -> turmoil::Result {
    std::fs::write(&host.config_path, &host.config)?;
    let valid = config_file::load_file(&host.config_path, &Overrides::default()).map_err(|e| e.to_string())?;
    let env = Env {
        clock: Arc::new(SimClock::new(host.epoch, Arc::clone(&host.clock_offset_ms))),
        entropy: Arc::new(SeededEntropy::new(host.seed)),
        transport: Arc::new(SimTransport),
        prober: Arc::new(SimProber),
        rate_stores: if host.redis { Arc::new(crate::net::SimRedisStores) } else { Arc::new(crate::net::DeadStores) },
        resolver: Arc::new(crate::net::SimResolver(Arc::clone(&host.dns))),
    };
    let source = ConfigSource { path: Some(host.config_path.clone()), overrides: Overrides::default() };
    let Proxy { shared, app, health, .. } = build_proxy(valid, env, source).map_err(|e| e.to_string())?;
    *host.shared.borrow_mut() = Some(Arc::clone(&shared));
    let app = Arc::new(app);
    tokio::task::spawn_local(async move { health.run(None).await });
    if let Some(mut commands) = host.commands.borrow_mut().take() {
        let (shared, trace, path) = (Arc::clone(&shared), host.trace.clone(), host.config_path.clone());
        tokio::task::spawn_local(async move {
            while let Some(Command::Reload(step, text)) = commands.recv().await {
                let result = std::fs::write(&path, text)
                    .map_err(|e| e.to_string())
                    .and_then(|()| shared.reload().map_err(|e| e.lines().join("; ")));
                // What the proxy itself says is in force afterwards, whatever reload() returned.
                let generation = shared.runtime().generation();
                trace.push(Event::Reload { t_us: now_us(), step, generation, error: result.err() });
            }
        });
    }
    let (_keep_open, shutdown) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], PROXY_PORT))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
        tokio::task::spawn_local(async move {
            app.process_new(Box::new(SimSock(stream).into_stream()), &shutdown).await;
        });
    }
}

/// The simulated Redis: reads `INTERVAL CAPACITY KEY\n`, takes the production script's GCRA step
/// (`remote_step`) on its keys at its own clock, and answers `ADMITTED AHEAD\n` after its service time. The
/// keys live in the host, so a restart loses them, as a Redis without persistence does.
pub async fn redis(port: u16, latency: (Duration, Duration), seed: u64) -> turmoil::Result {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let keys: Rc<RefCell<std::collections::BTreeMap<String, (u64, u64)>>> = Rc::default();
    let rng = Rc::new(RefCell::new(ChaCha8Rng::seed_from_u64(seed)));
    let start = tokio::time::Instant::now();
    loop {
        let (mut stream, _) = listener.accept().await?;
        let (keys, rng) = (Rc::clone(&keys), Rc::clone(&rng));
        tokio::task::spawn_local(async move {
            let mut line = Vec::new();
            let mut buf = [0u8; 512];
            while !line.contains(&b'\n') && line.len() < 4096 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => line.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&line);
            let mut parts = text.trim_end_matches('\n').splitn(3, ' ');
            let (Some(Ok(interval)), Some(Ok(capacity)), Some(key)) =
                (parts.next().map(str::parse::<u64>), parts.next().map(str::parse::<u64>), parts.next())
            else {
                return;
            };
            let now_us = start.elapsed().as_micros() as u64;
            let step = {
                let mut keys = keys.borrow_mut();
                let stored = keys.get(key).filter(|(_, expires)| *expires > now_us).map(|(tat, _)| *tat);
                let step = locci_core::middleware::remote_step(stored, now_us, interval, capacity);
                if let Some((tat, ttl_ms)) = step.store {
                    keys.insert(key.to_string(), (tat, now_us + ttl_ms * 1000));
                }
                if keys.len() > 100_000 {
                    keys.retain(|_, (_, expires)| *expires > now_us);
                }
                step
            };
            let (lo, hi) = latency;
            let wait = if hi > lo { rng.borrow_mut().random_range(lo..=hi) } else { lo };
            tokio::time::sleep(wait).await;
            let reply = format!("{} {}\n", u8::from(step.allowed), step.ahead_us);
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// One request the client will send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// When, from the start of the run.
    pub at: Duration,
    /// Its id (carried in `x-sim-id`).
    pub id: u64,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Key header and value.
    pub key: Option<(String, String)>,
    /// The class's extra headers.
    pub headers: Vec<(String, String)>,
    /// The statuses its class may get.
    pub expect: Vec<u16>,
    /// A body, sent with its Content-Length.
    pub body: Option<String>,
    /// Where the upstream must receive it, when the class says.
    pub upstream_path: Option<String>,
}

impl Planned {
    /// A header its class adds, by name.
    pub fn class_header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

/// Plays the planned requests (open loop: each at its time, whatever the others are doing). With
/// `keep_alive`, requests share a pool of idle connections to the proxy, as a browser's or an HTTP client
/// library's pool does: a request takes the connection idle the shortest time, or opens one when none is idle,
/// and gives it back when its answer is read whole and the proxy did not say `Connection: close`.
pub async fn client(plan: Vec<Planned>, timeout: Duration, keep_alive: bool, trace: Trace) -> turmoil::Result {
    let start = tokio::time::Instant::now();
    let idle = Idle::default();
    let mut tasks = tokio::task::JoinSet::new();
    for req in plan {
        tokio::time::sleep_until(start + req.at).await;
        let trace = trace.clone();
        let pool = keep_alive.then(|| Rc::clone(&idle));
        tasks.spawn_local(async move { send(req, timeout, pool, &trace).await });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The client's idle keep-alive connections, most recently used last.
type Idle = Rc<RefCell<Vec<TcpStream>>>;

async fn send(req: Planned, timeout: Duration, pool: Option<Idle>, trace: &Trace) {
    let sent = tokio::time::Instant::now();
    trace.push(Event::Issued {
        t_us: now_us(),
        id: req.id,
        method: req.method.clone(),
        path: req.path.clone(),
        key: req.key.as_ref().map(|(_, v)| v.clone()),
        expect: req.expect.clone(),
        upstream_path: req.upstream_path.clone(),
        traceparent: req.class_header("traceparent"),
        tracestate: req.class_header("tracestate"),
    });
    let result = tokio::time::timeout(timeout, exchange(&req, pool.as_ref(), trace)).await;
    let latency_us = us(sent.elapsed());
    let event = match result {
        Ok(Ok((status, true))) => Event::Answered { t_us: now_us(), id: req.id, status, latency_us },
        Ok(Ok((status, false))) => Event::Truncated { t_us: now_us(), id: req.id, status, latency_us },
        Ok(Err(e)) => Event::Failed { t_us: now_us(), id: req.id, kind: format!("{:?}", e.kind()), latency_us },
        Err(_) => Event::Failed { t_us: now_us(), id: req.id, kind: "client_timeout".into(), latency_us },
    };
    trace.push(event);
}

/// The status of the answer, and whether its body arrived whole.
async fn exchange(req: &Planned, pool: Option<&Idle>, trace: &Trace) -> std::io::Result<(u16, bool)> {
    let mut key = req.key.as_ref().map(|(h, v)| format!("{h}: {v}\r\n")).unwrap_or_default();
    for (name, value) in &req.headers {
        key.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = req.body.as_ref().map(|b| format!("Content-Length: {}\r\n", b.len())).unwrap_or_default();
    let close = if pool.is_some() { "" } else { "Connection: close\r\n" };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: proxy\r\nX-Sim-Id: {}\r\n{key}{length}{close}\r\n{}",
        req.method,
        req.path,
        req.id,
        req.body.as_deref().unwrap_or("")
    );
    let Some(pool) = pool else {
        let mut stream = TcpStream::connect(("proxy", PROXY_PORT)).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        return Ok((status_of(&response)?, whole(&response)));
    };
    let reused = pool.borrow_mut().pop();
    if let Some(stream) = reused {
        match on_connection(stream, head.as_bytes(), pool).await {
            // A pooled connection the proxy closed before answering a byte: the request was not processed
            // (RFC 9112 §9.3.1), and a client resends an idempotent one on a new connection, as hyper and
            // browsers do. A non-idempotent one fails: resending it is not the client's to decide.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted && crate::scenario::idempotent(&req.method) => {
            }
            done => return done,
        }
    }
    trace.push(Event::Connected { t_us: now_us(), id: req.id });
    let stream = TcpStream::connect(("proxy", PROXY_PORT)).await?;
    on_connection(stream, head.as_bytes(), pool).await
}

/// Sends one request on a keep-alive connection and reads its answer by its framing; the connection goes
/// back to the pool when it may carry another. `ConnectionAborted`: closed before any byte of an answer.
async fn on_connection(mut stream: TcpStream, head: &[u8], pool: &Idle) -> std::io::Result<(u16, bool)> {
    stream.write_all(head).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            if response.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed before an answer"));
            }
            return Ok((status_of(&response)?, whole(&response)));
        }
        response.extend_from_slice(&buf[..n]);
        // A connection kept alive must hold exactly the body its head declares: a byte more would be read as
        // the next request's answer.
        let (whole, keep) = match framing(&response) {
            Framing::Partial | Framing::UntilClose => continue,
            Framing::Overrun => (false, false),
            Framing::Complete { keep } => (true, keep),
        };
        let status = status_of(&response)?;
        if keep {
            pool.borrow_mut().push(stream);
        }
        return Ok((status, whole));
    }
}

/// How far a response has come, by its own framing (Content-Length or chunked).
enum Framing {
    /// The head, or the body it declares, is not all there yet.
    Partial,
    /// Neither length nor chunks: the body ends when the connection does.
    UntilClose,
    /// Whole; `keep`: the connection may carry another request.
    Complete { keep: bool },
    /// More bytes than the head declared.
    Overrun,
}

fn framing(response: &[u8]) -> Framing {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return Framing::Partial };
    let (head, body) = (String::from_utf8_lossy(&response[..end]), &response[end + 4..]);
    let done = if header(&head, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        body.ends_with(b"0\r\n\r\n")
    } else {
        let Some(length) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) else {
            return Framing::UntilClose;
        };
        if body.len() > length {
            return Framing::Overrun;
        }
        body.len() == length
    };
    if !done {
        return Framing::Partial;
    }
    let close = head.starts_with("HTTP/1.0") || header(&head, "connection").is_some_and(|c| c.contains("close"));
    Framing::Complete { keep: !close }
}

/// A header's value, lowercased (for framing decisions).
fn header(head: &str, name: &str) -> Option<String> {
    header_raw(head, name).map(|v| v.to_ascii_lowercase())
}

/// A header's value as sent (trimmed): the first line of `head` with that name.
fn header_raw(head: &str, name: &str) -> Option<String> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

fn status_of(response: &[u8]) -> std::io::Result<u16> {
    let line = response.split(|b| *b == b'\n').next().unwrap_or(&[]);
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status line"))
}

/// Whether a response read to the connection's end holds the whole body its head declares (a body delimited
/// by the close is whole by definition; bytes past a declared length cannot be told from a longer body here).
fn whole(response: &[u8]) -> bool {
    matches!(framing(response), Framing::Complete { .. } | Framing::UntilClose | Framing::Overrun)
}

/// What an attacker connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    /// Trickles a head, one line per interval.
    Slowloris,
    /// Sends nothing.
    Flood,
    /// Sends a whole request, then closes after `interval`.
    Abort,
}

/// One client attack, as the timeline planned it.
#[derive(Debug, Clone)]
pub struct AttackPlan {
    /// What each connection does.
    pub kind: AttackKind,
    /// The path an aborting client asks for.
    pub path: String,
    /// Connections opened at `from` (an abort opens them one by one over `from..to`).
    pub connections: usize,
    /// When the attack starts.
    pub from: Duration,
    /// When the attacker gives up on the connections still open.
    pub to: Duration,
    /// Time between two header lines (slowloris), or from sending to closing (abort).
    pub interval: Duration,
}

/// Plays the attacks: each connection records when and how it ended.
pub async fn attacker(attacks: Vec<AttackPlan>, trace: Trace) -> turmoil::Result {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for attack in attacks {
        tokio::time::sleep_until(start + attack.from).await;
        let spacing = (attack.to.saturating_sub(attack.from)) / attack.connections.max(1) as u32;
        for i in 0..attack.connections {
            if attack.kind == AttackKind::Abort {
                tokio::time::sleep_until(start + attack.from + spacing * i as u32).await;
            }
            let (attack, trace) = (attack.clone(), trace.clone());
            tasks.spawn_local(async move { attack_one(&attack, start + attack.to, &trace).await });
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn attack_one(attack: &AttackPlan, until: tokio::time::Instant, trace: &Trace) {
    let opened = tokio::time::Instant::now();
    let kind = match attack.kind {
        AttackKind::Slowloris => "slowloris",
        AttackKind::Flood => "flood",
        AttackKind::Abort => "abort",
    };
    let Ok(mut stream) = TcpStream::connect(("proxy", PROXY_PORT)).await else {
        // Refused at once (max_connections): that is a cut-off too.
        trace.push(Event::Attacker { t_us: now_us(), kind: kind.into(), lasted_us: 0, cut_off: true, status: None });
        return;
    };
    if attack.kind == AttackKind::Abort {
        let head = format!("GET {} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n", attack.path);
        let _ = stream.write_all(head.as_bytes()).await;
        tokio::time::sleep(attack.interval).await;
        // Gone before the answer: nothing was cut off by the proxy.
        drop(stream);
        let lasted_us = us(opened.elapsed());
        trace.push(Event::Attacker { t_us: now_us(), kind: kind.into(), lasted_us, cut_off: false, status: None });
        return;
    }
    let slowloris = attack.kind == AttackKind::Slowloris;
    if slowloris {
        let _ = stream.write_all(b"GET /slow HTTP/1.1\r\nHost: proxy\r\n").await;
    }
    let mut buf = vec![0u8; 1024];
    let mut line = 0u64;
    let ended = loop {
        let wait =
            if slowloris { attack.interval } else { until.saturating_duration_since(tokio::time::Instant::now()) };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) => {
                break Some(std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.split(' ').nth(1)?.parse().ok()));
            }
            Ok(Err(_)) => break Some(None),
            Err(_) if tokio::time::Instant::now() >= until => break None,
            Err(_) => {
                line += 1;
                if stream.write_all(format!("X-Trickle-{line}: x\r\n").as_bytes()).await.is_err() {
                    break Some(None);
                }
            }
        }
    };
    let lasted_us = us(opened.elapsed());
    let (cut_off, status) = match ended {
        Some(status) => (true, status),
        None => (false, None),
    };
    trace.push(Event::Attacker { t_us: now_us(), kind: kind.into(), lasted_us, cut_off, status });
}
