//! A group's resilience policies as the request path reads them (SPEC §9): when a request goes again,
//! how long it waits first, and how much of the group retries and requests may hold at once.

use std::time::Duration;

use crate::clock::Entropy;
use crate::method::MethodSet;
use crate::request::Body;

/// Why an attempt is retried (the `reason` label of `locci_upstream_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The server could not be reached.
    ConnectFailure,
    /// The server broke the exchange after the request was sent.
    Reset,
    /// The server did not answer within the attempt's timeout.
    Timeout,
    /// The server answered 502, 503 or 504.
    GatewayError,
    /// The server answered another 5xx.
    Status5xx,
    /// The server answered a status listed in `retriable_status`.
    RetriableStatus,
}

impl RetryReason {
    /// Every reason, in the order of the config's `on` list.
    pub const ALL: [RetryReason; 6] = [
        RetryReason::ConnectFailure,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::GatewayError,
        RetryReason::Status5xx,
        RetryReason::RetriableStatus,
    ];

    /// Its name in the config and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::GatewayError => "gateway_error",
            RetryReason::Status5xx => "5xx",
            RetryReason::RetriableStatus => "retriable_status",
        }
    }

    /// The reason named `name` in the config.
    pub fn parse(name: &str) -> Option<RetryReason> {
        RetryReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of retry reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u8);

impl RetryOn {
    /// The set of the given reasons.
    pub fn of(reasons: impl IntoIterator<Item = RetryReason>) -> RetryOn {
        RetryOn(reasons.into_iter().fold(0, |bits, r| bits | r.bit()))
    }

    /// Whether `reason` is in the set.
    pub fn has(self, reason: RetryReason) -> bool {
        self.0 & reason.bit() != 0
    }
}

/// Waiting before a retry: full jitter over an exponentially growing window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The window before the first retry.
    pub base: Duration,
    /// The largest window.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `n` (from 1): uniform in [0, min(max, base x 2^(n-1))].
    pub fn delay(&self, n: u32, entropy: &dyn Entropy) -> Duration {
        let window = self.base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(self.max);
        let micros = window.as_micros() as u64;
        if micros == 0 { Duration::ZERO } else { Duration::from_micros(entropy.next_u64() % (micros + 1)) }
    }
}

/// The retry budget: retries in flight stay within a share of the group's requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The share, in percent, of first attempts in flight.
    pub percent: u32,
    /// Retries allowed whatever the share.
    pub min_concurrent: u32,
}

impl Budget {
    /// Most retries in flight while `first_attempts` first attempts are in flight.
    pub fn allowed(&self, first_attempts: u32) -> u32 {
        (u64::from(first_attempts) * u64::from(self.percent) / 100).max(u64::from(self.min_concurrent)) as u32
    }
}

/// The `retry` policy of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// What is retried.
    pub on: RetryOn,
    /// Statuses retried under `retriable_status`.
    pub retriable_status: Vec<u16>,
    /// Methods that may be sent again after reaching a server.
    pub methods: MethodSet,
    /// Each attempt's read timeout; `None`: the route's.
    pub per_try_timeout: Option<Duration>,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// The retry budget.
    pub budget: Option<Budget>,
    /// Largest request body kept for resending.
    pub max_body_bytes: u64,
}

