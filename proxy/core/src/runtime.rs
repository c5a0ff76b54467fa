//! The runtime: everything compiled from one validated config, swapped whole on reload.
//!
//! A request holds the `Arc<Runtime>` it started with until it ends. Building a runtime cannot fail (the
//! config was validated); groups whose settings did not change are carried over with their health state,
//! and routes keep their rate-limit buckets when their settings did not change.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::attempt::Attempts;
use crate::clock::Entropy;
use crate::config::{Config, Mode, ValidConfig};
use crate::edge::{ClientError, ClientLimits};
use crate::middleware::jwks::KeyStore;
use crate::middleware::{self, Kind, Now, Outcome, Pending, RateLimiter, Rejection, RemoteLimit, Step, StoreReply};
use crate::profile::{ROUTE_BYTES, RouteProfile, SERVER_BYTES, ServerProfile, ServerStats, TrafficProfile};
use crate::request::{Body, RequestInfo};
use crate::respond::Failure;
use crate::route::{Route, RouteMatch, RouteTable};
use crate::upstream::Pool;

/// Everything the proxy needs to serve requests under one config.
#[derive(Debug)]
pub struct Runtime {
    generation: u64,
    config: Arc<Config>,
    routes: RouteTable,
    pools: Vec<Arc<Pool>>,
    trusted: Vec<IpNet>,
    client: ClientLimits,
    /// Per group, per server: its traffic statistics.
    servers: Vec<Vec<Arc<ServerStats>>>,
    /// The JWKS key set of the authentication middleware.
    jwks: Option<Arc<KeyStore>>,
}

