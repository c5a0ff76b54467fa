//! Observability: Prometheus metrics, fed from the pipeline's outcomes in one place, and request spans.

mod metrics;
pub mod spans;

pub use metrics::{JwksCounts, Metrics, NO_LABEL, SpanCounts};
