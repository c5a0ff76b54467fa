//! The compiled route table: which route serves a request, and the path it is forwarded with.
//!
//! Patterns are compiled once, when the config is validated, into one `RegexSet` (one pass finds every
//! matching route) plus each route's own `Regex` (for the span that `strip_prefix` removes). Routes are kept
//! longest pattern first, ties in file order, so the first accepted match is the winner.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use regex::{Regex, RegexSet};

use crate::method::MethodSet;
use crate::middleware::Step;
use crate::profile::RouteStats;
use crate::request::RequestInfo;

/// The largest compiled size of the route regexes, so a hostile pattern cannot exhaust memory at load.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024 * 1024;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's config name (a metric label).
    pub name: Arc<str>,
    /// Index of its upstream group in the runtime's group list.
    pub group: usize,
    /// The group's name.
    pub upstream: Arc<str>,
    /// Upstream read timeout, when the route sets one.
    pub timeout: Option<Duration>,
    /// Middlewares, in the order they run.
    pub middlewares: Vec<crate::middleware::Kind>,
    /// Largest request body accepted; `None` = no limit.
    pub max_body_bytes: Option<u64>,
    /// Whether upgrades (WebSocket) are proxied.
    pub websocket: bool,
    steps: Vec<crate::middleware::Step>,
    stats: Arc<RouteStats>,
    index: usize,
    pattern: Regex,
    methods: MethodSet,
    strip_prefix: bool,
}

impl Route {
    /// The middleware chain, ready to run (set when the runtime is built).
    pub fn steps(&self) -> &[crate::middleware::Step] {
        &self.steps
    }

    /// Sets the middleware chain.
    pub(crate) fn set_steps(&mut self, steps: Vec<crate::middleware::Step>) {
        self.steps = steps;
    }

    /// Its traffic statistics (the traffic profile's part for this route).
    pub fn stats(&self) -> &Arc<RouteStats> {
        &self.stats
    }

    /// Takes over the statistics of the route of the same name in the previous runtime.
    pub(crate) fn set_stats(&mut self, stats: Arc<RouteStats>) {
        self.stats = stats;
    }

    /// Its position in [`RouteTable::routes`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The hash of a request's rate-limit key on this route ([`crate::middleware::RateSettings::key_hash`]);
    /// `None` when the
    /// route has no rate limit.
    pub fn rate_key(&self, req: &RequestInfo<'_>) -> Option<u64> {
        self.steps.iter().find_map(|step| match step {
            Step::RateLimit(limiter) => Some(limiter.settings().key_hash(req)),
            Step::RemoteRateLimit(limit) => Some(limit.settings.key_hash(req)),
            _ => None,
        })
    }

    /// Its path pattern, as written.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// Whether its methods accept `method`.
    pub fn accepts(&self, method: &str) -> bool {
        self.methods.accepts(method)
    }

    /// Its methods, as an `Allow` header says them.
    pub fn allow(&self) -> String {
        self.methods.allow_header()
    }

    /// The path (and query) to forward: the matched span removed when `strip_prefix` is set; never empty.
    pub fn upstream_path<'p>(&self, path: &'p str, query: Option<&str>) -> Cow<'p, str> {
        if !self.strip_prefix {
            return match query {
                Some(q) => Cow::Owned(format!("{path}?{q}")),
                None => Cow::Borrowed(path),
            };
        }
        let stripped = match self.pattern.find(path) {
            Some(m) => format!("{}{}", &path[..m.start()], &path[m.end()..]),
            None => path.to_string(),
        };
        let mut out = String::with_capacity(stripped.len() + query.map_or(0, |q| q.len() + 2));
        if !stripped.starts_with('/') {
            out.push('/');
        }
        out.push_str(&stripped);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Cow::Owned(out)
    }
}

/// What the route table says about a request.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    /// This route serves it.
    Found(&'a Route),
    /// No route's pattern matches the path: 404.
    NotFound,
    /// Patterns match but none accepts the method: 405 with this `Allow` value.
    MethodNotAllowed(String),
}

/// A route as written, before compiling.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Config name.
    pub name: String,
    /// Path regex.
    pub pattern: String,
    /// Accepted methods.
    pub methods: MethodSet,
    /// Upstream group index.
    pub group: usize,
    /// Upstream group name.
    pub upstream: String,
    /// Remove the matched span.
    pub strip_prefix: bool,
    /// Read timeout.
    pub timeout: Option<Duration>,
    /// Middlewares in order.
    pub middlewares: Vec<crate::middleware::Kind>,
    /// Body limit, the server default already applied.
    pub max_body_bytes: Option<u64>,
    /// Upgrades allowed.
    pub websocket: bool,
}

/// All routes, compiled.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    set: RegexSet,
}

impl RouteTable {
    /// Compiles the routes; the error names every route whose pattern does not compile.
    pub fn compile(mut specs: Vec<RouteSpec>) -> Result<RouteTable, Vec<(String, regex::Error)>> {
        // Stable sort keeps file order among patterns of the same length.
        specs.sort_by_key(|s| std::cmp::Reverse(s.pattern.len()));
        let mut routes = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            match regex::RegexBuilder::new(&spec.pattern).size_limit(REGEX_SIZE_LIMIT).build() {
                Ok(pattern) => routes.push(Route {
                    name: spec.name.into(),
                    group: spec.group,
                    upstream: spec.upstream.into(),
                    timeout: spec.timeout,
                    middlewares: spec.middlewares,
                    max_body_bytes: spec.max_body_bytes,
                    websocket: spec.websocket,
                    steps: Vec::new(),
                    stats: Arc::default(),
                    index: routes.len(),
                    pattern,
                    methods: spec.methods,
                    strip_prefix: spec.strip_prefix,
                }),
                Err(e) => errors.push((spec.name, e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let set = regex::RegexSetBuilder::new(routes.iter().map(|r| r.pattern.as_str()))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| vec![(String::from("(all routes)"), e)])?;
        Ok(RouteTable { routes, set })
    }

    /// The route for a request. `any_method` ignores the method filters (a CORS preflight is answered by
    /// the matching route's cors middleware whatever its methods).
    pub fn find(&self, method: &str, path: &str, any_method: bool) -> RouteMatch<'_> {
        let mut allow = MethodSet::default();
        let mut matched = false;
        for route in self.matching(path) {
            if any_method || route.methods.accepts(method) {
                return RouteMatch::Found(route);
            }
            matched = true;
            allow = allow.union(route.methods);
        }
        if matched { RouteMatch::MethodNotAllowed(allow.allow_header()) } else { RouteMatch::NotFound }
    }

    /// Every route whose pattern matches `path`, in the order [`RouteTable::find`] tries them.
    pub fn matching<'t>(&'t self, path: &str) -> impl Iterator<Item = &'t Route> + 't {
        self.set.matches(path).into_iter().map(move |i| &self.routes[i])
    }

    /// The routes, longest pattern first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(crate) fn routes_mut(&mut self) -> &mut [Route] {
        &mut self.routes
    }
}

#[cfg(test)]
mod tests;
