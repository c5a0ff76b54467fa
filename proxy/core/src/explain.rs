//! Explain: how a config would handle one request, without sending it and without changing any state.
//!
//! Every verdict comes from the code the proxy runs on a request: the path normaliser, the route table's own
//! matching, the route's admission check, the middleware chain run dry ([`middleware::run_watched`]: a rate
//! limit is read, never drawn from), and the group's own selection, asked for its order without taking a
//! turn ([`Pool::fallback_order`]). What explain adds is only the writing down.

use std::net::IpAddr;

use serde::Serialize;

use crate::clock::SeededEntropy;
use crate::middleware::{self, AuthReject, CorsDecision, Now, Step, Verdict, Watch};
use crate::request::{Headers, RequestInfo};
use crate::respond::Failure;
use crate::route::{Route, RouteMatch};
use crate::runtime::Runtime;
use crate::upstream::Pool;

/// The request to explain, as a client would send it.
#[derive(Clone, Copy)]
pub struct Question<'a> {
    /// The method.
    pub method: &'a str,
    /// The path as sent (before normalisation), without the query.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// The client's address (rate-limit buckets by IP use it).
    pub client_ip: IpAddr,
    /// The headers.
    pub headers: &'a dyn Headers,
}

/// How the config handles the request (SPEC §11; `--json` and `GET /api/v1/explain` print this).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The method.
    pub method: String,
    /// The path every decision reads: normalised as `server.path` says (as sent when it cannot be).
    pub path: String,
    /// Every route whose pattern matches the path, in the order they are tried.
    pub routes: Vec<RouteVerdict>,
    /// The chosen route's middlewares in order, with what each decided.
    pub middlewares: Vec<MiddlewareVerdict>,
    /// The upstream group, when a route was chosen.
    pub upstream: Option<UpstreamView>,
    /// The group's servers: those it would try, in order (`pick` 1, 2, …), then the ones it would not.
    pub servers: Vec<ServerView>,
    /// The path and query sent upstream, when a route was chosen.
    pub upstream_path: Option<String>,
    /// The timeouts in force, when a route was chosen.
    pub timeouts: Option<Timeouts>,
    /// The group's retry settings, when a route was chosen.
    pub retry: Option<RetryView>,
    /// The status the proxy would answer itself; `None` when the request would be forwarded.
    pub answer: Option<u16>,
    /// Why it would answer itself (the error text of its reply, or a short reason).
    pub answer_reason: Option<String>,
}

/// One route whose pattern matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteVerdict {
    /// The route's name.
    pub name: String,
    /// Its pattern.
    pub pattern: String,
    /// Whether its methods accept the method too.
    pub matched: bool,
    /// Whether it serves the request.
    pub chosen: bool,
    /// Why it won or lost.
    pub reason: String,
}

/// One middleware of the chosen route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MiddlewareVerdict {
    /// `rate_limit`, `auth` or `cors`.
    pub name: &'static str,
    /// What it decided, in words.
    pub verdict: String,
}

/// The chosen route's upstream group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamView {
    /// The group's name.
    pub group: String,
    /// Its strategy.
    pub strategy: crate::config::Strategy,
    /// Whether it is in panic (too few servers up: health is ignored).
    pub panic: bool,
    /// Requests in flight through its circuit breaker, and its `max_requests`.
    pub in_flight: u32,
    /// `circuit_breaker.max_requests`.
    pub max_requests: Option<u32>,
    /// A note on how the pick was made, when it is a draw.
    pub note: Option<&'static str>,
}

/// One server of the group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerView {
    /// Its address as written.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// `up`, `down`, `ejected` or `ramping` (slow start).
    pub state: &'static str,
    /// Its place in the order the request would try servers (1 = the first choice); `None`: not tried.
    pub pick: Option<usize>,
}

/// The timeouts a forwarded request runs under, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeouts {
    /// Connecting to a server.
    pub connect_secs: f64,
    /// Waiting for the answer (the route's `timeout_secs`, else `server.upstream_timeout_secs`).
    pub read_secs: f64,
    /// Each attempt's read timeout under the retry policy.
    pub per_try_secs: Option<f64>,
}

/// The group's retry settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryView {
    /// Connect-failure retries (`retries`).
    pub retries: u32,
    /// The `retry` policy as configured, defaults filled in; `None` when the group has none.
    pub policy: Option<serde_json::Value>,
    /// Whether this request could be sent again after it reached a server (its method and body).
    pub resendable: bool,
}

/// Turns the URL of an explain question into (path, query, host): a path with an optional query, or an
/// absolute `http(s)://` URL whose host becomes the Host header.
pub fn parse_target(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    if url.starts_with('/') {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (url, None),
        };
        return Ok((path.to_string(), query, None));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a path or an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: only http and https URLs can be explained"));
    }
    let host = parsed.host_str().map(|h| match parsed.port() {
        Some(port) => format!("{h}:{port}"),
        None => h.to_string(),
    });
    Ok((parsed.path().to_string(), parsed.query().map(str::to_string), host))
}

