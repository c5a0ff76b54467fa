//! The scenario file: simulation settings, the proxy config, upstreams, load, a fault timeline, swarm
//! settings and invariants. Parsed with the same YAML library as the proxy config, unknown keys rejected,
//! and checked so a bad scenario is refused with a message that names the field.
//!
//! One crate, with no simulator in it, so `locci-sim` and `locci-loadgen` read the same file the same way:
//! the `load:` section drives a simulated run and a staging run alike, and [`plan`] turns it into the same
//! arrivals for both.

pub mod plan;

/// The highest load rate a simulated run takes, per second.
pub const MAX_SIM_RATE: f64 = 5000.0;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A parsed, checked scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used in reports and replay commands).
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Simulation settings.
    #[serde(default)]
    pub sim: SimSettings,
    /// The proxy: an ordinary locci config; `${name}` stands for an upstream host's address.
    pub proxy: ProxySettings,
    /// Simulated upstream hosts.
    pub upstreams: Vec<UpstreamSpec>,
    /// A simulated Redis host named `redis` (`${redis}` in the config), for `backend: redis`; absent: a store
    /// that never answers.
    #[serde(default)]
    pub redis: Option<RedisSpec>,
    /// The load.
    pub load: LoadSpec,
    /// Faults, at absolute simulated times.
    #[serde(default, deserialize_with = "serde_yaml_ng::with::singleton_map_recursive::deserialize")]
    pub timeline: Vec<Event>,
    /// Swarm settings (used with `--swarm`).
    #[serde(default)]
    pub swarm: SwarmSpec,
    /// What must hold. (Written as one-key maps, `- availability: {...}`, hence singleton_map.)
    #[serde(default, deserialize_with = "serde_yaml_ng::with::singleton_map_recursive::deserialize")]
    pub invariants: Vec<Invariant>,
}

/// Simulation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// Simulated run length (load stops here; in-flight requests get their client timeout).
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Turmoil tick: part of the scenario's identity (the trace changes with it).
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    /// Wall-clock epoch of the simulated world, seconds since 1970.
    pub epoch_unix_secs: u64,
    /// Network latency range between hosts.
    pub link_latency: LatencyRange,
    /// The simulated clients keep their connections to the proxy alive and share them (a pool of idle
    /// connections); otherwise each request has its own connection and sends `Connection: close`. (Upstream
    /// connections are never reused in the simulation: pingora#883.)
    pub keep_alive: bool,
    /// Turmoil runs the hosts in an order drawn from the seed each tick, not always the same one: races a fixed
    /// order never tries (each connection's bytes stay in order, as TCP keeps them).
    pub random_order: bool,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            duration: Duration::from_secs(60),
            tick: Duration::from_millis(1),
            epoch_unix_secs: 1_767_225_600,
            link_latency: LatencyRange { min: Duration::from_millis(1), max: Duration::from_millis(5) },
            keep_alive: false,
            random_order: false,
        }
    }
}

/// A latency range.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyRange {
    /// Lowest.
    #[serde(deserialize_with = "duration")]
    pub min: Duration,
    /// Highest.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
}

/// The proxy under test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// The locci config, inline YAML.
    pub config: String,
}

/// A group of simulated upstream hosts named `name0`, `name1`, … (or `name` when there is one replica).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Base name.
    pub name: String,
    /// How many hosts.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Port they listen on.
    #[serde(default = "port")]
    pub port: u16,
    /// Service time per request.
    #[serde(default = "default_latency")]
    pub latency: LatencyRange,
    /// How much each host serves at once (absent: no limit).
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// The share of requests each host answers with 500, drawn per request from the seed (0 to 1).
    #[serde(default)]
    pub error_rate: f64,
}

/// The simulated Redis: one host that takes the same GCRA step as the production Lua script, on its own
/// clock, and loses its keys when it restarts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// Port it listens on.
    #[serde(default = "redis_port")]
    pub port: u16,
    /// Service time per command.
    #[serde(default = "redis_latency")]
    pub latency: LatencyRange,
}

