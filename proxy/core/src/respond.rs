//! The one place that turns a failure into a status code, headers and a JSON body.

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No route matches the path.
    NoRoute,
    /// Routes match the path but not the method; the `Allow` value.
    MethodNotAllowed(String),
    /// Every server of the group is down.
    NoHealthyUpstream,
    /// Connecting failed on every attempt.
    UpstreamConnect,
    /// The upstream did not answer within the read timeout.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, bad response).
    UpstreamBroken,
    /// The client sent something the proxy refuses at the edge (SPEC §10).
    Client(crate::edge::ClientError),
    /// A bug or an unexpected state inside the proxy.
    Internal,
    /// The rate limit is exhausted: 429, with the `RateLimit-*` and `Retry-After` headers.
    RateLimited(Vec<(&'static str, String)>),
    /// Authentication failed: 401, with its `WWW-Authenticate` challenge (and earlier steps' headers).
    Unauthorized(Vec<(&'static str, String)>),
    /// A CORS preflight from an origin or for a method that is not allowed: 403.
    CorsRejected,
    /// A CORS preflight answered by the proxy: 204 with its `Access-Control-*` headers (not an error).
    Preflight(Vec<(&'static str, String)>),
    /// The group's circuit breaker is full: 503 at once, nothing sent upstream.
    Overloaded(crate::upstream::Overflow),
    /// The client went away before its answer: nothing is written (nginx logs such a request as 499). Not a
    /// refusal of the client and not the server's doing.
    ClientGone,
}

/// A response the proxy makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The short error text of the JSON body; `None` for a body-less reply (a CORS preflight).
    pub error: Option<&'static str>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Failure {
    /// The reply for this failure.
    pub fn reply(&self) -> Reply {
        let (status, error) = match self {
            Failure::NoRoute => (404, "no route"),
            Failure::MethodNotAllowed(allow) => {
                return Reply {
                    status: 405,
                    error: Some("method not allowed"),
                    headers: vec![("allow", allow.clone())],
                };
            }
            Failure::NoHealthyUpstream => (503, "no healthy upstream"),
            Failure::UpstreamConnect => (502, "upstream unavailable"),
            Failure::UpstreamTimeout => (504, "upstream timeout"),
            Failure::UpstreamBroken => (502, "bad upstream response"),
            Failure::Client(e) => e.status().unwrap_or((400, "bad request")),
            Failure::Internal => (500, "internal error"),
            Failure::RateLimited(headers) => {
                return Reply { status: 429, error: Some("rate limit exceeded"), headers: headers.clone() };
            }
            Failure::Unauthorized(headers) => {
                return Reply { status: 401, error: Some("unauthorized"), headers: headers.clone() };
            }
            Failure::CorsRejected => (403, "cors preflight rejected"),
            Failure::Overloaded(_) => (503, "upstream overloaded"),
            Failure::ClientGone => (499, "client closed request"),
            Failure::Preflight(headers) => return Reply { status: 204, error: None, headers: headers.clone() },
        };
        Reply { status, error: Some(error), headers: Vec::new() }
    }

    /// Whether it counts as an error (`locci_errors_total`); an answered preflight does not.
    pub fn is_error(&self) -> bool {
        !matches!(self, Failure::Preflight(_))
    }

    /// A small fixed name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NoRoute => "no_route",
            Failure::MethodNotAllowed(_) => "method_not_allowed",
            Failure::NoHealthyUpstream => "no_healthy_upstream",
            Failure::UpstreamConnect => "upstream_connect",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::UpstreamBroken => "upstream_broken",
            Failure::Client(e) => e.reason(),
            Failure::Internal => "internal",
            Failure::RateLimited(_) => "rate_limited",
            Failure::Unauthorized(_) => "unauthorized",
            Failure::CorsRejected => "cors_rejected",
            Failure::Preflight(_) => "preflight",
            Failure::Overloaded(_) => "upstream_overloaded",
            Failure::ClientGone => "client_closed",
        }
    }
}

impl Reply {
    /// The JSON body `{"error": ..., "request_id": ...}`, or empty when the reply has no error text.
    pub fn body(&self, request_id: &str) -> String {
        match self.error {
            Some(error) => serde_json::json!({ "error": error, "request_id": request_id }).to_string(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status() {
        let cases = [
            (Failure::NoRoute, 404),
            (Failure::MethodNotAllowed("GET".into()), 405),
            (Failure::NoHealthyUpstream, 503),
            (Failure::UpstreamConnect, 502),
            (Failure::UpstreamTimeout, 504),
            (Failure::UpstreamBroken, 502),
            (Failure::Client(crate::edge::ClientError::Malformed("x")), 400),
            (Failure::Client(crate::edge::ClientError::BodyTooLarge), 413),
            (Failure::Internal, 500),
            (Failure::RateLimited(Vec::new()), 429),
            (Failure::Unauthorized(Vec::new()), 401),
            (Failure::CorsRejected, 403),
            (Failure::Preflight(Vec::new()), 204),
            (Failure::Overloaded(crate::upstream::Overflow::Requests), 503),
            // Never written (the client is gone); the status is the one nginx logs for it.
            (Failure::ClientGone, 499),
        ];
        for (failure, status) in cases {
            assert_eq!(failure.reply().status, status, "{failure:?}");
        }
    }

    #[test]
    fn a_client_that_went_away_has_its_own_kind() {
        assert_eq!(Failure::ClientGone.kind(), "client_closed");
        assert!(Failure::ClientGone.is_error());
    }

    #[test]
    fn body_is_json_with_the_request_id_and_405_carries_allow() {
        let reply = Failure::MethodNotAllowed("GET, POST".into()).reply();
        assert_eq!(reply.headers, vec![("allow", "GET, POST".to_string())]);
        let body: serde_json::Value = serde_json::from_str(&reply.body("abc")).unwrap();
        assert_eq!(body["error"], "method not allowed");
        assert_eq!(body["request_id"], "abc");
    }
}
