//! The proxy's one constructor, and the state every request, background task and the control API share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use locci_core::clock::{Clock, Entropy, OsEntropy, TokioClock};
use locci_core::config::{Config, ConfigErrors, OnError, PreflightMode};
use locci_core::discovery::{Answers, Name, Outcome, Wanted};
use locci_core::edge::ClientError;
use locci_core::middleware::{Pending, StoreReply};
use locci_core::upstream::ServerAddr;
use locci_core::{Runtime, ValidConfig};
use pingora_core::protocols::tls::CaType;
use pingora_core::server::configuration::ServerConf;

use crate::config_file::{self, Overrides};
use crate::gate::Verdict;
use crate::observe::Metrics;
use crate::observe::spans::{FinishedSpan, SpanExport};
use crate::server::discovery::{DnsResolver, Resolver};
use crate::server::edge::Edge;
use crate::server::gateway::Gateway;
use crate::server::health::HealthDriver;
use crate::server::rate_store::{RateStores, RedisStores};
use crate::server::transport::{NativeTransport, Prober, TcpProber, UpstreamTransport};

/// The span exporter `runtime`'s config asks for: `running` when it is the same one, a new one, or none.
fn span_export(
    runtime: &Runtime,
    running: Option<Arc<SpanExport>>,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
) -> Option<Arc<SpanExport>> {
    let section = &runtime.config().tracing;
    let endpoint = section.otlp_endpoint.as_ref()?;
    let key = SpanExport::key_of(endpoint, &section.service_name);
    if let Some(running) = running.filter(|r| *r.key() == key) {
        return Some(running);
    }
    match SpanExport::start(endpoint, &section.service_name, metrics.span_counts(), Arc::clone(clock)) {
        Ok(export) => {
            tracing::info!(endpoint = %endpoint, service = %section.service_name, "exporting request spans over OTLP/HTTP");
            Some(Arc::new(export))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the span exporter's thread; spans are not exported");
            None
        }
    }
}

/// What differs between production and simulation: time, randomness and the network.
#[derive(Clone)]
pub struct Env {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub entropy: Arc<dyn Entropy>,
    /// How the proxy connects to upstream servers.
    pub transport: Arc<dyn UpstreamTransport>,
    /// How health checks reach upstream servers.
    pub prober: Arc<dyn Prober>,
    /// Where shared rate-limit buckets are kept.
    pub rate_stores: Arc<dyn RateStores>,
    /// How upstream names are resolved (in the background, SPEC §13).
    pub resolver: Arc<dyn Resolver>,
}

impl Env {
    /// The production environment: tokio time, OS-seeded randomness, kernel sockets.
    pub fn production() -> Env {
        Env {
            clock: Arc::new(TokioClock::new()),
            entropy: Arc::new(OsEntropy::new()),
            transport: Arc::new(NativeTransport),
            prober: Arc::new(TcpProber),
            rate_stores: Arc::new(RedisStores::default()),
            resolver: Arc::new(DnsResolver),
        }
    }
}

/// Where the config came from, so a reload can read it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file; `None` for the demo, which has no file to reload.
    pub path: Option<PathBuf>,
    /// Command-line overrides, applied again on every reload.
    pub overrides: Overrides,
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The generation now serving (unchanged by a dry run).
    pub generation: u64,
    /// Whether the new config was swapped in.
    pub applied: bool,
    /// The preflight's mode and verdict, when one ran.
    pub preflight: Option<(PreflightMode, Verdict)>,
}

/// Why a reload was not applied.
#[derive(Debug)]
pub enum ReloadError {
    /// The file does not validate, needs a restart, or cannot be read.
    Invalid(ConfigErrors),
    /// `reload.preflight: enforce` and the preflight found it over budget, or could not run.
    Refused(Verdict),
}

/// The reason of a refusal, on one line.
pub fn refusal(verdict: &Verdict) -> String {
    match (&verdict.error, verdict.problems.first()) {
        (Some(e), _) => e.clone(),
        (None, Some(first)) => format!("{} problem(s); the first: {first}", verdict.problems.len()),
        (None, None) => "over budget".into(),
    }
}