fn redis_port() -> u16 {
    6379
}
fn redis_latency() -> LatencyRange {
    LatencyRange { min: Duration::from_micros(100), max: Duration::from_micros(500) }
}

/// A host's capacity: `concurrent` requests in service, `queue` more waiting in arrival order; a request
/// beyond both is answered 503 at once, as an overloaded server sheds load. Health checks are not counted.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Requests served at once.
    pub concurrent: usize,
    /// Requests waiting for service.
    #[serde(default)]
    pub queue: usize,
}

fn one() -> usize {
    1
}
fn port() -> u16 {
    80
}
fn default_latency() -> LatencyRange {
    LatencyRange { min: Duration::from_millis(2), max: Duration::from_millis(10) }
}

impl UpstreamSpec {
    /// The host names.
    pub fn hosts(&self) -> Vec<String> {
        if self.replicas == 1 {
            vec![self.name.clone()]
        } else {
            (0..self.replicas).map(|i| format!("{}{i}", self.name)).collect()
        }
    }
}

/// The load profile: an open-loop arrival rate over a weighted request mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Requests per second (with `stages`, the stages say instead).
    #[serde(default)]
    pub rate: f64,
    /// Ramping rates: each stage's rate moves linearly to the next stage's over the stage; the last holds. The
    /// stages' total length is the load's length.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// `uniform` spacing or `poisson` arrivals (drawn from the seed).
    #[serde(default)]
    pub arrival: Arrival,
    /// Client-side timeout.
    #[serde(default = "client_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// When the load starts.
    #[serde(default, deserialize_with = "duration")]
    pub start: Duration,
    /// The request mix.
    pub requests: Vec<RequestSpec>,
}

fn client_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One stage of a ramping load.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// Requests per second at its start.
    pub rate: f64,
}

impl LoadSpec {
    /// The problems with this load for a runner that can send at most `max_rate` per second, each named by
    /// its field under `load`.
    pub fn check(&self, max_rate: f64) -> Vec<String> {
        let mut p = Vec::new();
        let fine = |r: f64| r > 0.0 && r <= max_rate;
        if self.stages.is_empty() && !fine(self.rate) {
            p.push(format!("load.rate: must be above 0 and at most {max_rate} per second"));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if !fine(stage.rate) {
                p.push(format!("load.stages[{i}].rate: must be above 0 and at most {max_rate} per second"));
            }
            if stage.duration.is_zero() {
                p.push(format!("load.stages[{i}].for: must be longer than 0"));
            }
        }
        if self.requests.is_empty() || self.requests.iter().all(|r| r.weight == 0) {
            p.push("load.requests: needs at least one request with a weight".into());
        }
        for (i, r) in self.requests.iter().enumerate() {
            if r.body.is_some() && r.body_file.is_some() {
                p.push(format!("load.requests[{i}]: body and body_file together"));
            }
        }
        p
    }

    /// The load's length when its stages set it.
    pub fn staged_length(&self) -> Option<Duration> {
        (!self.stages.is_empty()).then(|| self.stages.iter().map(|s| s.duration).sum())
    }

    /// Reads every `body_file` (relative to `base`) into `body`.
    pub fn read_bodies(&mut self, base: &std::path::Path) -> Result<(), String> {
        for (i, r) in self.requests.iter_mut().enumerate() {
            if let Some(file) = r.body_file.take() {
                let path = base.join(&file);
                r.body = Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("load.requests[{i}].body_file: cannot read {}: {e}", path.display()))?,
                );
            }
        }
        Ok(())
    }
}

