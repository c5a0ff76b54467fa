//! locci-sim: the real locci proxy — the same `build_proxy()`, `ProxyHttp` impl and core — run in a turmoil
//! world where sockets, time and randomness are simulated, under a scripted load and fault timeline, with
//! invariants checked over a canonical trace. Same scenario + seed => same trace hash.

pub mod distribution;
pub mod hosts;
pub mod net;
pub mod oracle;
pub mod plot;
pub mod preflight;
pub mod report;
pub mod shrink;
pub mod trace;
pub use locci_scenario as scenario;
pub mod world;
