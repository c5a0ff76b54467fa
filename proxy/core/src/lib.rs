//! locci-core: the pure, deterministic brain of locci.
//!
//! Configuration, routing, upstream selection, health, middlewares and error replies live here, with no
//! I/O: time comes from [`clock::Clock`], randomness from [`clock::Entropy`]. The Pingora adapter in
//! `locci-proxy` translates requests into [`request::RequestInfo`] and calls in; the simulator drives the
//! very same code.
#![forbid(unsafe_code)]

pub mod attempt;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod edge;
pub mod explain;
pub mod forwarding;
pub mod method;
pub mod middleware;
pub mod path;
pub mod profile;
pub mod request;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod trace;
pub mod upstream;

pub use config::{Config, ConfigError, ConfigErrors, ValidConfig};
pub use runtime::{Plan, Runtime};