impl RetryPolicy {
    /// The methods retried when the config lists none: the idempotent ones (RFC 9110 §9.2.2).
    pub const DEFAULT_METHODS: [&'static str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
    /// The reasons retried when the config lists none.
    pub const DEFAULT_ON: [RetryReason; 4] =
        [RetryReason::ConnectFailure, RetryReason::Reset, RetryReason::Timeout, RetryReason::GatewayError];

    /// The reason an answer with `status` would be retried for, if this policy retries it.
    pub fn status_reason(&self, status: u16) -> Option<RetryReason> {
        if self.on.has(RetryReason::RetriableStatus) && self.retriable_status.contains(&status) {
            Some(RetryReason::RetriableStatus)
        } else if self.on.has(RetryReason::GatewayError) && matches!(status, 502..=504) {
            Some(RetryReason::GatewayError)
        } else if self.on.has(RetryReason::Status5xx) && (500..=599).contains(&status) {
            Some(RetryReason::Status5xx)
        } else {
            None
        }
    }

    /// Whether a request body is kept for sending again: none, or a declared length within `max_body_bytes`
    /// (a streaming body of unknown length never is).
    pub fn keeps(&self, body: Body) -> bool {
        match body {
            Body::Empty => true,
            Body::Length(n) => n <= self.max_body_bytes,
            Body::Streaming => false,
        }
    }

    /// Whether a request with `method` may be sent again once it may have reached a server.
    pub fn resends(&self, method: &str) -> bool {
        self.methods != MethodSet::ANY && self.methods.accepts(method)
    }
}

/// The group's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Requests in flight to the group; a first attempt over it is answered 503 at once.
    pub max_requests: Option<u32>,
    /// Retries in flight to the group; a retry over it is not made.
    pub max_retries: Option<u32>,
}

/// What a policy refused (the `kind` label of `locci_upstream_overflow_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `circuit_breaker.max_requests`: the request was answered 503.
    Requests,
    /// `circuit_breaker.max_retries`: the retry was not made.
    Retries,
    /// The retry budget: the retry was not made.
    Budget,
}

impl Overflow {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Requests => "requests",
            Overflow::Retries => "retries",
            Overflow::Budget => "budget",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;

    #[test]
    fn the_budget_is_a_share_of_first_attempts_with_a_floor() {
        let b = Budget { percent: 20, min_concurrent: 3 };
        assert_eq!(b.allowed(0), 3);
        assert_eq!(b.allowed(15), 3);
        assert_eq!(b.allowed(20), 4);
        assert_eq!(b.allowed(1000), 200);
        assert_eq!(Budget { percent: 0, min_concurrent: 0 }.allowed(1000), 0);
    }

    #[test]
    fn backoff_draws_full_jitter_within_a_doubling_window() {
        let b = Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) };
        let entropy = SeededEntropy::new(7);
        for (n, window) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
            let draws: Vec<Duration> = (0..400).map(|_| b.delay(n, &entropy)).collect();
            let top = Duration::from_millis(window);
            assert!(draws.iter().all(|d| *d <= top), "retry {n}: within {window} ms");
            assert!(draws.iter().any(|d| *d > top * 3 / 4), "retry {n}: reaches the top quarter");
            assert!(draws.iter().any(|d| *d < top / 4), "retry {n}: reaches the bottom quarter");
        }
        assert_eq!(Backoff { base: Duration::ZERO, max: Duration::ZERO }.delay(3, &entropy), Duration::ZERO);
    }

    #[test]
    fn a_status_is_retried_for_the_first_reason_that_names_it() {
        let mut p = RetryPolicy {
            attempts: 1,
            on: RetryOn::of([RetryReason::GatewayError, RetryReason::RetriableStatus]),
            retriable_status: vec![503, 409],
            methods: MethodSet::parse(["GET"]).unwrap(),
            per_try_timeout: None,
            backoff: Backoff { base: Duration::ZERO, max: Duration::ZERO },
            budget: None,
            max_body_bytes: 0,
        };
        assert_eq!(p.status_reason(409), Some(RetryReason::RetriableStatus));
        assert_eq!(p.status_reason(503), Some(RetryReason::RetriableStatus));
        assert_eq!(p.status_reason(502), Some(RetryReason::GatewayError));
        assert_eq!(p.status_reason(500), None);
        assert_eq!(p.status_reason(200), None);
        p.on = RetryOn::of([RetryReason::Status5xx]);
        assert_eq!(p.status_reason(500), Some(RetryReason::Status5xx));
        assert_eq!(p.status_reason(409), None);
        assert!(p.resends("GET") && !p.resends("POST"));
        p.max_body_bytes = 10;
        assert!(p.keeps(Body::Empty) && p.keeps(Body::Length(10)));
        assert!(!p.keeps(Body::Length(11)) && !p.keeps(Body::Streaming), "too large, or of unknown length");
    }
}