fn log_verdict(mode: PreflightMode, verdict: &Verdict, reload: &str) {
    let elapsed_ms = verdict.elapsed.as_millis() as u64;
    match verdict.within_budget {
        Some(true) => tracing::info!(?mode, elapsed_ms, reload, "preflight: within budget"),
        Some(false) => {
            for p in &verdict.problems {
                tracing::warn!(?mode, problem = %p, "preflight: over budget");
            }
            tracing::warn!(?mode, elapsed_ms, reload, problems = verdict.problems.len(), "preflight: over budget");
        }
        None => tracing::error!(
            ?mode,
            elapsed_ms,
            reload,
            error = verdict.error.as_deref().unwrap_or("?"),
            "preflight could not run"
        ),
    }
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum ChangeError<E> {
    /// The caller's own refusal (not found, conflict, bad body).
    Refused(E),
    /// The changed config does not validate (or needs a restart); nothing changed.
    Invalid(ConfigErrors),
}

/// State shared by every request, the health driver and the control plane.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The environment.
    pub env: Env,
    /// Every metric.
    pub metrics: Metrics,
    /// Where the config file is.
    pub source: ConfigSource,
    /// When this process started serving (from the Clock).
    pub started: Instant,
    /// Upstream CA bundles by path, read when a config is applied (never on the request path).
    cas: ArcSwap<BTreeMap<String, Arc<CaType>>>,
    /// Requests being served now, for a graceful shutdown that ends when they are done.
    inflight: AtomicUsize,
    /// Set once a shutdown or upgrade has begun: responses then close their connections.
    draining: AtomicBool,
    /// Client connections open now (`server.client.max_connections`).
    connections: AtomicUsize,
    /// When each rate-limited log line was last written (unix seconds), by [`LogLine`].
    logged: [std::sync::atomic::AtomicU64; LogLine::COUNT],
    /// Serialises changes so each builds on the one before it.
    change: Mutex<()>,
    /// The span exporter, while `tracing.otlp_endpoint` is set.
    spans: ArcSwapOption<SpanExport>,
    /// The DNS answers in force for the config's names (written by the discovery loop only).
    answers: ArcSwap<Answers>,
    /// The JWKS store whose fetcher was started last (a reload's new store gets its own).
    jwks: Mutex<std::sync::Weak<locci_core::middleware::jwks::KeyStore>>,
}