/// The `load:` section of a scenario file (a whole simulator scenario, or a file with just `load:`), its
/// bodies read, checked for a runner that sends at most `max_rate` per second.
pub fn load_section(path: &std::path::Path, max_rate: f64) -> Result<LoadSpec, Vec<String>> {
    #[derive(Deserialize)]
    struct Only {
        load: LoadSpec,
    }
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let tree: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| vec![format!("invalid YAML: {e}")])?;
    // Only the load section is read: the rest of a simulator scenario is the simulator's.
    let load = tree.get("load").cloned().ok_or_else(|| vec!["no load: section".to_string()])?;
    let only: Only = serde_path_to_error::deserialize(serde_yaml_ng::Value::Mapping(
        [(serde_yaml_ng::Value::from("load"), load)].into_iter().collect(),
    ))
    .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])?;
    let mut load = only.load;
    load.read_bodies(path.parent().unwrap_or(std::path::Path::new("."))).map_err(|e| vec![e])?;
    let problems = load.check(max_rate);
    if problems.is_empty() { Ok(load) } else { Err(problems) }
}

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly.
    #[default]
    Uniform,
    /// Exponential gaps.
    Poisson,
}

/// One kind of request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Relative weight in the mix.
    #[serde(default = "one_u32")]
    pub weight: u32,
    /// Method.
    #[serde(default = "get")]
    pub method: String,
    /// Path.
    pub path: String,
    /// Header that carries a key (`key-0` … `key-{keys-1}`, drawn per request).
    #[serde(default)]
    pub key_header: Option<String>,
    /// How many distinct keys.
    #[serde(default = "one_u32")]
    pub keys: u32,
    /// The statuses this class may get; anything else counts against availability.
    #[serde(default = "ok_only")]
    pub expect: Vec<u16>,
    /// A request body (sent with its Content-Length).
    #[serde(default)]
    pub body: Option<String>,
    /// A file whose content is the body (relative to the scenario file).
    #[serde(default)]
    pub body_file: Option<String>,
    /// Extra headers, name to value.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The path the upstream must receive (checked by `upstream_paths`); absent = not checked.
    #[serde(default)]
    pub upstream_path: Option<String>,
}

fn ok_only() -> Vec<u16> {
    vec![200]
}

/// Whether a method may be sent twice without a second effect (RFC 9110 §9.2.2).
pub fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

fn one_u32() -> u32 {
    1
}
fn get() -> String {
    "GET".into()
}

/// A fault at a simulated time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When.
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// What.
    #[serde(flatten)]
    pub fault: Fault,
}

/// The faults a timeline can hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Crash a host: it stops, traffic to it is black-holed.
    Kill(String),
    /// Restart a crashed host.
    Restart(String),
    /// Slow a host down for a while.
    Slow(Slow),
    /// A host answers with an error status for a while.
    Errors(Errors),
    /// A host accepts connections but never answers, for a while.
    Hang(Timed),
    /// Cut the link between the proxy and a host for a while.
    Partition(Partition),
    /// Crash and restart a host in a cycle until a time.
    Flap(Flap),
    /// Reload the proxy with another config (through the same code as SIGHUP).
    Reload(Reload),
    /// Extra load from one key.
    Storm(Storm),
    /// Attacker connections that trickle a request head, one header line per `interval`, never finishing it.
    Slowloris(Attack),
    /// Attacker connections opened at once that send nothing and hold their slot.
    Flood(Attack),
    /// Clients that send a whole request and go away before the answer, at a rate.
    Abort(Abort),
    /// Step the proxy's wall clock (NTP correcting it): `by: +20m` or `by: -5m`; monotonic time is untouched.
    ClockJump(ClockJump),
    /// A host writes its answers wrongly for a while (the socket seam): see [`WireKind`].
    Wire(WireFault),
    /// Every fault in force ends: crashed hosts restart, links heal, hosts behave as declared (`heal: {}`;
    /// what swarm mode's `heal_at` does, written down by `locci-sim shrink`).
    Heal(Heal),
    /// The simulated DNS: from now on `name` resolves to these hosts' addresses, or (`fail: true`) its lookups
    /// fail (SPEC §13's discovery).
    Dns(DnsChange),
}

/// `dns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsChange {
    /// The name, as the config's `dns:` entries write it (without the port).
    pub name: String,
    /// The upstream hosts whose addresses it resolves to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Lookups fail (SERVFAIL) instead.
    #[serde(default)]
    pub fail: bool,
}

/// `heal`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heal {}

/// `wire`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFault {
    /// Host.
    pub target: String,
    /// What goes wrong on the wire.
    pub kind: WireKind,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// Time between two bytes of a trickled head.
    #[serde(default = "trickle_interval", deserialize_with = "duration")]
    pub interval: Duration,
}

