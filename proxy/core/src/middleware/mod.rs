//! Middlewares: rate limiting, JWT authentication and CORS, compiled at load and run in a route's order.
//!
//! The chain runs before an upstream is chosen; the first middleware that answers ends the request.
//! Each middleware is a pure decision over the request and the time; the only state is the rate limiter's
//! buckets.

mod auth;
mod cors;
pub mod jwks;
mod rate_limit;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use auth::{AuthReject, Authenticator};
pub use cors::{Cors, CorsDecision};
pub use rate_limit::{
    Decision as RateDecision, MAX_KEY_LEN, MAX_KEYS, RateLimiter, RateSettings, RemoteSettings, RemoteStep,
    StoreAnswer, remote_step,
};

use crate::config::MiddlewaresConfig;
use crate::request::RequestInfo;
use crate::respond::Failure;

/// A middleware a route may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rate_limit` (or `rate_limiting`).
    RateLimit,
    /// `auth` (or `authentication`).
    Auth,
    /// `cors`.
    Cors,
}

impl Kind {
    /// The kind a route's middleware name stands for.
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "rate_limit" | "rate_limiting" => Some(Kind::RateLimit),
            "auth" | "authentication" => Some(Kind::Auth),
            "cors" => Some(Kind::Cors),
            _ => None,
        }
    }

    /// Its section under `api_gateway.middlewares`.
    pub fn section(self) -> &'static str {
        match self {
            Kind::RateLimit => "rate_limiting",
            Kind::Auth => "authentication",
            Kind::Cors => "cors",
        }
    }
}

/// The compiled middleware settings shared by all routes.
#[derive(Debug, Default)]
pub struct Middlewares {
    /// Rate-limit settings (each route gets its own buckets).
    pub rate_limit: Option<RateSettings>,
    /// The JWT verifier.
    pub auth: Option<Arc<Authenticator>>,
    /// CORS policy.
    pub cors: Option<Arc<Cors>>,
}

impl Middlewares {
    /// Whether `kind` has a section in the config.
    pub fn configured(&self, kind: Kind) -> bool {
        match kind {
            Kind::RateLimit => self.rate_limit.is_some(),
            Kind::Auth => self.auth.is_some(),
            Kind::Cors => self.cors.is_some(),
        }
    }
}

/// Compiles the middleware sections; problems go to `problem(path, message)`.
pub fn compile(cfg: &MiddlewaresConfig, problem: &mut dyn FnMut(String, String)) -> Middlewares {
    let base = "api_gateway.middlewares";
    Middlewares {
        rate_limit: cfg
            .rate_limiting
            .as_ref()
            .and_then(|c| RateSettings::compile(c, &format!("{base}.rate_limiting"), problem)),
        auth: cfg
            .authentication
            .as_ref()
            .and_then(|c| Authenticator::compile(c, &format!("{base}.authentication"), problem))
            .map(Arc::new),
        cors: cfg.cors.as_ref().and_then(|c| Cors::compile(c, &format!("{base}.cors"), problem)).map(Arc::new),
    }
}

/// One route's middlewares, ready to run.
#[derive(Debug, Clone)]
pub enum Step {
    /// A rate limiter with this route's buckets.
    RateLimit(Arc<RateLimiter>),
    /// A rate limit whose buckets live in a shared store (Redis): the chain pauses for its answer.
    RemoteRateLimit(Arc<RemoteLimit>),
    /// JWT verification.
    Auth(Arc<Authenticator>),
    /// CORS.
    Cors(Arc<Cors>),
}

/// A rate limit kept in a shared store, for one route.
#[derive(Debug)]
pub struct RemoteLimit {
    /// The settings (with `remote` set).
    pub settings: RateSettings,
    /// The route, part of every bucket key so that each route has its own buckets.
    pub route: Arc<str>,
}

impl RemoteLimit {
    /// The store key of a request's bucket: prefix, route, bucket key.
    pub fn store_key(&self, req: &RequestInfo<'_>) -> String {
        let prefix = self.settings.remote.as_ref().map_or("", |r| r.key_prefix.as_str());
        format!("{prefix}{}:{}", self.route, self.settings.bucket_key(req))
    }
}

/// What the chain needs from the shared store before it can go on.
#[derive(Debug)]
pub struct Pending {
    /// The step waiting.
    pos: usize,
    /// What the steps before it decided.
    out: Outcome,
    /// The limit to ask about.
    pub limit: Arc<RemoteLimit>,
    /// The bucket's key in the store.
    pub key: String,
}

/// The shared store's reply: an answer, or nothing in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreReply {
    /// It answered.
    Answer(StoreAnswer),
    /// Slow, down or broken: the limit's `on_error` applies.
    Unavailable,
}

/// Why a middleware refused a request (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The rate limit was exceeded.
    RateLimited,
    /// Authentication failed for this reason.
    Auth(AuthReject),
    /// A CORS preflight from a disallowed origin or for a disallowed method.
    Cors,
}

/// What the chain decided.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Why the request ends here, when a middleware answered it (turned into a reply by `respond.rs`).
    pub reply: Option<Failure>,
    /// Why, when the reply is a refusal.
    pub rejection: Option<Rejection>,
    /// Headers to add to the response the client gets (rate-limit and CORS headers).
    pub response_headers: Vec<(&'static str, String)>,
}

