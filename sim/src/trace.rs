//! The canonical event trace of a run: everything the oracles judge, each event stamped with simulated
//! time only. Its hash identifies a run: same scenario + seed => same hash, on any machine.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;

/// One thing that happened. `t_us` is simulated microseconds since the start; `id` is the request id the
/// client put in `x-sim-id`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The client sent request `id` (`expect`: the statuses its class may get; `upstream_path`: where it must
    /// arrive, when the class says).
    Issued {
        t_us: u64,
        id: u64,
        method: String,
        path: String,
        key: Option<String>,
        expect: Vec<u16>,
        upstream_path: Option<String>,
        /// The `traceparent` and `tracestate` the client sent, when its class has them.
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tracestate: Option<String>,
    },
    /// A keep-alive client opened a new connection to the proxy for request `id` (none idle); requests sent
    /// on a connection already open have no such event. Only with `sim.keep_alive`.
    Connected { t_us: u64, id: u64 },
    /// Request `id` got an HTTP response.
    Answered { t_us: u64, id: u64, status: u16, latency_us: u64 },
    /// Request `id` got no response: client timeout or broken connection.
    Failed { t_us: u64, id: u64, kind: String, latency_us: u64 },
    /// Request `id` got a response head (`status`) but the connection closed before the body it declared: no
    /// answer for the client, though the proxy counts the head's status.
    Truncated { t_us: u64, id: u64, status: u16, latency_us: u64 },
    /// Upstream host `host` received request `id` at `path`, with the trace context the proxy sent.
    Received {
        t_us: u64,
        host: String,
        id: u64,
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tracestate: Option<String>,
    },
    /// Upstream host `host` finished with request `id`: it answered `status` (503 at once when shed).
    Served { t_us: u64, host: String, id: u64, status: u16 },
    /// At the end of the run, what the proxy's own metrics counted: answers by status
    /// (`locci_requests_total`), retries (`locci_upstream_retries_total`) and clients refused at the edge
    /// (`locci_client_rejected_total`).
    Counted { t_us: u64, statuses: std::collections::BTreeMap<u16, u64>, retries: u64, rejected: u64 },
    /// The proxy changed a server's state.
    Health { t_us: u64, host: String, up: bool },
    /// A fault was applied.
    Fault { t_us: u64, what: String },
    /// The timeline's reload event `step` was applied, or refused with `error`; `generation` is the one the
    /// proxy has in force afterwards.
    Reload { t_us: u64, step: usize, generation: u64, error: Option<String> },
    /// An attacker connection ended: closed by the proxy (`status` it answered, if any) after `lasted_us`, or
    /// still open when the attack stopped (`cut_off` false).
    Attacker { t_us: u64, kind: String, lasted_us: u64, cut_off: bool, status: Option<u16> },
}

impl Event {
    /// When it happened, in simulated microseconds.
    pub fn t_us(&self) -> u64 {
        match self {
            Event::Issued { t_us, .. }
            | Event::Connected { t_us, .. }
            | Event::Answered { t_us, .. }
            | Event::Failed { t_us, .. }
            | Event::Truncated { t_us, .. }
            | Event::Received { t_us, .. }
            | Event::Served { t_us, .. }
            | Event::Counted { t_us, .. }
            | Event::Health { t_us, .. }
            | Event::Fault { t_us, .. }
            | Event::Reload { t_us, .. }
            | Event::Attacker { t_us, .. } => *t_us,
        }
    }
}

/// The trace, shared by every simulated host (turmoil runs them all on one thread).
#[derive(Debug, Default, Clone)]
pub struct Trace(Rc<RefCell<Vec<Event>>>);

impl Trace {
    /// Records an event.
    pub fn push(&self, event: Event) {
        self.0.borrow_mut().push(event);
    }

    /// The events, in the order they happened.
    pub fn events(&self) -> Vec<Event> {
        self.0.borrow().clone()
    }
}

/// Simulated microseconds.
pub fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// The current simulated time inside a host.
pub fn now_us() -> u64 {
    turmoil::sim_elapsed().map_or(0, us)
}

/// FNV-1a over the JSON lines of the trace: stable across runs, machines and Rust versions.
pub fn hash(events: &[Event]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for e in events {
        for b in line(e).bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// One event as a JSON line.
pub fn line(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// The whole trace as JSON lines.
pub fn jsonl(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let _ = writeln!(out, "{}", line(e));
    }
    out
}