fn trickle_interval() -> Duration {
    Duration::from_millis(10)
}

/// How a host's answer goes wrong (health checks are answered normally).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WireKind {
    /// The connection closes halfway through the response head.
    Reset,
    /// The head declares a body the connection closes halfway through.
    ShortBody,
    /// The head arrives one byte per `interval`, then the body: slow but whole.
    Trickle,
    /// The head and half the body arrive, then nothing more (the connection stays open).
    Stall,
}

/// `clock_jump`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockJump {
    /// Signed step, in milliseconds (written `+20m`, `-90s`).
    #[serde(deserialize_with = "signed_duration_ms")]
    pub by: i64,
}

fn signed_duration_ms<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    let text = String::deserialize(de)?;
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(&text)),
    };
    let d = humantime::parse_duration(rest)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a signed duration: {e}")))?;
    i64::try_from(d.as_millis()).map(|ms| sign * ms).map_err(|_| serde::de::Error::custom("clock step too large"))
}

/// `abort`: from the attacker host, beside the ordinary load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// Path requested.
    #[serde(default = "root")]
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// How long after sending the client closes.
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
}

/// `slowloris` and `flood`: connections from a separate attacker host, beside the ordinary load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    /// How many connections, opened at once.
    pub connections: usize,
    /// How long the attacker keeps trying.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// Time between two header lines (slowloris).
    #[serde(default = "attack_interval", deserialize_with = "duration")]
    pub interval: Duration,
}

fn attack_interval() -> Duration {
    Duration::from_secs(1)
}

/// `slow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slow {
    /// Host.
    pub target: String,
    /// Service time while slow.
    #[serde(deserialize_with = "duration")]
    pub latency: Duration,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
}

/// `errors`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Errors {
    /// Host.
    pub target: String,
    /// Status answered.
    #[serde(default = "five_hundred")]
    pub status: u16,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
}

fn five_hundred() -> u16 {
    500
}

/// A fault on one host for a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timed {
    /// Host.
    pub target: String,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
}

/// `partition`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Host cut off from the proxy.
    pub target: String,
    /// `refuse`: connects fail at once; `blackhole`: packets are held (connects time out).
    #[serde(default)]
    pub mode: PartitionMode,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
}

/// How a partition behaves.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartitionMode {
    /// Connection refused.
    #[default]
    Refuse,
    /// Held: nothing arrives until repaired.
    Blackhole,
}

/// `flap`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    /// Host.
    pub target: String,
    /// Cycle length.
    #[serde(deserialize_with = "duration")]
    pub period: Duration,
    /// Down part of each cycle.
    #[serde(deserialize_with = "duration")]
    pub down: Duration,
    /// When flapping stops (the host is left up).
    #[serde(deserialize_with = "duration")]
    pub until: Duration,
}

/// `reload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    /// The new locci config, inline YAML.
    pub config: String,
    /// The proxy must refuse it (`generations` then demands that nothing changed).
    #[serde(default)]
    pub refused: bool,
}

/// `storm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    /// Header carrying the key.
    #[serde(default = "api_key_header")]
    pub key_header: String,
    /// The key.
    pub key: String,
    /// Path requested.
    #[serde(default = "root")]
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// How long.
    #[serde(rename = "for", deserialize_with = "duration")]
    pub duration: Duration,
    /// The statuses a storm request may get (it is meant to be limited).
    #[serde(default = "ok_or_limited")]
    pub expect: Vec<u16>,
}

fn ok_or_limited() -> Vec<u16> {
    vec![200, 429]
}

fn api_key_header() -> String {
    "X-Api-Key".into()
}
fn root() -> String {
    "/".into()
}