/// Time as the middlewares see it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic now.
    pub mono: Instant,
    /// Wall time since the Unix epoch.
    pub unix: Duration,
}

/// What one step of the chain decided, as a watcher of the run hears it.
#[derive(Debug)]
pub enum Verdict<'d> {
    /// The rate limit's decision (its remaining tokens, or the refusal).
    RateLimit(RateDecision),
    /// A shared-store rate limit, which a dry run does not ask: the chain goes on as if it allowed.
    Shared,
    /// Authentication passed (or the path is excluded), or why it failed.
    Auth(Result<(), AuthReject>),
    /// What CORS made of the request.
    Cors(&'d CorsDecision),
}

/// Who hears each step's verdict, and whether the run may change state. The proxy's runs use [`Unwatched`];
/// explain runs the same chain dry (rate-limit buckets read, not drawn from) and writes down every verdict.
pub trait Watch {
    /// True when the run must leave every bucket as it was.
    const DRY: bool;
    /// Step `pos` decided `verdict`.
    fn heard(&mut self, pos: usize, verdict: Verdict<'_>);
}

/// The proxy's own runs: nobody listens, state changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwatched;

impl Watch for Unwatched {
    const DRY: bool = false;
    fn heard(&mut self, _pos: usize, _verdict: Verdict<'_>) {}
}

/// Runs `steps` in order over a request; stops at the first that answers, or pauses at a shared-store
/// rate limit (`Err`), to be continued with [`resume`] once the store has replied.
pub fn run(steps: &[Step], req: &RequestInfo<'_>, now: Now) -> Result<Outcome, Pending> {
    run_from(steps, 0, Outcome::default(), req, now, &mut Unwatched)
}

/// Runs the chain as [`run`] does, telling `watch` each verdict; a dry watch changes no state and goes past a
/// shared-store limit instead of pausing, so the result is always `Ok`.
pub fn run_watched<W: Watch>(
    steps: &[Step],
    req: &RequestInfo<'_>,
    now: Now,
    watch: &mut W,
) -> Result<Outcome, Pending> {
    run_from(steps, 0, Outcome::default(), req, now, watch)
}

/// Continues a paused chain with the store's reply.
pub fn resume(
    steps: &[Step],
    pending: Pending,
    reply: StoreReply,
    req: &RequestInfo<'_>,
    now: Now,
) -> Result<Outcome, Pending> {
    let Pending { pos, mut out, limit, .. } = pending;
    let decision = match reply {
        StoreReply::Answer(answer) => limit.settings.decision(answer),
        StoreReply::Unavailable => limit.settings.fallback(),
    };
    if rate_verdict(&mut out, decision, &limit.settings) {
        return Ok(out);
    }
    run_from(steps, pos + 1, out, req, now, &mut Unwatched)
}

/// Applies a rate-limit decision to the outcome; true when it ends the request.
fn rate_verdict(out: &mut Outcome, decision: RateDecision, settings: &RateSettings) -> bool {
    let headers = decision.headers(settings);
    if decision.allowed {
        out.response_headers.extend(headers);
        return false;
    }
    let mut all = std::mem::take(&mut out.response_headers);
    all.extend(headers);
    out.reply = Some(Failure::RateLimited(all));
    out.rejection = Some(Rejection::RateLimited);
    true
}

fn run_from<W: Watch>(
    steps: &[Step],
    start: usize,
    mut out: Outcome,
    req: &RequestInfo<'_>,
    now: Now,
    watch: &mut W,
) -> Result<Outcome, Pending> {
    for (pos, step) in steps.iter().enumerate().skip(start) {
        match step {
            Step::RemoteRateLimit(_) if W::DRY => watch.heard(pos, Verdict::Shared),
            Step::RemoteRateLimit(limit) => {
                let key = limit.store_key(req);
                return Err(Pending { pos, out, limit: Arc::clone(limit), key });
            }
            Step::Cors(cors) => {
                let decision = cors.decide(req);
                watch.heard(pos, Verdict::Cors(&decision));
                match decision {
                    CorsDecision::NotCors => {}
                    CorsDecision::Preflight(headers) => {
                        out.reply = Some(Failure::Preflight(headers));
                        return Ok(out);
                    }
                    CorsDecision::PreflightRejected => {
                        out.reply = Some(Failure::CorsRejected);
                        out.rejection = Some(Rejection::Cors);
                        return Ok(out);
                    }
                    CorsDecision::Actual(headers) => out.response_headers.extend(headers),
                }
            }
            Step::RateLimit(limiter) => {
                let decision = if W::DRY { limiter.peek(req, now.mono) } else { limiter.check(req, now.mono) };
                watch.heard(pos, Verdict::RateLimit(decision));
                if rate_verdict(&mut out, decision, limiter.settings()) {
                    return Ok(out);
                }
            }
            Step::Auth(auth) => {
                let verdict = auth.check(req, now);
                watch.heard(pos, Verdict::Auth(verdict));
                if let Err(reason) = verdict {
                    let challenge = if reason == AuthReject::Missing {
                        "Bearer".to_string()
                    } else {
                        "Bearer error=\"invalid_token\"".to_string()
                    };
                    let mut headers = std::mem::take(&mut out.response_headers);
                    headers.push(("www-authenticate", challenge));
                    out.reply = Some(Failure::Unauthorized(headers));
                    out.rejection = Some(Rejection::Auth(reason));
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
