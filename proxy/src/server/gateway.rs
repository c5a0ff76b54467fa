//! The ProxyHttp impl: translates Pingora's phases into calls on the core, and the core's answers back
//! into Pingora. It holds no decision of its own.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONNECTION, HOST};
use locci_core::attempt::{AfterFailure, Attempts, Resend, UpstreamError};
use locci_core::edge::ClientError;
use locci_core::forwarding;
use locci_core::middleware::{Now, Rejection};
use locci_core::respond::{Failure, Reply};
use locci_core::runtime::Served;
use locci_core::trace::TraceContext;
use locci_core::upstream::{InFlight, Live, Pool, RetryReason, Transition};
use locci_core::{Plan, Runtime};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::headers::{HeaderView, names};
use super::health::log_transition;
use super::transport::resolve;
use crate::app::{RequestGuard, Shared};
use crate::observe::NO_LABEL;
use crate::observe::spans::FinishedSpan;

/// The locci proxy application.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway over shared state.
    pub fn new(shared: Arc<Shared>) -> Gateway {
        Gateway { shared }
    }

    fn now(&self) -> Now {
        Now { mono: self.shared.env.clock.now(), unix: self.shared.env.clock.unix_now() }
    }
    /// Runs the core's plan for a request; `Some` is the reply the proxy sends itself.
    async fn plan(&self, session: &Session, ctx: &mut RequestCtx, runtime: &Arc<Runtime>, now: Now) -> Option<Reply> {
        let header = session.req_header();
        let headers = HeaderView(header);
        ctx.peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()).unwrap_or(ctx.peer);
        let xff = header.headers.get(&names::X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        ctx.client_ip = forwarding::client_ip(ctx.peer, xff, runtime.trusted());
        // Built once, shared by the upstream request and the response: a client's valid ID is its own value.
        let sent = header.headers.get(&names::X_REQUEST_ID);
        ctx.request_id = match forwarding::request_id(sent.and_then(|v| v.to_str().ok()), &*self.shared.env.entropy) {
            Cow::Borrowed(_) => sent.cloned().unwrap_or_else(|| HeaderValue::from_static("")),
            Cow::Owned(new) => HeaderValue::try_from(new).unwrap_or_else(|_| HeaderValue::from_static("")),
        };
        let traceparents = header.headers.get_all(&names::TRACEPARENT).iter().map(|v| v.to_str().unwrap_or(""));
        ctx.trace = TraceContext::start(traceparents, runtime.sample_ratio(), &*self.shared.env.entropy);
        let uri = &header.uri;
        let path = match runtime.normalize_path(uri.path()) {
            Ok(path) => path,
            Err(failure) => {
                let reply = failure.reply();
                ctx.failure = Some(failure);
                return Some(reply);
            }
        };
        let req = headers.request(ctx.client_ip, &path);
        let entropy = &*self.shared.env.entropy;
        let mut plan = runtime.plan(&req, now, entropy);
        // A shared-store rate limit pauses the plan for one bounded round trip, then the core goes on.
        while let Plan::Remote { route, pending } = plan {
            let reply = self.shared.take_shared_token(&route.name, &pending).await;
            plan = runtime.resume(route, pending, reply, &req, self.now(), entropy);
        }
        match plan {
            Plan::Respond { route, failure, rejection, headers } => {
                ctx.route = route.map(|r| Arc::clone(&r.name));
                if let Some(route) = route {
                    ctx.route_index = Some(route.index());
                    ctx.rate_key = route.rate_key(&req);
                }
                if matches!(failure, Failure::Overloaded(_)) {
                    // The overflow is the group's: its metrics carry the group's name.
                    ctx.group = route.map(|r| r.group);
                }
                let mut reply = failure.reply();
                reply.headers.extend(headers);
                ctx.failure = Some(failure);
                ctx.rejection = rejection;
                Some(reply)
            }
            Plan::Forward { route, group, server, attempts, response_headers } => {
                ctx.route = Some(Arc::clone(&route.name));
                ctx.route_index = Some(route.index());
                ctx.rate_key = route.rate_key(&req);
                ctx.group = Some(group);
                ctx.attempts = attempts;
                ctx.body_limit = route.max_body_bytes;
                ctx.read_timeout = runtime.read_timeout(route);
                ctx.route_timeout = ctx.read_timeout;
                let forwarded = route.upstream_path(req.path, req.query);
                let original = uri.path_and_query().map_or("/", |p| p.as_str());
                ctx.upstream_path = (forwarded != original).then(|| forwarded.into_owned());
                ctx.response_headers = response_headers;
                ctx.in_flight = runtime.pools().get(group).map(|pool| pool.begin(server));
                if let Cow::Owned(normalized) = path {
                    ctx.path = Some(normalized);
                }
                None
            }
            Plan::Remote { .. } => Some(Failure::Internal.reply()),
        }
    }
}