/// One request as the traffic profile counts it, when it has ended.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Its route's index ([`Route::index`]), when one matched.
    pub route: Option<usize>,
    /// Its method.
    pub method: &'a str,
    /// The status answered (0: none).
    pub status: u16,
    /// When it ended, in unix seconds.
    pub unix_secs: u64,
    /// The hash of its rate-limit key ([`Route::rate_key`]).
    pub rate_key: Option<u64>,
    /// The group and server that answered it last.
    pub server: Option<(usize, usize)>,
    /// That server's latency to the response head.
    pub upstream_latency: Option<Duration>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Answer it without an upstream.
    Respond {
        /// The route, when one matched.
        route: Option<&'a Route>,
        /// Why.
        failure: Failure,
        /// The middleware refusal, if that is why.
        rejection: Option<Rejection>,
        /// Headers the middlewares add to the reply (CORS, rate limits) when a later step fails.
        headers: Vec<(&'static str, String)>,
    },
    /// Ask the shared rate-limit store, then call [`Runtime::resume`] with its reply.
    Remote {
        /// The route.
        route: &'a Route,
        /// The paused chain and what to ask.
        pending: Pending,
    },
    /// Forward it.
    Forward {
        /// The route.
        route: &'a Route,
        /// The group index.
        group: usize,
        /// The chosen server.
        server: usize,
        /// The request's attempts, the first on `server` (they hold its place in the circuit breaker).
        attempts: Attempts,
        /// Headers the middlewares add to the response.
        response_headers: Vec<(&'static str, String)>,
    },
}

impl Runtime {
    /// Builds the runtime for `valid`, carrying over state from `previous`.
    pub fn build(valid: ValidConfig, previous: Option<&Runtime>, generation: u64, epoch: Instant) -> Runtime {
        let ValidConfig { config, groups, mut routes, trusted, middlewares, client } = valid;
        // A reload's verifier starts from the keys in force while it fetches its own (no gap of 401s).
        let jwks = middlewares.auth.as_ref().and_then(|a| a.jwks().cloned());
        if let (Some(new), Some(old)) = (&jwks, previous.and_then(|p| p.jwks.as_ref())) {
            new.adopt(old);
        }
        let pools: Vec<Arc<Pool>> = groups
            .into_iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.pools.iter().find(|o| o.name() == spec.name));
                match old {
                    Some(old) if *old.spec() == spec => Arc::clone(old),
                    _ => Arc::new(Pool::new(spec, old.map(|o| o.as_ref()), previous.map(|_| epoch))),
                }
            })
            .collect();
        for route in routes.routes_mut() {
            let steps = route
                .middlewares
                .iter()
                .filter_map(|kind| match kind {
                    Kind::RateLimit => middlewares.rate_limit.as_ref().map(|settings| {
                        if settings.remote.is_some() {
                            let limit = RemoteLimit { settings: settings.clone(), route: Arc::clone(&route.name) };
                            return Step::RemoteRateLimit(Arc::new(limit));
                        }
                        let carried =
                            previous.and_then(|p| p.limiter(&route.name)).filter(|l| l.settings() == settings);
                        Step::RateLimit(carried.unwrap_or_else(|| Arc::new(RateLimiter::new(settings.clone(), epoch))))
                    }),
                    Kind::Auth => middlewares.auth.clone().map(Step::Auth),
                    Kind::Cors => middlewares.cors.clone().map(Step::Cors),
                })
                .collect();
            route.set_steps(steps);
            if let Some(old) = previous.and_then(|p| p.routes().iter().find(|r| r.name == route.name)) {
                route.set_stats(Arc::clone(old.stats()));
            }
        }
        let servers = pools
            .iter()
            .map(|pool| {
                let old = previous.and_then(|p| p.pools.iter().position(|o| o.name() == pool.name()));
                pool.servers()
                    .iter()
                    .map(|server| {
                        old.and_then(|g| {
                            let previous = previous?;
                            let i = previous.pools[g].servers().iter().position(|o| o.addr.text == server.addr.text)?;
                            previous.servers.get(g)?.get(i).cloned()
                        })
                        .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        Runtime { generation, config: Arc::new(config), routes, pools, trusted, client, servers, jwks }
    }

    /// The JWKS key set the verifier uses, when `jwks_url` is set (the proxy fetches it).
    pub fn jwks(&self) -> Option<&Arc<KeyStore>> {
        self.jwks.as_ref()
    }

    /// The number that grows with every applied change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The effective config.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// The groups, in config order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The routes, longest pattern first.
    pub fn routes(&self) -> &[Route] {
        self.routes.routes()
    }

    /// What a client may send (`server.client`).
    pub fn client_limits(&self) -> &ClientLimits {
        &self.client
    }

    /// Trusted proxy networks.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The upstream read timeout of a route.
    pub fn read_timeout(&self, route: &Route) -> Duration {
        route.timeout.unwrap_or(Duration::from_secs(self.config.server.upstream_timeout_secs))
    }

    /// The connect timeout to upstream servers.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.server.connection_pool.connect_timeout_secs)
    }

    /// How long an idle pooled upstream connection is kept.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.server.connection_pool.idle_timeout_secs)
    }

    /// The share of new traces sampled (SPEC §14).
    pub fn sample_ratio(&self) -> f64 {
        self.config.tracing.sample_ratio
    }

    /// Whether upstream connections are kept for reuse (`max_idle: 0` turns reuse off).
    pub fn upstream_keepalive(&self) -> bool {
        self.config.server.connection_pool.max_idle > 0
    }

    /// The path every decision about a request reads: normalised as `server.path` says (SPEC §10), once per
    /// request, before [`Runtime::plan`]; a path that cannot be normalised is answered with 400.
    pub fn normalize_path<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, Failure> {
        crate::path::normalize(path, &self.config.server.path)
            .map_err(|e| Failure::Client(ClientError::Malformed(e.as_str())))
    }

    /// Decides what happens to a request: route, middlewares, first server. `req.path` is the normalised
    /// path ([`Runtime::normalize_path`]).
    pub fn plan<'a>(&'a self, req: &RequestInfo<'_>, now: Now, entropy: &dyn Entropy) -> Plan<'a> {
        let respond = |route, failure, rejection, headers| Plan::Respond { route, failure, rejection, headers };
        let route = match self.find_route(req) {
            RouteMatch::Found(route) => route,
            RouteMatch::NotFound => return respond(None, Failure::NoRoute, None, Vec::new()),
            RouteMatch::MethodNotAllowed(allow) => {
                return respond(None, Failure::MethodNotAllowed(allow), None, Vec::new());
            }
        };
        if let Some(refused) = admit(route, req) {
            return respond(Some(route), Failure::Client(refused), None, Vec::new());
        }
        self.after_chain(route, middleware::run(route.steps(), req, now), req, now, entropy)
    }

    /// Continues a plan that waited for the shared rate-limit store.
    pub fn resume<'a>(
        &'a self,
        route: &'a Route,
        pending: Pending,
        reply: StoreReply,
        req: &RequestInfo<'_>,
        now: Now,
        entropy: &dyn Entropy,
    ) -> Plan<'a> {
        self.after_chain(route, middleware::resume(route.steps(), pending, reply, req, now), req, now, entropy)
    }

    fn after_chain<'a>(
        &'a self,
        route: &'a Route,
        chain: Result<Outcome, Pending>,
        req: &RequestInfo<'_>,
        now: Now,
        entropy: &dyn Entropy,
    ) -> Plan<'a> {
        let outcome = match chain {
            Ok(outcome) => outcome,
            Err(pending) => return Plan::Remote { route, pending },
        };
        if let Some(failure) = outcome.reply {
            return Plan::Respond { route: Some(route), failure, rejection: outcome.rejection, headers: Vec::new() };
        }
        // The first server is chosen by the same state machine as every later attempt (503 when none is up),
        // then the circuit breaker admits the request (503 "upstream overloaded" when the group is full).
        let respond = |failure| Plan::Respond {
            route: Some(route),
            failure,
            rejection: None,
            headers: outcome.response_headers.clone(),
        };
        let Some(pool) = self.pools.get(route.group) else {
            return respond(Failure::Internal);
        };
        match Attempts::start(pool, req, entropy, now.mono) {
            Ok((attempts, server)) => Plan::Forward {
                route,
                group: route.group,
                server,
                attempts,
                response_headers: outcome.response_headers,
            },
            Err(failure) => respond(failure),
        }
    }

    /// Counts a request that has ended in the traffic profile.
    pub fn observe(&self, served: &Served<'_>) {
        if let Some(route) = served.route.and_then(|i| self.routes().get(i)) {
            route.stats().record(served.method, served.status, served.unix_secs, served.rate_key);
        }
        if let Some(stats) = served.server.and_then(|(g, s)| self.servers.get(g)?.get(s)) {
            stats.record(served.status, served.upstream_latency);
        }
    }

    /// The traffic profile of every route and server of this config, the last hour ending at `now_unix`;
    /// statistics carried over reloads for routes and servers that kept their names.
    pub fn traffic_profile(&self, now_unix: u64) -> TrafficProfile {
        let mut routes: Vec<RouteProfile> = self.routes().iter().map(|r| r.stats().report(&r.name, now_unix)).collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        let mut servers: Vec<ServerProfile> = self
            .pools
            .iter()
            .zip(&self.servers)
            .flat_map(|(pool, stats)| {
                pool.servers().iter().zip(stats).map(|(server, s)| s.report(pool.name(), &server.addr.text))
            })
            .collect();
        servers.sort_by(|a, b| (&a.upstream, &a.server).cmp(&(&b.upstream, &b.server)));
        TrafficProfile {
            until_unix: now_unix,
            window_minutes: crate::profile::WINDOW_MINUTES,
            memory_bytes: routes.len() * ROUTE_BYTES + servers.len() * SERVER_BYTES,
            routes,
            servers,
        }
    }

    /// The compiled route table.
    pub(crate) fn route_table(&self) -> &RouteTable {
        &self.routes
    }

    /// A CORS preflight goes to the matching route whose chain has cors, whatever its methods.
    pub(crate) fn find_route(&self, req: &RequestInfo<'_>) -> RouteMatch<'_> {
        let preflight = req.method == "OPTIONS"
            && req.headers.get("origin").is_some()
            && req.headers.get("access-control-request-method").is_some();
        if preflight
            && let RouteMatch::Found(route) = self.routes.find(req.method, req.path, true)
            && route.steps().iter().any(|s| matches!(s, Step::Cors(_)))
        {
            return RouteMatch::Found(route);
        }
        self.routes.find(req.method, req.path, false)
    }

    fn limiter(&self, route: &str) -> Option<Arc<RateLimiter>> {
        let route = self.routes.routes().iter().find(|r| &*r.name == route)?;
        route.steps().iter().find_map(|s| match s {
            Step::RateLimit(l) => Some(Arc::clone(l)),
            _ => None,
        })
    }
}

/// What the route refuses before its middlewares run: a declared body over its limit (413 before anything is
/// forwarded; a chunked body is counted as it streams, see [`Route::max_body_bytes`]) and an upgrade it does
/// not allow.
pub(crate) fn admit(route: &Route, req: &RequestInfo<'_>) -> Option<ClientError> {
    if let (Some(limit), Body::Length(n)) = (route.max_body_bytes, req.body())
        && n > limit
    {
        return Some(ClientError::BodyTooLarge);
    }
    if !route.websocket && req.headers.get("upgrade").is_some() {
        return Some(ClientError::Malformed("upgrade not allowed on this route"));
    }
    None
}

#[cfg(test)]
mod tests;