impl Runtime {
    /// How this runtime, with its live health and buckets, handles `q`; nothing it touches changes.
    pub fn explain(&self, q: &Question<'_>, now: Now) -> Explanation {
        let mut out = Explanation {
            method: q.method.to_string(),
            path: q.path.to_string(),
            routes: Vec::new(),
            middlewares: Vec::new(),
            upstream: None,
            servers: Vec::new(),
            upstream_path: None,
            timeouts: None,
            retry: None,
            answer: None,
            answer_reason: None,
        };
        let path = match self.normalize_path(q.path) {
            Ok(path) => path,
            Err(failure) => {
                let reason = format!("the path cannot be normalised: {}", failure.reply().error.unwrap_or("?"));
                return answered(out, &failure, Some(reason));
            }
        };
        out.path = path.to_string();
        let req =
            RequestInfo { method: q.method, path: &path, query: q.query, client_ip: q.client_ip, headers: q.headers };
        let found = self.find_route(&req);
        let winner = match &found {
            RouteMatch::Found(route) => Some(*route),
            _ => None,
        };
        out.routes = self.route_table().matching(&path).map(|r| route_verdict(r, winner, q.method)).collect();
        let route = match found {
            RouteMatch::Found(route) => route,
            RouteMatch::NotFound => {
                return answered(out, &Failure::NoRoute, Some("no route's pattern matches the path".into()));
            }
            RouteMatch::MethodNotAllowed(allow) => {
                let reason = format!("routes match the path but none accepts {} (Allow: {allow})", q.method);
                return answered(out, &Failure::MethodNotAllowed(allow), Some(reason));
            }
        };
        out.upstream_path = Some(route.upstream_path(req.path, req.query).into_owned());
        let pool = self.pools().get(route.group);
        out.timeouts = Some(Timeouts {
            connect_secs: self.connect_timeout().as_secs_f64(),
            read_secs: self.read_timeout(route).as_secs_f64(),
            per_try_secs: pool.and_then(|p| p.spec().retry.as_ref()?.per_try_timeout).map(|t| t.as_secs_f64()),
        });
        if let Some(pool) = pool {
            out.retry = Some(self.retry_view(pool, &req));
        }
        if let Some(refused) = crate::runtime::admit(route, &req) {
            let failure = Failure::Client(refused);
            let reason = format!("refused before the middlewares: {}", failure.reply().error.unwrap_or("?"));
            return answered(out, &failure, Some(reason));
        }
        let mut record = Record { steps: route.steps(), req: &req, heard: Vec::new() };
        let chain = middleware::run_watched(route.steps(), &req, now, &mut record);
        out.middlewares = record.written(route.steps().len());
        // The group is shown even when a middleware answers: what would happen once the client gets past it.
        let after_pool = match pool {
            Some(pool) => self.explain_pool(&mut out, pool, &req, now),
            None => Some((Failure::Internal, "the route's group is missing".into())),
        };
        match chain {
            Ok(outcome) => match (outcome.reply, after_pool) {
                (Some(failure), _) => answered(out, &failure, None),
                (None, Some((failure, reason))) => answered(out, &failure, Some(reason)),
                (None, None) => out,
            },
            // A dry run never pauses; a pause would be a bug here, and says so rather than guess.
            Err(_) => answered(out, &Failure::Internal, Some("the chain paused in a dry run".into())),
        }
    }

    fn retry_view(&self, pool: &Pool, req: &RequestInfo<'_>) -> RetryView {
        let spec = pool.spec();
        let policy = self.config().upstreams.get(&spec.name).and_then(|u| u.retry.as_ref());
        RetryView {
            retries: spec.retries,
            policy: policy.and_then(|p| serde_json::to_value(p).ok()),
            resendable: spec.retry.as_ref().is_some_and(|p| p.methods.accepts(req.method) && p.keeps(req.body())),
        }
    }

    /// Fills in the group and its servers; `Some` is what the proxy would answer itself at the group.
    fn explain_pool(
        &self,
        out: &mut Explanation,
        pool: &Pool,
        req: &RequestInfo<'_>,
        now: Now,
    ) -> Option<(Failure, String)> {
        let spec = pool.spec();
        let draw = matches!(spec.strategy, crate::config::Strategy::Random | crate::config::Strategy::LeastRequest)
            || spec.slow_start.is_some();
        out.upstream = Some(UpstreamView {
            group: spec.name.clone(),
            strategy: spec.strategy,
            panic: pool.in_panic(),
            in_flight: pool.admitted().0,
            max_requests: spec.circuit_breaker.and_then(|c| c.max_requests),
            note: draw.then_some("the choice is a random draw: the order shown is one draw of it"),
        });
        // A fixed seed: explaining draws nothing from the proxy's own randomness, and says the same twice.
        let order = pool.fallback_order(req, &SeededEntropy::new(0), now.mono);
        let mut servers: Vec<ServerView> = pool
            .servers()
            .iter()
            .enumerate()
            .map(|(i, s)| ServerView {
                address: s.addr.text.clone(),
                weight: s.weight,
                state: if s.is_ejected() {
                    "ejected"
                } else if !s.is_up() {
                    "down"
                } else if spec.slow_start.is_some_and(|w| s.ramp_share(w, now.mono).is_some()) {
                    "ramping"
                } else {
                    "up"
                },
                pick: order.iter().position(|&o| o == i).map(|p| p + 1),
            })
            .collect();
        servers.sort_by_key(|s| s.pick.unwrap_or(usize::MAX));
        out.servers = servers;
        if order.is_empty() {
            Some((Failure::NoHealthyUpstream, "no server of the group is up".into()))
        } else if pool.full() {
            let failure = Failure::Overloaded(crate::upstream::Overflow::Requests);
            Some((failure, "the circuit breaker is full (max_requests in flight)".into()))
        } else {
            None
        }
    }
}

