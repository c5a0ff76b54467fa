//! Criterion benchmarks of locci; see `benches/core.rs`. Run with `just bench`.
