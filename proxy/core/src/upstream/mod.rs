//! Upstream groups: their compiled settings, servers, health and server selection.

mod address;
mod health;
mod pool;
mod select;

pub use address::ServerAddr;
pub use health::{HealthState, Passive, Thresholds, Transition};
pub use pool::{ActiveCheck, GroupSpec, HashKey, InFlight, MAX_RETRIES, MAX_SERVERS, MAX_WEIGHT, Pool, ServerState};
pub use select::Selector;