impl Shared {
    /// Shared state serving `valid` as generation 1.
    pub fn new(valid: ValidConfig, env: Env, source: ConfigSource) -> Result<Arc<Shared>, prometheus::Error> {
        let now = env.clock.now();
        let runtime = Runtime::build(valid, None, 1, now);
        let cas = ArcSwap::from_pointee(read_cas(&runtime));
        let metrics = Metrics::new()?;
        let spans = ArcSwapOption::from(span_export(&runtime, None, &metrics, &env.clock));
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            env,
            metrics,
            source,
            started: now,
            cas,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            logged: Default::default(),
            change: Mutex::new(()),
            spans,
            jwks: Mutex::new(std::sync::Weak::new()),
            answers: ArcSwap::from_pointee(Answers::default()),
        });
        shared.fetch_jwks(&shared.runtime());
        Ok(shared)
    }

    /// Starts the JWKS fetcher of `runtime`'s key set, unless it runs already. The one of a runtime that is
    /// replaced ends by itself once no request holds that runtime.
    fn fetch_jwks(&self, runtime: &Runtime) {
        let Some(store) = runtime.jwks() else { return };
        let mut started = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        if started.upgrade().is_some_and(|s| Arc::ptr_eq(&s, store)) {
            return;
        }
        match crate::server::jwks::start(store, self.metrics.jwks_counts(), Arc::clone(&self.env.clock)) {
            Ok(()) => *started = Arc::downgrade(store),
            Err(e) => tracing::error!(error = %e, "cannot start the JWKS fetcher; tokens needing its keys are refused"),
        }
    }

    /// Records a lookup of `name` (the discovery loop's); a failure keeps the answer in force.
    pub fn record_answer(&self, name: &Name, result: Result<Vec<std::net::SocketAddr>, String>) -> Outcome {
        let mut answers = (**self.answers.load()).clone();
        let outcome = answers.record(name, result);
        if outcome == Outcome::Changed {
            self.answers.store(Arc::new(answers));
        }
        outcome
    }

    /// Forgets the answers of names the config no longer has.
    pub fn forget_answers(&self, wanted: &[Wanted]) {
        let mut answers = (**self.answers.load()).clone();
        if answers.retain(wanted) {
            self.answers.store(Arc::new(answers));
        }
    }

    /// Where to reach `server`: its IP literal, or its hostname's background answer (none before the first).
    pub fn server_socket(&self, server: &ServerAddr) -> Option<std::net::SocketAddr> {
        server
            .ip
            .or_else(|| self.answers.load().host(&server.host).map(|ip| std::net::SocketAddr::new(ip, server.port)))
    }

    /// Applies the answers in force to the config in force: the servers of `dns`/`srv` entries change, the
    /// state of every server that stays is carried over, and the generation stays (the config did not change).
    pub fn rediscover(&self) {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let mut config = (**old.config()).clone();
        self.answers.load().fill(&mut config);
        match config_file::validate_parsed(config) {
            Ok(valid) => {
                self.swap_as(&old, valid, old.generation());
                let servers: usize = self.runtime.load().pools().iter().map(|p| p.servers().len()).sum();
                tracing::info!(servers, "discovered servers applied");
            }
            Err(errors) => {
                for line in errors.lines() {
                    tracing::error!(problem = %line, "discovered servers not applied");
                }
            }
        }
    }

    /// Stops the span export, waiting up to `wait` for the spans it holds to be sent (at shutdown).
    pub fn finish_spans(&self, wait: Duration) {
        if let Some(export) = self.spans.swap(None) {
            SpanExport::finish(export, wait);
        }
    }

    /// Hands a sampled request's span to the exporter, when there is one; a full queue drops and counts it.
    pub fn export_span(&self, span: impl FnOnce() -> FinishedSpan) {
        if let Some(export) = &*self.spans.load()
            && !export.offer(span())
        {
            self.metrics.span_counts().add("dropped", 1);
        }
    }

    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The CA bundle read from `path`, if the current config names it.
    pub fn ca(&self, path: &str) -> Option<Arc<CaType>> {
        self.cas.load().get(path).cloned()
    }

    /// Seconds since start-up.
    pub fn uptime(&self) -> Duration {
        self.env.clock.now().saturating_duration_since(self.started)
    }

    /// Changes the config: `edit` derives the next config from the current one; it is validated exactly as
    /// a file is, checked for restart-only changes, and swapped in. Returns the new generation.
    pub fn change<E>(&self, edit: impl FnOnce(&Config) -> Result<Config, E>) -> Result<u64, ChangeError<E>> {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let mut next = edit(old.config()).map_err(ChangeError::Refused)?;
        let restart = locci_core::config::restart_needed(old.config(), &next);
        if !restart.is_empty() {
            return Err(ChangeError::Invalid(ConfigErrors(restart)));
        }
        // Names it shares with the config in force keep their servers; new ones resolve in the background.
        self.answers.load().fill(&mut next);
        let valid = config_file::validate_parsed(next).map_err(ChangeError::Invalid)?;
        Ok(self.swap(&old, valid))
    }

    /// Re-reads the config file (SIGHUP, `POST /api/v1/reload`); on any problem the old config stays, the
    /// problems are logged at ERROR and counted, and returned.
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        match self.reload_file(false) {
            Ok(done) => Ok(done.generation),
            Err(ReloadError::Invalid(errors)) => Err(errors),
            Err(ReloadError::Refused(verdict)) => Err(ConfigErrors::one(locci_core::ConfigError::at(
                "reload.preflight",
                format!("refused by the preflight ({}): {}", verdict.outcome(), refusal(&verdict)),
            ))),
        }
    }

    /// Re-reads the config file and, when `reload.preflight` (of the config in force) asks or `dry_run` is set,
    /// simulates the change first; `dry_run` applies nothing and counts nothing. A reload refused by an
    /// enforced preflight keeps the old config and counts as a failed reload.
    pub fn reload_file(&self, dry_run: bool) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let result = self.reload_locked(&old, dry_run);
        if dry_run {
            return result;
        }
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(done) => {
                if let Some((mode, verdict)) = &done.preflight {
                    log_verdict(*mode, verdict, "applied");
                }
                tracing::info!(generation = done.generation, "config reloaded");
            }
            Err(ReloadError::Invalid(errors)) => {
                for line in errors.lines() {
                    tracing::error!(problem = %line, "config reload refused, old config kept");
                }
            }
            Err(ReloadError::Refused(verdict)) => {
                log_verdict(PreflightMode::Enforce, verdict, "refused");
                tracing::error!(outcome = verdict.outcome(), "config reload refused by the preflight, old config kept");
            }
        }
        result
    }

    fn reload_locked(&self, old: &Arc<Runtime>, dry_run: bool) -> Result<Reloaded, ReloadError> {
        let Some(path) = &self.source.path else {
            return Err(ReloadError::Invalid(ConfigErrors::one(locci_core::ConfigError::at(
                "",
                "no config file to reload (demo mode)",
            ))));
        };
        let mut next = config_file::read_file(path, &self.source.overrides).map_err(ReloadError::Invalid)?;
        let restart = locci_core::config::restart_needed(old.config(), &next);
        if !restart.is_empty() {
            return Err(ReloadError::Invalid(ConfigErrors(restart)));
        }
        self.answers.load().fill(&mut next);
        let valid = config_file::validate_parsed(next.clone()).map_err(ReloadError::Invalid)?;
        // The gate in force is the running config's: a change cannot switch off the check that judges it.
        let gate = &old.config().reload;
        let mode = if dry_run && gate.preflight == PreflightMode::Off { PreflightMode::Report } else { gate.preflight };
        let preflight = (mode != PreflightMode::Off).then(|| {
            let profile = old.traffic_profile(self.env.clock.unix_now().as_secs());
            let verdict = crate::gate::run(gate, old.config(), &next, &profile, self.env.clock.as_ref());
            let label = if dry_run {
                "dry_run"
            } else if mode == PreflightMode::Enforce {
                "enforce"
            } else {
                "report"
            };
            self.metrics.preflight(label, verdict.outcome());
            (mode, verdict)
        });
        if let Some((mode, verdict)) = &preflight
            && verdict.refuses(*mode)
        {
            return Err(ReloadError::Refused(verdict.clone()));
        }
        if dry_run {
            return Ok(Reloaded { generation: old.generation(), applied: false, preflight });
        }
        Ok(Reloaded { generation: self.swap(old, valid), applied: true, preflight })
    }

    fn swap(&self, old: &Runtime, valid: ValidConfig) -> u64 {
        self.swap_as(old, valid, old.generation() + 1)
    }

    /// Puts `valid` in force as `generation`, with everything that follows a new runtime: the CA bundles, the
    /// span exporter, the JWKS fetcher of its key set. A reload and a discovery refresh both come here.
    fn swap_as(&self, old: &Runtime, valid: ValidConfig, generation: u64) -> u64 {
        let next = Runtime::build(valid, Some(old), generation, self.env.clock.now());
        self.cas.store(Arc::new(read_cas(&next)));
        // The exporter is kept while its endpoint and service name are; otherwise the old one sends what it
        // holds and ends, and a new one starts.
        let spans = span_export(&next, self.spans.load_full(), &self.metrics, &self.env.clock);
        self.spans.store(spans);
        self.fetch_jwks(&next);
        self.runtime.store(Arc::new(next));
        generation
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Marks the process as going away: from now on every response closes its connection, so keep-alive
    /// clients move to the new process (or reconnect) after a complete response instead of finding their
    /// idle connection dropped under a request.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the process is going away.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl Shared {
    /// Starts the connections to the shared rate-limit stores the config names, so the first request after
    /// start-up already shares its bucket (called once the runtime is running; the connect is in the background
    /// and bounded by the store's own timeouts).
    pub fn warm_rate_stores(&self) {
        for route in self.runtime().routes() {
            for step in route.steps() {
                if let locci_core::middleware::Step::RemoteRateLimit(limit) = step
                    && let Some(remote) = &limit.settings.remote
                {
                    self.env.rate_stores.store(remote.url.expose()).warm();
                }
            }
        }
    }

    /// Asks the shared store for a token; when it cannot answer in time the limit's `on_error` applies, which
    /// is counted and logged (at most every 10 s).
    pub async fn take_shared_token(&self, route: &str, pending: &Pending) -> StoreReply {
        let settings = &pending.limit.settings;
        let Some(remote) = &settings.remote else { return StoreReply::Unavailable };
        let store = self.env.rate_stores.store(remote.url.expose());
        let reply = store.take(&pending.key, settings).await;
        if reply == StoreReply::Unavailable {
            let on_error = match remote.on_error {
                OnError::Allow => "allow",
                OnError::Deny => "deny",
            };
            self.metrics.ratelimit_fallback(route, on_error);
            if self.may_log(LogLine::StoreFallback, 10) {
                tracing::warn!(route, on_error, "rate-limit store unavailable, falling back");
            }
        }
        reply
    }
}