/// Swarm settings: with `--swarm`, each timeline event is kept with probability `p_enable` (drawn from the
/// seed) and durations are scaled by a factor drawn from `[min_scale, max_scale]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmSpec {
    /// Chance each event is kept.
    pub p_enable: f64,
    /// Smallest duration scale.
    pub min_scale: f64,
    /// Largest duration scale.
    pub max_scale: f64,
    /// After the timeline, every fault is healed at this time and convergence is demanded.
    #[serde(default, deserialize_with = "opt_duration")]
    pub heal_at: Option<Duration>,
    /// How long convergence may take after healing.
    #[serde(deserialize_with = "duration")]
    pub converge_within: Duration,
    /// The load's rates are scaled by one factor drawn from this range (absent: as written).
    #[serde(default)]
    pub rate_scale: Option<Range>,
    /// Each `slow` latency and `storm` rate is scaled by a factor drawn from this range (absent: as written).
    #[serde(default)]
    pub intensity_scale: Option<Range>,
    /// Whole numbers drawn per seed from their ranges and written where the proxy's configs say
    /// `${swarm.NAME}` (a health threshold, a retry count, an ejection time); outside swarm mode, each one's
    /// `default`.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, Param>,
}

/// A swarm parameter: a whole number in `[min, max]`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// Smallest.
    pub min: i64,
    /// Largest.
    pub max: i64,
    /// Outside swarm mode.
    pub default: i64,
}

/// A range of factors a swarm run draws from.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Default for SwarmSpec {
    fn default() -> Self {
        SwarmSpec {
            p_enable: 0.5,
            min_scale: 0.5,
            max_scale: 2.0,
            heal_at: None,
            converge_within: Duration::from_secs(5),
            rate_scale: None,
            intensity_scale: None,
            params: std::collections::BTreeMap::new(),
        }
    }
}

/// What must hold over the trace (see GUIDE.md for the precise definitions).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// No request reaches a server more than `grace` after it was marked down, until it is marked up.
    NoTrafficToDown(Grace),
    /// A server is marked down within `within` of `at` (a fault's onset).
    Detection(Detection),
    /// Requests issued in `[from, to)` get a response below 500 at least `min` of the time.
    Availability(Availability),
    /// Requests of `key` admitted (not 429) in any window stay within `rpm` x window + `burst`; and keys other
    /// than `key` are never refused when `others_unlimited`.
    RateLimit(RateLimitBound),
    /// No request issued in `[from, to)` fails (5xx, timeout or connection error).
    NoFailures(Window),
    /// By `after + within` every server is up, and every request issued after that succeeds.
    Converge(Converge),
    /// Every request gets exactly one HTTP response (no client timeout, no broken connection).
    AllAnswered(bool),
    /// The `percentile` of response latency for requests issued in `[from, to)` is at most `max`.
    Latency(LatencyBound),
    /// A server receives at least `min` and at most `max` requests issued in `[from, to)`.
    Traffic(Traffic),
    /// A server changes state (down or up) at most `max` times.
    MaxTransitions(MaxTransitions),
    /// Every attacker connection (slowloris, flood) is closed by the proxy within `within` of its opening.
    AttackersCutOff(CutOff),
    /// No upstream receives a non-idempotent request (by request id) more than once.
    AtMostOnce(bool),
    /// Every request received upstream arrived at its class's `upstream_path`.
    UpstreamPaths(bool),
    /// Every answer to a request issued in `[from, to)` has one of `allowed`.
    Statuses(Statuses),
    /// The requests a server (or every host of a group) holds, received and not yet answered, never exceed `max`.
    UpstreamInFlight(InFlightBound),
    /// When a request reaches a server for the second time, the requests on a retry stay within the budget.
    RetryBudget(RetryBudget),
    /// Deliveries upstream per request issued in `[from, to)` stay at most `max`.
    Amplification(Amplification),
    /// A server back from down gets a share that ramps over `window`, as `slow_start_secs` says.
    SlowStart(SlowStart),
    /// The proxy's own counters agree with the trace: answers by status exactly, retries at least the
    /// second deliveries.
    MetricsMatch(bool),
    /// Every reload is applied or refused as the timeline says; an applied one grows the generation by one, a
    /// refused one leaves it; and every request reaches only servers of a config in force while it was open.
    Generations(bool),
    /// At least `min` of the requests go on a connection the client already had open (`sim.keep_alive`).
    ClientReuse(ClientReuse),
    /// Every delivery carries the W3C trace context SPEC §14 asks for (the client's continued, or a new one).
    TraceContext(bool),
}

