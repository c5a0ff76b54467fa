//! The edge (SPEC §10): what a client may send before the proxy refuses it, and the verdict on a request
//! head's framing. The driver (`server/edge.rs`) reads bytes and keeps the deadlines; every decision about
//! them is made here.
//!
//! Framing is judged strictly, because a proxy and its upstream that disagree on where a message ends can be
//! made to read a second, smuggled request (RFC 9112 §6.3, §11.2): both `Content-Length` and
//! `Transfer-Encoding`, more than one `Content-Length` (equal or not), a `Content-Length` that is not a
//! plain number, a `Transfer-Encoding` other than `chunked`, or a missing or repeated `Host` on HTTP/1.1 — all
//! 400, never forwarded.

use std::time::Duration;

use crate::config::ClientConfig;

/// Why the proxy refuses a client's request itself; each is counted in `locci_client_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The request head was not complete within `header_timeout_secs`: 408.
    HeaderTimeout,
    /// No body byte arrived for `body_timeout_secs`: 408.
    BodyTimeout,
    /// The head is larger than `max_header_bytes`, or has too many headers: 431.
    HeaderTooLarge,
    /// The body is larger than `max_body_bytes`: 413.
    BodyTooLarge,
    /// The request is malformed or ambiguous: 400 with this text.
    Malformed(&'static str),
    /// `CONNECT`: locci is not a forward proxy (405).
    Connect,
    /// Over `max_connections`: closed at accept, no answer.
    MaxConnections,
    /// A new connection sent nothing within `header_timeout_secs`: closed without an answer (as nginx does),
    /// counted as `header_timeout` so a flood of idle connections shows.
    Silent,
}

impl ClientError {
    /// Every reason label, for metrics that start at zero.
    pub const REASONS: [&'static str; 6] =
        ["header_timeout", "body_timeout", "header_too_large", "body_too_large", "bad_request", "max_connections"];

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            ClientError::HeaderTimeout | ClientError::Silent => "header_timeout",
            ClientError::BodyTimeout => "body_timeout",
            ClientError::HeaderTooLarge => "header_too_large",
            ClientError::BodyTooLarge => "body_too_large",
            ClientError::Malformed(_) | ClientError::Connect => "bad_request",
            ClientError::MaxConnections => "max_connections",
        }
    }

    /// The status and the JSON body's error text; `None` when the connection is closed without an answer.
    pub fn status(self) -> Option<(u16, &'static str)> {
        match self {
            ClientError::HeaderTimeout => Some((408, "request header timeout")),
            ClientError::BodyTimeout => Some((408, "request body timeout")),
            ClientError::HeaderTooLarge => Some((431, "request header too large")),
            ClientError::BodyTooLarge => Some((413, "request body too large")),
            ClientError::Malformed(text) => Some((400, text)),
            ClientError::Connect => Some((405, "CONNECT is not proxied")),
            ClientError::MaxConnections | ClientError::Silent => None,
        }
    }
}

/// Most headers a request may have (Pingora's own parser stops at the same number).
pub const MAX_HEADERS: usize = 256;
/// The largest `max_header_bytes` (Pingora's own ceiling for a request head).
pub const MAX_HEADER_BYTES: usize = 1_048_575;

/// `server.client`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From a request's first byte (or the connection's accept) to the end of its head.
    pub header_timeout: Duration,
    /// Longest wait for the next body byte.
    pub body_timeout: Duration,
    /// Longest idle time between requests on a kept-alive connection; zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// Request line and headers.
    pub max_header_bytes: usize,
    /// Default body limit (routes may set their own); `None` = no limit.
    pub max_body_bytes: Option<u64>,
    /// Client connections at once.
    pub max_connections: usize,
}

