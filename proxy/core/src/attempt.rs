//! One request's attempts at its upstream group: which server comes next, whether a failed attempt may be
//! retried on another server, what the client is told when none is left, and what live traffic says about
//! a server's health. The driver (`server/gateway.rs`) maps its transport's errors onto [`UpstreamError`] and
//! calls in; it decides nothing of this itself.
//!
//! Today's policy (SPEC §3): only a failed *connect* is retried, on a server this request has not tried, up to
//! the group's `retries`; a request that may have reached a server is never sent again (it may not be
//! idempotent). No server to try at all is 503; every one tried failed is 502; a read timeout is 504.

use std::time::Instant;

use crate::clock::Entropy;
use crate::request::RequestInfo;
use crate::respond::Failure;
use crate::upstream::{Pool, Transition};

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

    /// Whether it says something about the server's health (passive detection counts it).
    fn counts_against_server(self) -> bool {
        !matches!(self, UpstreamError::Unresolved)
    }
}

/// What the core says after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// Another server may be tried.
    pub retry: bool,
    /// The server's state changed because of it (passive detection).
    pub transition: Option<Transition>,
}

/// The attempts of one request.
#[derive(Debug, Default)]
pub struct Attempts {
    tried: Vec<usize>,
    failed: u32,
    resent_stale: bool,
}

impl Attempts {
    /// No attempt made yet.
    pub fn new() -> Attempts {
        Attempts::default()
    }

    /// Attempts that failed so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// The server for the next attempt: one that is up and not tried by this request. `Err` is what the client
    /// is told when there is none: 503 when nothing was tried, 502 when everything tried failed.
    pub fn next(&self, pool: &Pool, req: &RequestInfo<'_>, entropy: &dyn Entropy) -> Result<usize, Failure> {
        pool.select(req, &self.tried, entropy).ok_or(if self.tried.is_empty() {
            Failure::NoHealthyUpstream
        } else {
            Failure::UpstreamConnect
        })
    }

    /// Records that the attempt on `server` failed with `error`; passive detection hears of it, and the
    /// answer says whether another server may be tried.
    pub fn fail(&mut self, pool: &Pool, server: usize, error: UpstreamError, now: Instant) -> AfterFailure {
        self.tried.push(server);
        self.failed += 1;
        let transition = if error.counts_against_server() { pool.report(server, false, now) } else { None };
        AfterFailure { retry: error.before_sending() && pool.may_retry(self.failed), transition }
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
        pool: &Pool,
        server: usize,
        error: UpstreamError,
        (stale, idempotent): (bool, bool),
        now: Instant,
    ) -> AfterFailure {
        if stale && idempotent {
            AfterFailure { retry: self.stale_connection(), transition: None }
        } else {
            self.fail(pool, server, error, now)
        }
    }
}

/// What an exchange that completed says about the server's health: an answer below 500 is a success.
pub fn live_success(status: u16, failed: bool) -> bool {
    !failed && status < 500
}

#[cfg(test)]
mod tests;