/// `client_reuse`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientReuse {
    /// Least share of requests sent on a reused connection (0 to 1).
    pub min: f64,
}

/// `upstream_in_flight`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlightBound {
    /// A host, or an upstream's name for all its hosts.
    pub target: String,
    /// Most requests held at once.
    pub max: usize,
}

/// `retry_budget`: the budget of SPEC §9 (retries in flight <= max(min_concurrent, percent x first attempts)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// The budget's percent.
    pub percent: u32,
    /// The budget's floor.
    pub min_concurrent: u32,
    /// Longest time from the proxy deciding a retry to the server receiving it (backoff, connect, send).
    #[serde(deserialize_with = "duration")]
    pub lag: Duration,
}

/// `amplification`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amplification {
    /// Most deliveries per request.
    pub max: f64,
    /// Window start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// Window end (default: the end of the load).
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// `slow_start`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStart {
    /// The returning host.
    pub target: String,
    /// Its ramp is the first time the proxy marks it up after this.
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
    /// The group's `slow_start_secs`.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Allowance for the draw's noise in each second's share.
    pub slack: f64,
}

/// `statuses`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statuses {
    /// The statuses allowed.
    pub allowed: Vec<u16>,
    /// Only requests to this path, as the client sends it (default: every request).
    #[serde(default)]
    pub path: Option<String>,
    /// Start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// End (default: the end of the load).
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// `attackers_cut_off`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutOff {
    /// Longest an attacker connection may stay open.
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
}

/// `max_transitions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxTransitions {
    /// Host.
    pub target: String,
    /// Most state changes.
    pub max: usize,
}

/// `no_traffic_to_down`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grace {
    /// Allowance for requests already on the wire.
    #[serde(default = "grace", deserialize_with = "duration")]
    pub grace: Duration,
}

fn grace() -> Duration {
    Duration::from_millis(100)
}

/// `detection`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    /// Host.
    pub target: String,
    /// Fault onset.
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// Bound.
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
    /// Earliest allowed detection after the onset (`(k - 1) x interval`, plus the check timeout for a host
    /// that black-holes): a server marked down sooner means a threshold too low.
    #[serde(default, deserialize_with = "duration")]
    pub not_before: Duration,
}

/// `availability`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Availability {
    /// Lowest share of good answers.
    pub min: f64,
    /// Window start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// Window end (default: the end of the run).
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// `rate_limit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBound {
    /// The key.
    pub key: String,
    /// Configured rate.
    pub rpm: f64,
    /// Configured burst.
    pub burst: f64,
    /// Keys other than `key` must never get 429.
    #[serde(default)]
    pub others_unlimited: bool,
    /// Only requests issued from here (default: the start).
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// Only requests issued before this (default: the end of the run).
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// A time window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// End (default: the end of the run).
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// `converge`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Converge {
    /// When the last fault healed.
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
    /// How long recovery may take.
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
}

/// `latency`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBound {
    /// Percentile, 0 to 100.
    pub percentile: f64,
    /// Bound.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
    /// Window start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// Window end.
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

/// `traffic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Host.
    pub target: String,
    /// Fewest requests.
    #[serde(default)]
    pub min: u64,
    /// Most requests.
    #[serde(default = "unbounded")]
    pub max: u64,
    /// Window start.
    #[serde(default, deserialize_with = "duration")]
    pub from: Duration,
    /// Window end.
    #[serde(default, deserialize_with = "opt_duration")]
    pub to: Option<Duration>,
}

fn unbounded() -> u64 {
    u64::MAX
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
}

fn opt_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    duration(de).map(Some)
}

/// Most simulated time a scenario may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(6 * 3600);