impl ClientLimits {
    /// Checks and compiles the section; problems are reported at `server.client.*`.
    pub fn compile(c: &ClientConfig, problem: &mut dyn FnMut(String, String)) -> ClientLimits {
        let mut at_least = |name: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                problem(format!("server.client.{name}"), format!("must be {min} to {max}"));
            }
        };
        at_least("header_timeout_secs", c.header_timeout_secs, 1, 3600);
        at_least("body_timeout_secs", c.body_timeout_secs, 1, 3600);
        at_least("keepalive_timeout_secs", c.keepalive_timeout_secs, 0, 86_400);
        at_least("max_header_bytes", c.max_header_bytes as u64, 1024, MAX_HEADER_BYTES as u64);
        at_least("max_connections", c.max_connections as u64, 1, 1_000_000);
        ClientLimits {
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            body_timeout: Duration::from_secs(c.body_timeout_secs),
            keepalive_timeout: Duration::from_secs(c.keepalive_timeout_secs),
            max_header_bytes: c.max_header_bytes,
            max_body_bytes: (c.max_body_bytes > 0).then_some(c.max_body_bytes),
            max_connections: c.max_connections,
        }
    }
}

/// The verdict on a parsed request head's method.
pub fn check_method(method: &str) -> Result<(), ClientError> {
    if method.eq_ignore_ascii_case("CONNECT") { Err(ClientError::Connect) } else { Ok(()) }
}

impl ClientLimits {
    /// The read timeouts of a request: the client's (between body bytes) and, for an upgrade, the upstream's
    /// too, since an upgraded tunnel may idle for the keep-alive time on both sides (`None`: the route's own).
    pub fn read_timeouts(&self, upgrade: bool) -> (Duration, Option<Duration>) {
        if upgrade {
            (self.keepalive_timeout, Some(self.keepalive_timeout.max(Duration::from_secs(1))))
        } else {
            (self.body_timeout, None)
        }
    }
}

