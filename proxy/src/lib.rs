//! locci-proxy: the load balancer and API gateway on Pingora.
//!
//! [`app::build_proxy`] is the one constructor of the proxy, used by the binary and by the simulator; the
//! decisions it applies live in `locci-core`. `server/` adapts Pingora to the core, `config_file` reads the
//! config from disk, `demo` has the built-in demo backends.
#![forbid(unsafe_code)]

pub mod app;
pub mod config_file;
pub mod control;
pub mod demo;
pub mod explain;
pub mod gate;
pub mod logging;
pub mod observe;
pub mod server;

pub use app::{ConfigSource, Env, Proxy, Shared, build_proxy};
