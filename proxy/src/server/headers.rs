//! Pingora's request headers seen through the core's `Headers` trait.

use locci_core::request::Headers;
use pingora_http::RequestHeader;

/// A read-only view of a Pingora request header for the core.
pub struct HeaderView<'a>(pub &'a RequestHeader);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
