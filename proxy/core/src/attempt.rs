//! One request's attempts at its upstream group: which server comes next, whether a failed attempt may be
//! retried on another server, what the client is told when none is left, and what live traffic says about
//! a server's health. The driver (`server/gateway.rs`) maps its transport's errors onto [`UpstreamError`] and
//! calls in; it decides nothing of this itself.
//!
//! Without a `retry` policy (SPEC §3): only a failed *connect* is retried, on a server this request has not
//! tried, up to the group's `retries`; a request that may have reached a server is never sent again (it may
//! not be idempotent). No server to try at all is 503; every one tried failed is 502; a read timeout is 504.
//!
//! With one (SPEC §9): what `on` names is retried, up to `attempts` times, on a server not tried while one is
//! left; an attempt that may have reached the server goes again only for a method the policy lists whose
//! body was kept whole; each retry needs a slot under `circuit_breaker.max_retries` and the budget, and a
//! refused retry leaves the client the last attempt's answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Entropy;
use crate::request::RequestInfo;
use crate::respond::Failure;
use crate::upstream::{Live, Overflow, Pool, RetryPolicy, RetryReason, Slot, Transition};

/// What went wrong with one attempt, in the core's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The server could not be reached: refused, unreachable, TLS handshake or certificate failure.
    Connect,
    /// The connect did not finish within the connect timeout.
    ConnectTimeout,
    /// The server's name did not resolve (the server was never reached, so its health is not judged).
    Unresolved,
    /// The server did not answer within the read (or write) timeout.
    Timeout,
    /// The server broke the exchange: reset, closed early, or an unreadable response.
    Broken,
}

impl UpstreamError {
    /// The failure the client is told about.
    pub fn failure(self) -> Failure {
        match self {
            UpstreamError::Connect | UpstreamError::ConnectTimeout | UpstreamError::Unresolved => {
                Failure::UpstreamConnect
            }
            UpstreamError::Timeout => Failure::UpstreamTimeout,
            UpstreamError::Broken => Failure::UpstreamBroken,
        }
    }

    /// Whether the request certainly never reached the server, so another server may be tried.
    pub fn before_sending(self) -> bool {
        matches!(self, UpstreamError::Connect | UpstreamError::ConnectTimeout | UpstreamError::Unresolved)
    }

    /// Whether it says something about the server's health (outlier detection counts it).
    fn counts_against_server(self) -> bool {
        !matches!(self, UpstreamError::Unresolved)
    }

    /// The `retry.on` reason that covers it.
    pub fn reason(self) -> RetryReason {
        match self {
            UpstreamError::Connect | UpstreamError::ConnectTimeout | UpstreamError::Unresolved => {
                RetryReason::ConnectFailure
            }
            UpstreamError::Timeout => RetryReason::Timeout,
            UpstreamError::Broken => RetryReason::Reset,
        }
    }
}

/// The facts about a request that say whether it may be sent again once it may have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resend<'a> {
    /// Its method.
    pub method: &'a str,
    /// The HTTP layer still holds all of the body it has read (its retry buffer did not overflow).
    pub body_whole: bool,
    /// The route's timeout still has time left.
    pub time_left: bool,
    /// The client already has a response head (the failure came mid-body): nothing can go in its place.
    pub head_sent: bool,
}

/// What the core says after an attempt that did not give the client its answer, or whose answer may be
/// retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfterFailure {
    /// Another attempt follows, for this reason.
    pub retry: Option<RetryReason>,
    /// A retry was due but this limit refused it (counted; the client gets the last answer).
    pub refused: Option<Overflow>,
    /// The server's state changed because of it (outlier detection).
    pub transition: Option<Transition>,
}

impl AfterFailure {
    /// Whether another attempt follows.
    pub fn retries(&self) -> bool {
        self.retry.is_some()
    }
}

/// The attempts of one request.
#[derive(Debug)]
pub struct Attempts {
    tried: Vec<usize>,
    failed: u32,
    retried: u32,
    resent_stale: bool,
    /// Its body may be sent again under the group's retry policy ([`RetryPolicy::keeps`]).
    body_kept: bool,
    /// Its place in the group's circuit breaker, held until it ends.
    admission: Option<Slot>,
    slot: Option<Slot>,
}

impl Default for Attempts {
    fn default() -> Attempts {
        Attempts::new()
    }
}

impl Attempts {
    /// No attempt made yet, for a request without a body.
    pub fn new() -> Attempts {
        Attempts {
            tried: Vec::new(),
            failed: 0,
            retried: 0,
            resent_stale: false,
            body_kept: true,
            admission: None,
            slot: None,
        }
    }

    /// The attempts of `req` at `pool` and its first server: the server is chosen as every later one is (503
    /// when none is up), then the circuit breaker admits the request (503 "upstream overloaded" when full).
    pub fn start(
        pool: &Arc<Pool>,
        req: &RequestInfo<'_>,
        entropy: &dyn Entropy,
        now: Instant,
    ) -> Result<(Attempts, usize), Failure> {
        let mut attempts = Attempts::new();
        let server = attempts.next(pool, req, entropy, now)?;
        attempts.admission = pool.admit().map_err(Failure::Overloaded)?;
        attempts.body_kept = pool.spec().retry.as_ref().is_some_and(|policy| policy.keeps(req.body()));
        Ok((attempts, server))
    }

    /// Attempts that failed so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Retries made under the `retry` policy so far.
    pub fn retried(&self) -> u32 {
        self.retried
    }