/// The framing verdict on a parsed request head (`version` 0 for HTTP/1.0, 1 for HTTP/1.1; `target` the
/// request target as sent).
pub fn check_framing<'h>(
    version: u8,
    target: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
) -> Result<(), ClientError> {
    let (mut lengths, mut encodings, mut hosts) = (0, 0, 0);
    let mut host: &[u8] = &[];
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(ClientError::Malformed("invalid content-length"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ClientError::Malformed("unsupported transfer-encoding"));
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = value;
        }
    }
    // An absolute-form target names the authority too; one that disagrees with Host is ambiguous.
    let authority = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map(|rest| &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())]);
    match () {
        _ if lengths > 1 => Err(ClientError::Malformed("more than one content-length")),
        _ if encodings > 1 => Err(ClientError::Malformed("more than one transfer-encoding")),
        _ if lengths > 0 && encodings > 0 => Err(ClientError::Malformed("both content-length and transfer-encoding")),
        _ if encodings > 0 && version == 0 => Err(ClientError::Malformed("transfer-encoding on HTTP/1.0")),
        _ if hosts > 1 => Err(ClientError::Malformed("more than one host")),
        _ if authority.is_some_and(|a| hosts == 1 && !a.as_bytes().eq_ignore_ascii_case(host.trim_ascii())) => {
            Err(ClientError::Malformed("host differs from the request target"))
        }
        _ if hosts == 0 && version >= 1 => Err(ClientError::Malformed("missing host")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(headers: &[(&str, &str)]) -> Result<(), ClientError> {
        check_framing(1, "/", headers.iter().map(|(k, v)| (*k, v.as_bytes())))
    }

    #[test]
    fn ambiguous_framing_is_refused_and_plain_framing_passes() {
        let bad = |text| Err(ClientError::Malformed(text));
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), ClientError>);
        let cases: &[Case<'_>] = &[
            (&[("Host", "a")], Ok(())),
            (&[("Host", "a"), ("Content-Length", "10")], Ok(())),
            (&[("Host", "a"), ("Transfer-Encoding", " Chunked ")], Ok(())),
            (
                &[("Host", "a"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                bad("both content-length and transfer-encoding"),
            ),
            (&[("Host", "a"), ("Content-Length", "5"), ("content-length", "6")], bad("more than one content-length")),
            (&[("Host", "a"), ("Content-Length", "5"), ("content-length", "5")], bad("more than one content-length")),
            (&[("Host", "a"), ("Content-Length", "5, 5")], bad("invalid content-length")),
            (&[("Host", "a"), ("Content-Length", "+5")], bad("invalid content-length")),
            (&[("Host", "a"), ("Content-Length", "")], bad("invalid content-length")),
            (&[("Host", "a"), ("Content-Length", "99999999999999999999")], bad("invalid content-length")),
            (&[("Host", "a"), ("Transfer-Encoding", "gzip, chunked")], bad("unsupported transfer-encoding")),
            (&[("Host", "a"), ("Transfer-Encoding", "xchunked")], bad("unsupported transfer-encoding")),
            (
                &[("Host", "a"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                bad("more than one transfer-encoding"),
            ),
            (&[("Host", "a"), ("host", "b")], bad("more than one host")),
            (&[], bad("missing host")),
        ];
        for (headers, want) in cases {
            assert_eq!(verdict(headers), *want, "{headers:?}");
        }
        assert_eq!(check_framing(0, "/", std::iter::empty()), Ok(()), "HTTP/1.0 needs no Host");
        assert_eq!(
            check_framing(0, "/", [("Transfer-Encoding", &b"chunked"[..])]),
            Err(ClientError::Malformed("transfer-encoding on HTTP/1.0"))
        );
        let host = |target, host: &'static str| check_framing(1, target, [("Host", host.as_bytes())]);
        assert_eq!(host("http://a.test/x", "A.test"), Ok(()));
        assert_eq!(host("http://a.test:8080?q", "a.test:8080"), Ok(()));
        assert_eq!(
            host("http://b.test/x", "a.test"),
            Err(ClientError::Malformed("host differs from the request target"))
        );
    }

    #[test]
    fn every_rejection_has_its_status_and_reason() {
        let statuses: Vec<_> = [
            ClientError::HeaderTimeout,
            ClientError::BodyTimeout,
            ClientError::HeaderTooLarge,
            ClientError::BodyTooLarge,
            ClientError::Malformed("x"),
            ClientError::MaxConnections,
        ]
        .iter()
        .map(|e| (e.reason(), e.status().map(|(s, _)| s)))
        .collect();
        let reasons: Vec<_> = statuses.iter().map(|(r, _)| *r).collect();
        assert_eq!(reasons, ClientError::REASONS);
        let codes: Vec<_> = statuses.iter().map(|(_, s)| *s).collect();
        assert_eq!(codes, [Some(408), Some(408), Some(431), Some(413), Some(400), None]);
    }

    #[test]
    fn a_silent_connection_is_closed_unanswered_and_counted_as_a_header_timeout() {
        assert_eq!((ClientError::Silent.reason(), ClientError::Silent.status()), ("header_timeout", None));
    }

    #[test]
    fn an_upgraded_tunnel_idles_for_the_keepalive_time_on_both_sides() {
        let limits = ClientLimits::compile(&ClientConfig::default(), &mut |p, m| panic!("{p}: {m}"));
        assert_eq!(limits.read_timeouts(false), (Duration::from_secs(30), None));
        assert_eq!(limits.read_timeouts(true), (Duration::from_secs(60), Some(Duration::from_secs(60))));
    }

    #[test]
    fn connect_is_refused_with_405() {
        assert_eq!(check_method("CONNECT"), Err(ClientError::Connect));
        assert_eq!(ClientError::Connect.status(), Some((405, "CONNECT is not proxied")));
        assert_eq!(check_method("GET"), Ok(()));
    }

    #[test]
    fn limits_out_of_range_are_named_by_their_path() {
        let c = ClientConfig {
            header_timeout_secs: 0,
            max_header_bytes: 10,
            max_connections: 0,
            ..ClientConfig::default()
        };
        let mut problems = Vec::new();
        ClientLimits::compile(&c, &mut |p, _| problems.push(p));
        assert_eq!(
            problems,
            ["server.client.header_timeout_secs", "server.client.max_header_bytes", "server.client.max_connections"]
        );
        let limits =
            ClientLimits::compile(&ClientConfig { max_body_bytes: 0, ..ClientConfig::default() }, &mut |p, m| {
                panic!("{p}: {m}")
            });
        assert_eq!(limits.max_body_bytes, None, "0 means no limit, as nginx's client_max_body_size 0");
    }
}
