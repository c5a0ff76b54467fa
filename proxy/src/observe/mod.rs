//! Observability: Prometheus metrics, fed from the pipeline's outcomes in one place.

mod metrics;

pub use metrics::{Metrics, NO_LABEL};
