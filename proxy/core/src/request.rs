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

/// Headers as a list of name/value pairs (tests, benches, the simulator).
#[derive(Debug, Clone, Copy)]
pub struct HeaderPairs<'a>(pub &'a [(&'a str, &'a str)]);

impl Headers for HeaderPairs<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}
