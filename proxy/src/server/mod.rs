//! The Pingora adapter: the ProxyHttp impl, the health driver, the JWKS fetcher, and the network seams.

pub mod discovery;
pub mod edge;
pub mod gateway;
mod headers;
pub mod health;
pub mod jwks;
pub mod rate_store;
pub mod signals;
pub mod transport;

pub use headers::HeaderView;
