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

/// Header names the gateway reads or writes on every request, parsed once: a name given as `&str` is parsed
/// and hashed on every lookup (`just bench-instructions` counted about 300 instructions a lookup).
pub mod names {
    use std::sync::LazyLock;

    use http::HeaderName;
    use locci_core::forwarding;

    /// `x-forwarded-for`.
    pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    /// `x-request-id`.
    pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `traceparent`.
    pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// `tracestate`.
    pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    /// The hop-by-hop headers the proxy removes itself ([`forwarding::STRIPPED`]).
    pub static STRIPPED: LazyLock<[HeaderName; forwarding::STRIPPED.len()]> =
        LazyLock::new(|| forwarding::STRIPPED.map(HeaderName::from_static));
}
