//! Upstream groups: their compiled settings, servers, health and server selection.

mod address;
mod health;
mod policy;
mod pool;
mod select;

pub use address::{ServerAddr, valid_host_name};
pub use health::{HealthState, Live, Outlier, Thresholds, Transition, ejection_time};
pub use policy::{Backoff, Budget, CircuitBreaker, Overflow, RetryOn, RetryPolicy, RetryReason};
pub use pool::{
    ActiveCheck, GroupSpec, HashKey, InFlight, MAX_RETRIES, MAX_SERVERS, MAX_WEIGHT, Pool, ServerState, Slot,
};
pub use select::Selector;
