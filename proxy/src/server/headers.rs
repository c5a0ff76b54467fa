//! Pingora's request headers seen through the core's `Headers` trait.

use std::net::IpAddr;

use locci_core::request::{Headers, RequestInfo};
use pingora_http::RequestHeader;

/// A read-only view of a Pingora request header for the core.
pub struct HeaderView<'a>(pub &'a RequestHeader);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HeaderView<'_> {
    /// The core's view of the request, with the client IP and the normalised path already worked out.
    pub fn request<'a>(&'a self, client_ip: IpAddr, path: &'a str) -> RequestInfo<'a> {
        let header = self.0;
        RequestInfo { method: header.method.as_str(), path, query: header.uri.query(), client_ip, headers: self }
    }
}