impl Shared {
    /// Counts a client connection until the guard is dropped; `None` when `max_connections` are open already.
    pub fn begin_connection(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let limit = self.runtime.load().client_limits().max_connections;
        let open = self.connections.fetch_add(1, Ordering::AcqRel);
        let guard = ConnectionGuard(Arc::clone(self));
        (open < limit).then_some(guard)
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Counts a client the edge refused, and logs it at most once a second per reason, so an attacker
    /// cannot flood the log.
    pub fn client_rejected(&self, error: ClientError) {
        self.metrics.client_rejected(error.reason());
        if self.may_log(LogLine::Client(error), 1) {
            tracing::warn!(
                reason = error.reason(),
                "client refused at the edge (logged at most once a second per reason)"
            );
        }
    }

    /// Whether the line about a refused retry may be written now (at most once a second: a storm of refusals
    /// is what the budget is for, and the overflow counter has every one).
    pub fn may_log_overflow(&self) -> bool {
        self.may_log(LogLine::Overflow, 1)
    }

    /// Whether a rate-limited log line may be written now (at most once every `secs` per line).
    fn may_log(&self, line: LogLine, secs: u64) -> bool {
        let slot = &self.logged[line.index()];
        let now = self.env.clock.unix_now().as_secs();
        let last = slot.load(Ordering::Relaxed);
        // `now < last`: the wall clock stepped back; log rather than stay silent until it catches up.
        (last == 0 || now >= last + secs || now < last)
            && slot.compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}

/// The log lines an outsider can provoke at will, each written at a bounded rate.
#[derive(Debug, Clone, Copy)]
enum LogLine {
    StoreFallback,
    Overflow,
    Client(ClientError),
}

impl LogLine {
    const COUNT: usize = 2 + ClientError::REASONS.len();

    fn index(self) -> usize {
        match self {
            LogLine::StoreFallback => 0,
            LogLine::Overflow => 1,
            LogLine::Client(e) => 2 + ClientError::REASONS.iter().position(|r| *r == e.reason()).unwrap_or(0),
        }
    }
}

/// One open client connection; dropping it ends the count.
pub struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in flight; dropping it ends the count.
pub struct RequestGuard(Arc<Shared>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything a running proxy is made of, built by [`build_proxy`] for production and simulation alike.
pub struct Proxy {
    /// The state every request, background task and the control API share.
    pub shared: Arc<Shared>,
    /// The application listeners feed connections to: the edge in front of Pingora's `HttpProxy`.
    pub app: Edge,
    /// The health-check loop, to be run by the caller (a background service, or a simulated task).
    pub health: HealthDriver,
}

impl Proxy {
    /// The control API over this proxy's state.
    pub fn control(&self) -> axum::Router {
        crate::control::router(Arc::clone(&self.shared))
    }
}

/// The one constructor of the proxy: the binary and the simulator both call it, so nothing of what a running
/// proxy is made of is written twice; only `env` differs (time, randomness, the network).
pub fn build_proxy(valid: ValidConfig, env: Env, source: ConfigSource) -> Result<Proxy, prometheus::Error> {
    let server_conf = Arc::new(server_conf(&valid));
    let shared = Shared::new(valid, env, source)?;
    let http = pingora_proxy::http_proxy(&server_conf, Gateway::new(Arc::clone(&shared)));
    let app = Edge::new(http, Arc::clone(&shared));
    let health = HealthDriver::new(Arc::clone(&shared));
    Ok(Proxy { shared, app, health })
}

/// Pingora's server settings for a config (the binary's `Server` and the proxy service read the same).
pub fn server_conf(valid: &ValidConfig) -> ServerConf {
    let s = &valid.config.server;
    // The upgrade socket and pid file are named after the listen address, so an old and a new process of
    // the same instance meet, and instances on other addresses do not.
    let id: String = s.bind_address.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let tmp = std::env::temp_dir();
    ServerConf {
        threads: s.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        upstream_keepalive_pool_size: s.connection_pool.max_idle,
        // Signals::exit_when_drained ends the process once requests are done; this is only the upper bound.
        grace_period_seconds: Some(s.graceful_shutdown_timeout_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: tmp.join(format!("locci-proxy-{id}.pid")).display().to_string(),
        upgrade_sock: tmp.join(format!("locci-proxy-{id}.upgrade.sock")).display().to_string(),
        ..ServerConf::default()
    }
}

fn read_cas(runtime: &Runtime) -> BTreeMap<String, Arc<CaType>> {
    let mut cas = BTreeMap::new();
    for pool in runtime.pools() {
        if let Some(path) = &pool.spec().ca_path {
            match config_file::read_ca_bundle(path) {
                Some(bundle) => {
                    cas.insert(path.clone(), Arc::new(bundle));
                }
                None => tracing::error!(upstream = pool.name(), path = %path, "cannot read CA bundle"),
            }
        }
    }
    cas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::load_text;

    /// A discovery refresh rebuilds the config in force, and with it the JWKS key store: the fetcher must follow
    /// the new store, or rotated keys are never fetched again (the old fetcher ends with the old runtime).
    #[test]
    fn a_discovery_refresh_hands_the_jwks_fetcher_the_new_key_store() {
        let yaml = "mode: api_gateway\nupstreams:\n  app: { servers: [{ dns: \"app.internal:8080\" }] }\n\
                    api_gateway:\n  routes: { api: { path_pattern: \"^/\", upstream: app, middlewares: [auth] } }\n  \
                    middlewares:\n    authentication: { jwks_url: \"http://127.0.0.1:9/jwks.json\", algorithms: [RS256] }\n";
        let valid = load_text(yaml, &Overrides::default()).expect("config");
        let shared = Shared::new(valid, Env::production(), ConfigSource::default()).expect("shared");
        let name = Name::Dns { host: "app.internal".into(), port: 8080 };
        let addr = "10.0.0.7:8080".parse().expect("addr");
        assert_eq!(shared.record_answer(&name, Ok(vec![addr])), Outcome::Changed);
        shared.rediscover();
        let runtime = shared.runtime();
        assert_eq!(runtime.pools()[0].servers().len(), 1, "the answer's server is in the group");
        assert_eq!(runtime.generation(), 1, "a refresh is not a reload");
        let fetched = shared.jwks.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
        let store = runtime.jwks().expect("a key store");
        assert!(fetched.is_some_and(|f| Arc::ptr_eq(&f, store)), "the fetcher refreshes the store in force");
    }
}