    /// The server for the next attempt: one that is up and not tried by this request (under a `retry` policy,
    /// one already tried when none is left). `Err` is what the client is told when there is none: 503 when
    /// nothing was tried, 502 when everything tried failed.
    pub fn next(
        &self,
        pool: &Pool,
        req: &RequestInfo<'_>,
        entropy: &dyn Entropy,
        now: Instant,
    ) -> Result<usize, Failure> {
        let again = || pool.spec().retry.as_ref().and_then(|_| pool.select(req, &[], entropy, now));
        pool.select(req, &self.tried, entropy, now)
            .or_else(|| if self.tried.is_empty() { None } else { again() })
            .ok_or(if self.tried.is_empty() { Failure::NoHealthyUpstream } else { Failure::UpstreamConnect })
    }

    /// Records that the attempt on `server` failed with `error`; outlier detection hears of it, and the
    /// answer says whether another attempt follows.
    pub fn fail(
        &mut self,
        pool: &Arc<Pool>,
        server: usize,
        error: UpstreamError,
        resend: Resend<'_>,
        now: Instant,
    ) -> AfterFailure {
        self.tried.push(server);
        self.failed += 1;
        let transition =
            if error.counts_against_server() { pool.report(server, Live::GatewayFailure, now) } else { None };
        let mut after = match &pool.spec().retry {
            // Checked first so that a retry slot is never taken for an attempt that cannot happen.
            _ if resend.head_sent => AfterFailure::default(),
            None => AfterFailure {
                retry: (error.before_sending() && pool.may_retry(self.failed)).then_some(RetryReason::ConnectFailure),
                ..AfterFailure::default()
            },
            Some(policy) => {
                let reached = !error.before_sending();
                self.retry(pool, policy, error.reason(), reached, resend)
            }
        };
        after.transition = transition;
        after
    }

    /// The server answered `status`: whether the answer is retried instead of given to the client. When it
    /// is, the attempt ends here and outlier detection hears of it; when not, it hears of it when the
    /// exchange ends.
    pub fn answered(
        &mut self,
        pool: &Arc<Pool>,
        server: usize,
        status: u16,
        resend: Resend<'_>,
        now: Instant,
    ) -> AfterFailure {
        let Some(policy) = &pool.spec().retry else {
            return AfterFailure::default();
        };
        let Some(reason) = policy.status_reason(status) else {
            return AfterFailure::default();
        };
        let after = self.retry(pool, policy, reason, true, resend);
        if !after.retries() {
            return after;
        }
        self.tried.push(server);
        self.failed += 1;
        AfterFailure { transition: pool.report(server, Live::of(status, false), now), ..after }
    }

    /// The wait before the next attempt: the policy's backoff for this retry; none without a policy.
    pub fn backoff(&self, pool: &Pool, entropy: &dyn Entropy) -> Duration {
        match &pool.spec().retry {
            Some(policy) if self.retried > 0 => policy.backoff.delay(self.retried, entropy),
            _ => Duration::ZERO,
        }
    }

    /// The read timeout of the next attempt: without a policy the route's `timeout`, each attempt; under one,
    /// its per-try timeout within what is left of the route's after `elapsed`, and `None` once that is spent
    /// (the client is told 504).
    pub fn read_timeout(&self, pool: &Pool, route_timeout: Duration, elapsed: Duration) -> Option<Duration> {
        let Some(policy) = &pool.spec().retry else {
            return Some(route_timeout);
        };
        let left = route_timeout.saturating_sub(elapsed);
        Some(policy.per_try_timeout.unwrap_or(route_timeout).min(left)).filter(|t| !t.is_zero())
    }

    fn retry(
        &mut self,
        pool: &Arc<Pool>,
        policy: &RetryPolicy,
        reason: RetryReason,
        reached: bool,
        resend: Resend<'_>,
    ) -> AfterFailure {
        let allowed = policy.on.has(reason)
            && self.retried < policy.attempts
            && resend.time_left
            && (!reached || (policy.resends(resend.method) && self.body_kept && resend.body_whole));
        if !allowed {
            return AfterFailure::default();
        }
        if self.slot.is_none() {
            match pool.begin_retry() {
                Ok(slot) => self.slot = Some(slot),
                Err(overflow) => return AfterFailure { refused: Some(overflow), ..AfterFailure::default() },
            }
        }
        self.retried += 1;
        AfterFailure { retry: Some(reason), ..AfterFailure::default() }
    }
}

impl Attempts {
    /// An idempotent request failed on a pooled connection before any answer, in the way the HTTP layer marks
    /// safe to resend (the server had closed the idle connection as it was reused): it may go again, once, to
    /// any server (the same one included), and it says nothing about the server's health.
    pub fn stale_connection(&mut self) -> bool {
        !std::mem::replace(&mut self.resent_stale, true)
    }

    /// An attempt on `server` failed after the request was sent. `stale` is the HTTP layer's word that the
    /// pooled connection had been closed before any answer; only an `idempotent` request (whose body, if any,
    /// is still whole) is then resent, as [`Attempts::stale_connection`] says; anything else is [`Attempts::fail`].
    pub fn fail_sent(
        &mut self,
        pool: &Arc<Pool>,
        server: usize,
        error: UpstreamError,
        (stale, idempotent): (bool, bool),
        resend: Resend<'_>,
        now: Instant,
    ) -> AfterFailure {
        if stale && idempotent && !resend.head_sent && self.stale_connection() {
            return AfterFailure { retry: Some(RetryReason::Reset), ..AfterFailure::default() };
        }
        self.fail(pool, server, error, resend, now)
    }
}

#[cfg(test)]
mod tests;