/// The explanation ends with the proxy answering `failure` itself.
fn answered(mut out: Explanation, failure: &Failure, reason: Option<String>) -> Explanation {
    let reply = failure.reply();
    out.answer = Some(reply.status);
    out.answer_reason = reason.or_else(|| reply.error.map(str::to_string)).or_else(|| Some(failure.kind().into()));
    out
}

fn route_verdict(route: &Route, winner: Option<&Route>, method: &str) -> RouteVerdict {
    let chosen = winner.is_some_and(|w| std::ptr::eq(w, route));
    let matched = route.accepts(method);
    let reason = match (chosen, matched, winner) {
        (true, true, _) => "the first matching route (longest pattern, then file order) that accepts the method".into(),
        (true, false, _) => "a CORS preflight goes to the matching route with cors, whatever its methods".into(),
        (false, false, _) => format!("does not accept {method} (accepts {})", route.allow()),
        (false, true, Some(w)) => {
            format!("route {:?} comes first (a longer pattern, or the same length earlier in the file)", &*w.name)
        }
        (false, true, None) => "not reached".into(),
    };
    RouteVerdict { name: route.name.to_string(), pattern: route.pattern().to_string(), matched, chosen, reason }
}

/// Writes down what each step of a dry chain run decided.
struct Record<'r, 'q> {
    steps: &'r [Step],
    req: &'r RequestInfo<'q>,
    heard: Vec<MiddlewareVerdict>,
}

impl Watch for Record<'_, '_> {
    const DRY: bool = true;

    fn heard(&mut self, pos: usize, verdict: Verdict<'_>) {
        let step = self.steps.get(pos);
        let (name, text) = match verdict {
            Verdict::RateLimit(d) => {
                let bucket = match step {
                    Some(Step::RateLimit(l)) => match &l.settings().key_header {
                        // The key's value may be a credential (an API key): name its header, never its value.
                        Some(h) if self.req.headers.get(h).is_some() => format!("the bucket of header {h}"),
                        _ => format!("the bucket of client IP {}", self.req.client_ip),
                    },
                    _ => "its bucket".into(),
                };
                let text = if d.allowed {
                    format!("allowed: {} request(s) left in {bucket} after this one", d.remaining)
                } else {
                    format!("would answer 429: {bucket} is empty (retry after {} s)", d.retry_after_secs)
                };
                ("rate_limit", text)
            }
            Verdict::Shared => (
                "rate_limit",
                "decided by the shared store (redis), which explain does not ask: taken as allowed here".into(),
            ),
            Verdict::Auth(result) => {
                let excluded = matches!(step, Some(Step::Auth(a)) if a.is_excluded(self.req.path));
                let text = match result {
                    Ok(()) if excluded => "skipped: the path is excluded from authentication".into(),
                    Ok(()) => "the bearer token verifies".into(),
                    Err(AuthReject::Missing) => "no bearer token: would answer 401".into(),
                    Err(reason) => format!("the token is refused ({}): would answer 401", reason.as_str()),
                };
                ("auth", text)
            }
            Verdict::Cors(decision) => {
                let text = match decision {
                    CorsDecision::NotCors => "not a CORS request from an allowed origin: nothing added",
                    CorsDecision::Preflight(_) => "a preflight from an allowed origin: would answer 204",
                    CorsDecision::PreflightRejected => {
                        "a preflight from a disallowed origin or method: would answer 403"
                    }
                    CorsDecision::Actual(_) => "an allowed origin: CORS headers added to the response",
                };
                ("cors", text.into())
            }
        };
        self.heard.push(MiddlewareVerdict { name, verdict: text });
    }
}

impl Record<'_, '_> {
    /// The verdicts heard, then the steps the chain did not reach.
    fn written(self, steps: usize) -> Vec<MiddlewareVerdict> {
        let reached = self.heard.len();
        let mut out = self.heard;
        for step in self.steps.iter().take(steps).skip(reached) {
            let name = match step {
                Step::RateLimit(_) | Step::RemoteRateLimit(_) => "rate_limit",
                Step::Auth(_) => "auth",
                Step::Cors(_) => "cors",
            };
            out.push(MiddlewareVerdict { name, verdict: "not reached: an earlier middleware answered".into() });
        }
        out
    }
}

#[cfg(test)]
mod tests;
