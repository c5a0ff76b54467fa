//! The core's view of a request: what decisions may look at, independent of Pingora's types.

use std::net::IpAddr;

/// Read access to request headers.
pub trait Headers: Sync {
    /// The first value of a header (case-insensitive name), if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
}

/// What the core may know about a request.
pub struct RequestInfo<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The client IP (see [`crate::forwarding::client_ip`]).
    pub client_ip: IpAddr,
    /// The headers.
    pub headers: &'a dyn Headers,
}

/// What a request's head says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// A declared `Content-Length`.
    Length(u64),
    /// Chunked, or a length that is not a number (the edge refuses those first): known only as it streams.
    Streaming,
}

impl RequestInfo<'_> {
    /// What the head says of the body.
    pub fn body(&self) -> Body {
        match (self.headers.get("transfer-encoding"), self.headers.get("content-length")) {
            (Some(_), _) => Body::Streaming,
            (None, Some(length)) => length.trim().parse().map_or(Body::Streaming, Body::Length),
            (None, None) => Body::Empty,
        }
    }
}

/// Headers as a list of name/value pairs (tests, benches, the simulator).
#[derive(Debug, Clone, Copy)]
pub struct HeaderPairs<'a>(pub &'a [(&'a str, &'a str)]);

impl Headers for HeaderPairs<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}