impl Scenario {
    /// Reads, parses and checks a scenario file; `body_file`s are read relative to it.
    pub fn read(path: &std::path::Path) -> Result<Scenario, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        let mut scenario = Scenario::parse(&text)?;
        scenario.load.read_bodies(path.parent().unwrap_or(std::path::Path::new("."))).map_err(|e| vec![e])?;
        Ok(scenario)
    }

    /// Parses and checks a scenario; every problem is named by its field.
    pub fn parse(text: &str) -> Result<Scenario, Vec<String>> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            vec![format!("{at}{}", e.inner())]
        })?;
        let problems = scenario.check();
        if problems.is_empty() { Ok(scenario) } else { Err(problems) }
    }

    /// Every host name, in registration order.
    pub fn hosts(&self) -> Vec<String> {
        self.upstreams.iter().flat_map(UpstreamSpec::hosts).collect()
    }

    /// The hosts `target` names: itself, or every host of the upstream of that name; with the group's hosts.
    pub fn group_of(&self, target: &str) -> Vec<String> {
        self.upstreams
            .iter()
            .find(|u| u.name == target || u.hosts().iter().any(|h| h == target))
            .map_or_else(Vec::new, UpstreamSpec::hosts)
    }

    fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let hosts: BTreeSet<String> = self.hosts().into_iter().collect();
        if self.sim.duration.is_zero() || self.sim.duration > MAX_DURATION {
            p.push(format!("sim.duration: must be between 1ms and {}", humantime::format_duration(MAX_DURATION)));
        }
        if self.sim.tick.is_zero() || self.sim.tick > Duration::from_millis(100) {
            p.push("sim.tick: must be between 1ns and 100ms".into());
        }
        if self.sim.link_latency.min > self.sim.link_latency.max {
            p.push("sim.link_latency: min is above max".into());
        }
        if hosts.len() != self.hosts().len() {
            p.push("upstreams: two hosts have the same name".into());
        }
        if hosts.contains("proxy") || hosts.contains("client") || hosts.contains("attacker") || hosts.contains("redis")
        {
            p.push("upstreams: \"proxy\", \"client\", \"attacker\" and \"redis\" are taken".into());
        }
        if self.redis.is_some_and(|r| r.latency.min > r.latency.max) {
            p.push("redis.latency: min is above max".into());
        }
        // The simulated Redis is a host faults can name like any other.
        let hosts: BTreeSet<String> = hosts.into_iter().chain(self.redis.map(|_| "redis".to_string())).collect();
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.replicas == 0 || u.replicas > 64 {
                p.push(format!("upstreams[{i}].replicas: must be 1 to 64"));
            }
            if u.latency.min > u.latency.max {
                p.push(format!("upstreams[{i}].latency: min is above max"));
            }
            if u.capacity.is_some_and(|c| c.concurrent == 0) {
                p.push(format!("upstreams[{i}].capacity.concurrent: must be at least 1"));
            }
            if !(0.0..=1.0).contains(&u.error_rate) {
                p.push(format!("upstreams[{i}].error_rate: must be 0 to 1"));
            }
        }
        p.extend(self.load.check(MAX_SIM_RATE));
        for (field, range) in [("rate_scale", self.swarm.rate_scale), ("intensity_scale", self.swarm.intensity_scale)] {
            if let Some(r) = range
                && !(r.min > 0.0 && r.min <= r.max && r.max <= 10.0)
            {
                p.push(format!("swarm.{field}: needs 0 < min <= max <= 10"));
            }
        }
        if let Some(r) = self.swarm.rate_scale {
            let top = self.load.stages.iter().map(|s| s.rate).fold(self.load.rate, f64::max) * r.max;
            if top > MAX_SIM_RATE {
                p.push(format!("swarm.rate_scale: the load's highest rate x max is above {MAX_SIM_RATE} per second"));
            }
        }
        for (name, param) in &self.swarm.params {
            if !(param.min <= param.default && param.default <= param.max) {
                p.push(format!("swarm.params.{name}: needs min <= default <= max"));
            }
        }
        let mut configs = vec![self.proxy.config.as_str()];
        configs.extend(self.timeline.iter().filter_map(|e| match &e.fault {
            Fault::Reload(r) => Some(r.config.as_str()),
            _ => None,
        }));
        let named: BTreeSet<&str> = configs
            .iter()
            .flat_map(|c| c.split("${swarm.").skip(1).filter_map(|rest| rest.split_once('}').map(|(n, _)| n)))
            .collect();
        for name in &named {
            if !self.swarm.params.contains_key(*name) {
                p.push(format!("proxy.config: ${{swarm.{name}}} is not declared under swarm.params"));
            }
        }
        for name in self.swarm.params.keys() {
            if !named.contains(name.as_str()) {
                p.push(format!("swarm.params.{name}: not used by any config (write ${{swarm.{name}}})"));
            }
        }
        let groups: BTreeSet<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        for (i, inv) in self.invariants.iter().enumerate() {
            let target = match inv {
                Invariant::UpstreamInFlight(b) if !hosts.contains(&b.target) && !groups.contains(b.target.as_str()) => {
                    Some(&b.target)
                }
                Invariant::SlowStart(s) if !hosts.contains(&s.target) => Some(&s.target),
                _ => None,
            };
            if let Some(t) = target {
                p.push(format!("invariants[{i}]: unknown host {t:?}"));
            }
            if let Invariant::SlowStart(s) = inv
                && (s.window.is_zero() || !(0.0..1.0).contains(&s.slack))
            {
                p.push(format!("invariants[{i}].slow_start: window must be above 0 and slack in [0, 1)"));
            }
            if let Invariant::ClientReuse(r) = inv {
                if !(0.0..=1.0).contains(&r.min) {
                    p.push(format!("invariants[{i}].client_reuse.min: must be 0 to 1"));
                }
                if !self.sim.keep_alive {
                    p.push(format!("invariants[{i}].client_reuse: needs sim.keep_alive: true"));
                }
            }
        }
        for (i, e) in self.timeline.iter().enumerate() {
            let target = match &e.fault {
                Fault::Kill(t) | Fault::Restart(t) => Some(t),
                Fault::Slow(s) => Some(&s.target),
                Fault::Errors(s) => Some(&s.target),
                Fault::Hang(s) => Some(&s.target),
                Fault::Partition(s) => Some(&s.target),
                Fault::Flap(s) => Some(&s.target),
                Fault::Wire(w) => Some(&w.target),
                Fault::Reload(_) | Fault::ClockJump(_) | Fault::Heal(_) => None,
                Fault::Dns(d) => {
                    if d.fail != d.hosts.is_empty() {
                        p.push(format!("timeline[{i}].dns: give hosts, or fail: true"));
                    }
                    for h in &d.hosts {
                        if !hosts.contains(h) {
                            p.push(format!("timeline[{i}].dns.hosts: unknown host {h:?}"));
                        }
                    }
                    None
                }
                Fault::Storm(s) => {
                    if !(s.rate > 0.0 && s.rate <= 5000.0) {
                        p.push(format!("timeline[{i}].storm.rate: must be above 0 and at most 5000 per second"));
                    }
                    None
                }
                Fault::Abort(a) => {
                    if !(a.rate > 0.0 && a.rate <= 2000.0) {
                        p.push(format!("timeline[{i}].abort.rate: must be above 0 and at most 2000 per second"));
                    }
                    None
                }
                Fault::Slowloris(a) | Fault::Flood(a) => {
                    if !(1..=2000).contains(&a.connections) {
                        p.push(format!("timeline[{i}]: connections must be 1 to 2000"));
                    }
                    if a.interval.is_zero() {
                        p.push(format!("timeline[{i}]: interval must be above 0"));
                    }
                    None
                }
            };
            if let Some(t) = target
                && !hosts.contains(t)
            {
                p.push(format!(
                    "timeline[{i}]: unknown host {t:?} (hosts: {})",
                    hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if let Fault::Flap(f) = &e.fault
                && (f.period.is_zero() || f.down >= f.period)
            {
                p.push(format!("timeline[{i}].flap: down must be shorter than period"));
            }
            if e.at > self.sim.duration {
                p.push(format!("timeline[{i}].at: after the end of the run"));
            }
        }
        p
    }
}