impl Gateway {
    /// Time since the request started.
    fn elapsed(&self, ctx: &RequestCtx) -> Duration {
        ctx.started.map_or(Duration::ZERO, |s| self.shared.env.clock.now().saturating_duration_since(s))
    }

    /// The facts the core needs to decide whether the request may be sent again.
    fn resend<'s>(&self, session: &'s Session, ctx: &RequestCtx) -> Resend<'s> {
        let route_timeout = ctx.route_timeout;
        Resend {
            method: session.req_header().method.as_str(),
            body_whole: !session.as_ref().retry_buffer_truncated(),
            time_left: self.elapsed(ctx) < route_timeout,
            head_sent: session.response_written().is_some(),
        }
    }

    /// Acts on what the core said about an attempt: logs and counts a change of the server's state, a retry
    /// and a refused one; returns whether the request goes again.
    fn heed(&self, pool: &Pool, idx: usize, after: &AfterFailure, cause: &str) -> bool {
        let metrics = &self.shared.metrics;
        if let Some(t) = after.transition {
            log_transition(pool, idx, t, cause);
            // Live outcomes take a server down only through outlier detection: every Down here is an ejection.
            if t == Transition::Down {
                metrics.ejection(pool.name(), pool.servers().get(idx).map_or("?", |s| s.addr.text.as_str()));
            }
        }
        if let Some(reason) = after.retry {
            metrics.retry(pool.name(), reason.as_str());
        }
        if let Some(kind) = after.refused {
            metrics.overflow(pool.name(), kind.as_str());
            if self.shared.may_log_overflow() {
                tracing::warn!(upstream = pool.name(), kind = kind.as_str(), "retry refused by its limit");
            }
        }
        after.retries()
    }

    /// Feeds the request's outcome to the metrics: the one place they are counted.
    fn record(&self, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let metrics = &self.shared.metrics;
        let mode = ctx.runtime.as_ref().map_or(NO_LABEL, |r| r.mode().short());
        let route = ctx.route.as_deref().unwrap_or(NO_LABEL);
        let upstream = ctx.pool().map_or(NO_LABEL, |p| p.name());
        if status != 0 {
            metrics.request(mode, route, upstream, status, elapsed.as_secs_f64());
        }
        match (&ctx.rejection, &ctx.failure) {
            (Some(Rejection::RateLimited), _) => metrics.rate_limited(route),
            (Some(Rejection::Auth(reason)), _) => metrics.auth_rejected(route, reason.as_str()),
            (Some(Rejection::Cors), _) => metrics.error(mode, "cors_rejected"),
            (None, Some(Failure::Client(e))) => {
                metrics.error(mode, e.reason());
                self.shared.client_rejected(*e);
            }
            (None, Some(failure @ Failure::Overloaded(kind))) => {
                metrics.error(mode, failure.kind());
                metrics.overflow(upstream, kind.as_str());
            }
            (None, Some(failure)) if failure.is_error() => metrics.error(mode, failure.kind()),
            (None, Some(_)) => {}
            (None, None) => {}
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    runtime: Option<Arc<Runtime>>,
    started: Option<Instant>,
    /// The request ID (the client's when valid), the value sent upstream and back.
    request_id: HeaderValue,
    /// Its place in its trace (W3C trace context).
    trace: TraceContext,
    /// The TCP peer.
    peer: IpAddr,
    /// The client as the core sees it (the peer, or from X-Forwarded-For behind a trusted proxy).
    client_ip: IpAddr,
    route: Option<Arc<str>>,
    /// The route's place in the runtime's table, and the hash of its rate-limit key (the traffic profile's).
    route_index: Option<usize>,
    rate_key: Option<u64>,
    group: Option<usize>,
    /// The server of the latest attempt, when it was sent there, and its latency to the response head.
    server: Option<usize>,
    attempt_started: Option<Instant>,
    upstream_latency: Option<Duration>,
    /// Wall time at the start.
    started_unix: Duration,
    read_timeout: Duration,
    /// The route's timeout: it bounds the whole request across attempts.
    route_timeout: Duration,
    upstream_path: Option<String>,
    /// The normalised path, when it differs from the one the client sent.
    path: Option<String>,
    /// The route's body limit, and the body bytes seen so far.
    body_limit: Option<u64>,
    body_seen: u64,
    /// The upstream answered 101: the connection is a tunnel now (counted in a gauge until it ends).
    upgraded: bool,
    /// Its attempts, from the plan on (they hold its place in the group's circuit breaker).
    attempts: Attempts,
    /// The upstream's answer is being retried (decided in `upstream_response_filter`).
    retrying_answer: Option<RetryReason>,
    in_flight: Option<InFlight>,
    last_server: Option<String>,
    response_headers: Vec<(&'static str, String)>,
    failure: Option<Failure>,
    rejection: Option<Rejection>,
    _serving: RequestGuard,
}

impl RequestCtx {
    /// The request ID as text (it is checked to be printable ASCII when made).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    fn pool(&self) -> Option<&Arc<Pool>> {
        self.runtime.as_ref()?.pools().get(self.group?)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: None,
            started: None,
            request_id: HeaderValue::from_static(""),
            trace: TraceContext::NONE,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            route: None,
            route_index: None,
            rate_key: None,
            group: None,
            server: None,
            attempt_started: None,
            upstream_latency: None,
            started_unix: Duration::ZERO,
            read_timeout: Duration::from_secs(30),
            route_timeout: Duration::from_secs(30),
            upstream_path: None,
            path: None,
            body_limit: None,
            body_seen: 0,
            upgraded: false,
            attempts: Attempts::new(),
            retrying_answer: None,
            in_flight: None,
            last_server: None,
            response_headers: Vec::new(),
            failure: None,
            rejection: None,
            _serving: self.shared.begin_request(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let now = self.now();
        ctx.started = Some(now.mono);
        ctx.started_unix = now.unix;
        let runtime = self.shared.runtime();
        let reply = self.plan(session, ctx, &runtime, now).await;
        // Pingora decides keep-alive from the request's own headers as it parses the head, over anything set on
        // the session before, so the operator's switch (`keepalive_timeout_secs: 0`) is applied here, after.
        if runtime.client_limits().keepalive_timeout.is_zero() {
            session.set_keepalive(None);
        }
        let (downstream, upstream) = runtime.client_limits().read_timeouts(session.is_upgrade_req());
        session.set_read_timeout(Some(downstream));
        if let Some(upstream) = upstream {
            ctx.read_timeout = upstream;
        }
        ctx.runtime = Some(runtime);
        match reply {
            None => Ok(false),
            Some(reply) => {
                if self.shared.draining() {
                    session.set_keepalive(None);
                }
                write_reply(session, &reply, ctx.request_id()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool().cloned().ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let runtime = ctx.runtime.clone().ok_or_else(|| Error::new(ErrorType::InternalError))?;
        // A retry under the group's policy waits its backoff first (none before the first attempt).
        let wait = ctx.attempts.backoff(&pool, &*self.shared.env.entropy);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        loop {
            let idx = match &ctx.in_flight {
                Some(f) => f.server(),
                None => {
                    let header = session.req_header();
                    let headers = HeaderView(header);
                    let req = headers.request(ctx.client_ip, ctx.path.as_deref().unwrap_or(header.uri.path()));
                    let now = self.shared.env.clock.now();
                    match ctx.attempts.next(&pool, &req, &*self.shared.env.entropy, now) {
                        Ok(idx) => {
                            ctx.in_flight = Some(pool.begin(idx));
                            idx
                        }
                        Err(failure) => {
                            ctx.failure = Some(failure);
                            return Err(Error::explain(ErrorType::ConnectNoRoute, "no server left to try"));
                        }
                    }
                }
            };
            let Some(server) = pool.servers().get(idx) else {
                return Err(Error::new(ErrorType::InternalError));
            };
            ctx.last_server = Some(server.addr.text.clone());
            // A hostname's address comes from the background lookups; only before the first answer is in does
            // a request look it up itself.
            let addr = match self.shared.server_socket(&server.addr) {
                Some(ip) => ip,
                None => match resolve(&server.addr.text).await {
                    Ok(ip) => ip,
                    Err(e) => {
                        tracing::warn!(upstream = pool.name(), server = %server.addr.text, error = %e, "cannot resolve server");
                        ctx.in_flight = None;
                        let now = self.shared.env.clock.now();
                        let resend = self.resend(session, ctx);
                        let after = ctx.attempts.fail(&pool, idx, UpstreamError::Unresolved, resend, now);
                        if self.heed(&pool, idx, &after, "unresolved") {
                            continue;
                        }
                        ctx.failure = Some(UpstreamError::Unresolved.failure());
                        return Err(Error::explain(ErrorType::ConnectNoRoute, "cannot resolve server"));
                    }
                },
            };
            let spec = pool.spec();
            let sni = spec.sni.clone().unwrap_or_else(|| server.addr.host.clone());
            let mut peer = HttpPeer::new(addr, spec.tls, sni);
            let connect = runtime.connect_timeout();
            peer.options.connection_timeout = Some(connect);
            // Custom L4 connectors (the simulator's) ignore connection_timeout; the total one always applies.
            peer.options.total_connection_timeout = Some(connect);
            // One clock read times the attempt's budget and starts its latency (the traffic profile's).
            let now = self.shared.env.clock.now();
            let elapsed = ctx.started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            let Some(read_timeout) = ctx.attempts.read_timeout(&pool, ctx.read_timeout, elapsed) else {
                ctx.in_flight = None;
                ctx.failure = Some(UpstreamError::Timeout.failure());
                return Err(Error::explain(ErrorType::ReadTimedout, "the route's timeout is spent"));
            };
            peer.options.read_timeout = Some(read_timeout);
            peer.options.write_timeout = Some(read_timeout);
            peer.options.idle_timeout = self.shared.env.transport.idle_timeout(runtime.idle_timeout());
            peer.options.custom_l4 = self.shared.env.transport.custom_l4();
            if let Some(path) = &spec.ca_path {
                peer.options.ca = self.shared.ca(path);
            }
            ctx.server = Some(idx);
            ctx.upstream_latency = None;
            ctx.attempt_started = Some(now);
            return Ok(Box::new(peer));
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A declared length over the limit was refused before anything was forwarded; this catches a chunked
        // body as it crosses the limit.
        if let (Some(limit), Some(chunk)) = (ctx.body_limit, body.as_ref()) {
            ctx.body_seen += chunk.len() as u64;
            if ctx.body_seen > limit {
                ctx.failure = Some(Failure::Client(ClientError::BodyTooLarge));
                return Err(Error::explain(ErrorType::HTTPStatus(413), "request body over max_body_bytes"));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(path) = &ctx.upstream_path {
            let uri = path.parse().map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream path"))?;
            upstream.set_uri(uri);
        }
        // Names are looked up as parsed `HeaderName`s and values moved or shared, not copied; each insert still
        // parses its name and writes two maps, which is Pingora's case-preserving header map (GUIDE §10).
        let connection = upstream.headers.get(&CONNECTION).and_then(|v| v.to_str().ok());
        let listed: Vec<String> = forwarding::listed_hop_by_hop(connection).map(str::to_ascii_lowercase).collect();
        for name in names::STRIPPED.iter() {
            upstream.remove_header(name);
        }
        for name in &listed {
            upstream.remove_header(name.as_str());
        }
        let existing = upstream.headers.get(&names::X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        let xff = forwarding::forwarded_for(existing, ctx.peer);
        upstream.insert_header("x-forwarded-for", xff)?;
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
        upstream.insert_header("x-forwarded-proto", HeaderValue::from_static(if tls { "https" } else { "http" }))?;
        if let Some(host) = upstream.headers.get(&HOST).cloned() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.clone())?;
        upstream.insert_header("traceparent", ctx.trace.traceparent())?;
        if !ctx.trace.keeps_tracestate() {
            upstream.remove_header(&names::TRACESTATE);
        }
        if !ctx.runtime.as_ref().is_none_or(|r| r.upstream_keepalive()) {
            // Pingora's pool keeps a connection even at size 0; asking the server to close is what stops reuse.
            upstream.insert_header("connection", HeaderValue::from_static("close"))?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Only a group with a retry policy retries answers; the others pay nothing here.
        let (Some(pool), Some(in_flight)) = (ctx.pool().filter(|p| p.spec().retry.is_some()), &ctx.in_flight) else {
            return Ok(());
        };
        let (pool, idx) = (Arc::clone(pool), in_flight.server());
        let status = upstream.status.as_u16();
        let resend = self.resend(session, ctx);
        let after = ctx.attempts.answered(&pool, idx, status, resend, self.shared.env.clock.now());
        if !self.heed(&pool, idx, &after, "live failures") {
            return Ok(());
        }
        // Nothing of this answer has reached the client: the attempt ends here and the request goes again.
        ctx.in_flight = None;
        ctx.retrying_answer = after.retry;
        Err(Error::explain(ErrorType::HTTPStatus(status), "upstream answer retried"))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.shared.draining() {
            session.set_keepalive(None);
        }
        if let Some(start) = ctx.attempt_started {
            ctx.upstream_latency = Some(self.shared.env.clock.now().saturating_duration_since(start));
        }
        for (name, value) in ctx.response_headers.drain(..) {
            response.append_header(name, value)?;
        }
        if response.status.as_u16() == 101 && !ctx.upgraded {
            ctx.upgraded = true;
            self.shared.metrics.upgraded(1);
        }
        response.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(pool) = ctx.pool().cloned() else {
            return e;
        };
        let Some(in_flight) = ctx.in_flight.take() else {
            e.set_retry(false);
            return e;
        };
        let idx = in_flight.server();
        let error = connect_error(e.etype()).unwrap_or(UpstreamError::Connect);
        let resend = self.resend(session, ctx);
        let after = ctx.attempts.fail(&pool, idx, error, resend, self.shared.env.clock.now());
        tracing::warn!(upstream = pool.name(), server = ctx.last_server.as_deref().unwrap_or(""),
            error_type = e.etype().as_str(), request_id = %ctx.request_id(), "upstream connect failed");
        e.set_retry(self.heed(&pool, idx, &after, "connect failures"));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The answer's retry was decided when its head arrived; this is Pingora carrying it out.
        if ctx.retrying_answer.take().is_some() {
            e.set_retry(true);
            return e;
        }
        // The facts the core decides on: the HTTP layer's word that the pooled connection was stale, and
        // whether the request may be sent twice (its body, if any, still whole).
        let mut layer = e.retry;
        layer.decide_reuse(client_reused);
        let idempotent = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        let retry = match (ctx.pool().cloned(), e.esource(), ctx.in_flight.take()) {
            (Some(pool), ErrorSource::Upstream, Some(in_flight)) => {
                let idx = in_flight.server();
                let facts = (layer.retry(), idempotent);
                let now = self.shared.env.clock.now();
                let resend = self.resend(session, ctx);
                let after = ctx.attempts.fail_sent(&pool, idx, sent_error(e.etype()), facts, resend, now);
                self.heed(&pool, idx, &after, "live failures")
            }
            // Not the server's doing (the client went away): its health is judged when the request ends.
            (_, _, in_flight) => {
                ctx.in_flight = in_flight;
                false
            }
        };
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The client is gone: nothing useful can be written back, and it refused nothing.
        let client_gone = e.esource() == &ErrorSource::Downstream
            && matches!(e.etype(), ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed);
        let failure =
            ctx.failure.clone().unwrap_or_else(|| if client_gone { Failure::ClientGone } else { translate(e) });
        let error_code = if client_gone {
            0
        } else {
            let reply = failure.reply();
            if e.esource() == &ErrorSource::Upstream {
                tracing::warn!(upstream = ctx.pool().map(|p| p.name()).unwrap_or(""),
                    server = ctx.last_server.as_deref().unwrap_or(""), error_type = failure.kind(),
                    error = %e, request_id = %ctx.request_id(), "upstream failure");
            }
            // The connection is not reused after a failure: say so, so the client does not send on it.
            session.set_keepalive(None);
            // A failure mid-body: the client has the head, so the only honest signal left is the connection
            // closing before the body's end (as nginx and Envoy do); no second head is written.
            if session.response_written().is_none()
                && let Err(err) = write_reply(session, &reply, ctx.request_id()).await
            {
                tracing::debug!(error = %err, "could not send error response");
            }
            reply.status
        };
        ctx.failure = Some(failure);
        FailToProxy { error_code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.upgraded {
            self.shared.metrics.upgraded(-1);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let (Some(pool), Some(in_flight)) = (ctx.pool().cloned(), ctx.in_flight.take()) {
            // A failure on the client's side (it went away) says nothing about the server.
            let outcome = Live::of(status, e.is_some_and(|e| e.esource() == &ErrorSource::Upstream));
            let after = AfterFailure {
                transition: pool.report(in_flight.server(), outcome, self.shared.env.clock.now()),
                ..AfterFailure::default()
            };
            self.heed(
                &pool,
                in_flight.server(),
                &after,
                if outcome == Live::Success { "live success" } else { "live failures" },
            );
        }
        let elapsed = ctx.started.map_or(Duration::ZERO, |s| self.shared.env.clock.now().saturating_duration_since(s));
        self.record(ctx, status, elapsed);
        let header = session.req_header();
        if let Some(runtime) = &ctx.runtime {
            runtime.observe(&Served {
                route: ctx.route_index,
                method: header.method.as_str(),
                status,
                unix_secs: (ctx.started_unix + elapsed).as_secs(),
                rate_key: ctx.rate_key,
                server: ctx.group.zip(ctx.server),
                upstream_latency: ctx.upstream_latency,
            });
        }
        if ctx.trace.sampled && ctx.trace.trace_id != 0 {
            let start = std::time::UNIX_EPOCH + ctx.started_unix;
            self.shared.export_span(|| FinishedSpan {
                trace_id: ctx.trace.trace_id,
                span_id: ctx.trace.span_id,
                parent: ctx.trace.parent,
                start,
                end: start + elapsed,
                method: header.method.as_str().to_owned(),
                path: header.uri.path().to_owned(),
                route: ctx.route.clone(),
                status,
                upstream: ctx.pool().map(|p| p.name().to_owned()),
                server: ctx.last_server.clone(),
                request_id: ctx.request_id().to_owned(),
                client_ip: ctx.client_ip,
            });
        }
        tracing::info!(
            target: "locci::request",
            request_id = %ctx.request_id(),
            trace_id = %ctx.trace.trace_id(),
            method = %header.method,
            path = %header.uri.path(),
            route = %ctx.route.as_deref().unwrap_or("-"),
            upstream = %ctx.pool().map_or("-", |p| p.name()),
            server = %ctx.last_server.as_deref().unwrap_or("-"),
            status,
            duration_ms = elapsed.as_millis() as u64,
            rate_key = %KeyHash(ctx.rate_key),
            upstream_us = %Micros(ctx.upstream_latency),
            "request"
        );
    }
}

/// A rate-limit key's hash as the log and the traffic profile show it, "-" when there is none.
struct KeyHash(Option<u64>);

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(h) => write!(f, "{h:016x}"),
            None => f.write_str("-"),
        }
    }
}

/// A latency in microseconds, "-" when there is none.
struct Micros(Option<Duration>);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", d.as_micros()),
            None => f.write_str("-"),
        }
    }
}

/// Pingora's error as the core's failure: the translation of types only; what each means to the client is
/// decided in the core ([`UpstreamError::failure`], [`ClientError`]).
fn translate(e: &Error) -> Failure {
    match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(400)) => Failure::Client(ClientError::Malformed("bad request")),
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Failure::Client(ClientError::BodyTimeout),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => UpstreamError::Timeout.failure(),
        (_, etype) if connect_error(etype).is_some() => {
            connect_error(etype).map_or(Failure::Internal, UpstreamError::failure)
        }
        (ErrorSource::Upstream, _) => UpstreamError::Broken.failure(),
        (ErrorSource::Downstream, _) => Failure::Client(ClientError::Malformed("bad request")),
        _ => Failure::Internal,
    }
}

/// An error after the request was sent, as the core names it.
fn sent_error(etype: &ErrorType) -> UpstreamError {
    match etype {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamError::Timeout,
        other => connect_error(other).unwrap_or(UpstreamError::Broken),
    }
}

/// The connect-phase errors Pingora reports, as the core names them.
fn connect_error(etype: &ErrorType) -> Option<UpstreamError> {
    match etype {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => Some(UpstreamError::ConnectTimeout),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError => Some(UpstreamError::Connect),
        _ => None,
    }
}

/// Sends a reply the proxy makes itself.
async fn write_reply(session: &mut Session, reply: &Reply, request_id: &str) -> Result<()> {
    let body = reply.body(request_id);
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 3))?;
    for (name, value) in &reply.headers {
        header.append_header(*name, value.as_str())?;
    }
    if !body.is_empty() {
        header.insert_header("content-type", "application/json")?;
    }
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", request_id)?;
    session.write_response_header(Box::new(header), body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(Bytes::from(body)), true).await?;
    }
    Ok(())
}
