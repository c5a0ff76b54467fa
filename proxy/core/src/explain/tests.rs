use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::load;
use crate::request::HeaderPairs;
use crate::runtime::Plan;

const SECRET: &str = "a-long-enough-test-secret-value";

const GW: &str = "mode: api_gateway\nupstreams:\n  u: { servers: [\"10.0.0.1:80\", { address: \"10.0.0.2:80\", weight: 3 }, \"10.0.0.3:80\"], strategy: weighted }\n\
    \x20 v: { servers: [\"10.0.0.9:80\"], retry: { attempts: 2 } }\n\
    api_gateway:\n  routes:\n\
    \x20   users: { path_pattern: \"^/api/users\", upstream: u, methods: [GET], strip_prefix: true, middlewares: [cors, rate_limit, auth] }\n\
    \x20   api: { path_pattern: \"^/api\", upstream: v, methods: [GET, POST] }\n\
    \x20   admin: { path_pattern: \"^/admin\", upstream: v, methods: [DELETE] }\n\
    \x20 middlewares:\n    rate_limiting: { requests_per_minute: 60, burst_size: 2, key_header: X-Api-Key }\n\
    \x20   authentication: { jwt_secret: a-long-enough-test-secret-value, excluded_paths: [\"^/api/users/public\"] }\n\
    \x20   cors: { allowed_origins: [\"https://a\"], allowed_methods: [GET, POST] }\n";

fn runtime(text: &str) -> Runtime {
    let valid = load(text, &|_| None).unwrap();
    Runtime::build(valid, None, 1, ManualClock::default().now())
}

fn now(clock: &ManualClock) -> Now {
    Now { mono: clock.now(), unix: clock.unix_now() }
}

fn ask(rt: &Runtime, clock: &ManualClock, method: &str, url: &str, headers: &[(&str, &str)]) -> Explanation {
    let (path, query, _) = parse_target(url).unwrap();
    let q = Question {
        method,
        path: &path,
        query: query.as_deref(),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        headers: &HeaderPairs(headers),
    };
    rt.explain(&q, now(clock))
}

/// What the proxy itself does with the same request: the status it answers, or 0 and the server it forwards to.
fn served(rt: &Runtime, clock: &ManualClock, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, usize) {
    let path = match rt.normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(failure) => return (failure.reply().status, 0),
    };
    let headers = HeaderPairs(headers);
    let req =
        RequestInfo { method, path: &path, query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers: &headers };
    match rt.plan(&req, now(clock), &SeededEntropy::new(7)) {
        Plan::Respond { failure, .. } => (failure.reply().status, 0),
        Plan::Forward { server, .. } => (0, server),
        Plan::Remote { .. } => (1, 0),
    }
}

fn token(secret: &str, exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        exp: u64,
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &Claims { exp }, &key).unwrap()
}

fn bearer(clock: &ManualClock) -> String {
    format!("Bearer {}", token(SECRET, clock.unix_now().as_secs() + 600))
}

#[test]
fn every_matching_route_is_listed_with_why_the_winner_won() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let auth = bearer(&clock);
    let e = ask(&rt, &clock, "GET", "/api/users/7?x=1", &[("authorization", &auth)]);
    let names: Vec<(&str, bool, bool)> = e.routes.iter().map(|r| (r.name.as_str(), r.matched, r.chosen)).collect();
    assert_eq!(names, [("users", true, true), ("api", true, false)]);
    assert!(e.routes[1].reason.contains("\"users\" comes first"), "{}", e.routes[1].reason);
    assert_eq!(e.answer, None, "{e:?}");
    assert_eq!(e.upstream_path.as_deref(), Some("/7?x=1"), "strip_prefix removes the matched span, the query stays");
    assert_eq!(e.upstream.as_ref().map(|u| u.group.as_str()), Some("u"));
    // A method the longer route does not accept falls to the next one, and says so.
    let e = ask(&rt, &clock, "POST", "/api/users/7", &[]);
    assert_eq!(e.routes[0].reason, "does not accept POST (accepts GET)");
    assert!(e.routes[1].chosen);
    assert_eq!(e.upstream_path.as_deref(), Some("/api/users/7"));
}

#[test]
fn no_route_is_404_and_a_method_no_route_accepts_is_405_with_allow() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let e = ask(&rt, &clock, "GET", "/nowhere", &[]);
    assert_eq!((e.answer, e.routes.len()), (Some(404), 0));
    let e = ask(&rt, &clock, "GET", "/admin/x", &[]);
    assert_eq!(e.answer, Some(405));
    assert!(e.answer_reason.as_deref().is_some_and(|r| r.contains("Allow: DELETE")), "{:?}", e.answer_reason);
    assert!(e.upstream.is_none() && e.servers.is_empty());
}

#[test]
fn the_path_is_normalised_first_and_an_unnormalisable_one_is_400() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let e = ask(&rt, &clock, "GET", "/admin/../api/x", &[]);
    assert_eq!(e.path, "/api/x");
    assert!(e.routes.iter().any(|r| r.name == "api" && r.chosen));
    let e = ask(&rt, &clock, "GET", "/api/a%2Fb", &[]);
    assert_eq!(e.answer, Some(400), "{e:?}");
    assert!(e.answer_reason.as_deref().is_some_and(|r| r.starts_with("the path cannot be normalised")), "{e:?}");
}

#[test]
fn each_middleware_says_its_verdict_in_order_and_a_token_is_really_verified() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let verdicts = |e: &Explanation| e.middlewares.iter().map(|m| m.name).collect::<Vec<_>>();
    let e = ask(&rt, &clock, "GET", "/api/users/1", &[]);
    assert_eq!(verdicts(&e), ["cors", "rate_limit", "auth"]);
    assert_eq!(e.middlewares[2].verdict, "no bearer token: would answer 401");
    assert_eq!(e.answer, Some(401));
    let wrong = format!("Bearer {}", token("some-other-secret-entirely-xx", clock.unix_now().as_secs() + 600));
    let e = ask(&rt, &clock, "GET", "/api/users/1", &[("authorization", &wrong)]);
    assert!(e.middlewares[2].verdict.contains("bad_signature"), "{:?}", e.middlewares[2]);
    let expired = format!("Bearer {}", token(SECRET, clock.unix_now().as_secs() - 600));
    let e = ask(&rt, &clock, "GET", "/api/users/1", &[("authorization", &expired)]);
    assert!(e.middlewares[2].verdict.contains("expired"), "{:?}", e.middlewares[2]);
    let good = bearer(&clock);
    let e = ask(&rt, &clock, "GET", "/api/users/1", &[("authorization", &good)]);
    assert_eq!(e.middlewares[2].verdict, "the bearer token verifies");
    let e = ask(&rt, &clock, "GET", "/api/users/public/x", &[]);
    assert_eq!(e.middlewares[2].verdict, "skipped: the path is excluded from authentication");
    assert_eq!(e.answer, None);
    // A preflight is answered by cors; the steps after it are not reached.
    let pre = [("origin", "https://a"), ("access-control-request-method", "GET")];
    let e = ask(&rt, &clock, "OPTIONS", "/api/users/1", &pre);
    assert_eq!(e.answer, Some(204));
    assert!(e.middlewares[1].verdict.starts_with("not reached"), "{:?}", e.middlewares);
}

#[test]
fn explaining_draws_no_token_and_takes_no_turn_and_predicts_what_the_proxy_does() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let auth = bearer(&clock);
    let headers = [("authorization", auth.as_str()), ("x-api-key", "the-secret-api-key")];
    for round in 0..4 {
        let first = ask(&rt, &clock, "GET", "/api/users/1", &headers);
        let again = ask(&rt, &clock, "GET", "/api/users/1", &headers);
        assert_eq!(first, again, "explaining changed something");
        let (status, server) = served(&rt, &clock, "GET", "/api/users/1", &headers);
        let predicted = first.servers.iter().find(|s| s.pick == Some(1)).map(|s| s.address.clone());
        match first.answer {
            None => {
                assert_eq!(status, 0, "round {round}: explain said forwarded");
                assert_eq!(predicted.as_deref(), Some(rt.pools()[0].servers()[server].addr.text.as_str()));
            }
            Some(answer) => assert_eq!(answer, status, "round {round}"),
        }
    }
    // A burst of two was spent by the two requests served, not by the eight explanations.
    let e = ask(&rt, &clock, "GET", "/api/users/1", &headers);
    assert!(e.middlewares[1].verdict.starts_with("would answer 429"), "{:?}", e.middlewares[1]);
    assert!(!e.middlewares[1].verdict.contains("the-secret-api-key"), "a rate-limit key value was printed");
    assert!(e.middlewares[1].verdict.contains("header x-api-key"));
}

#[test]
fn the_fallback_order_skips_servers_that_are_down_and_none_up_is_503() {
    let text = GW.replace("strategy: weighted }", "strategy: weighted, passive: { consecutive_failures: 1 } }");
    let rt = runtime(&text);
    let clock = ManualClock::default();
    let auth = bearer(&clock);
    let headers = [("authorization", auth.as_str())];
    let pool = &rt.pools()[0];
    pool.report(1, crate::upstream::Live::GatewayFailure, clock.now());
    let e = ask(&rt, &clock, "GET", "/api/users/1", &headers);
    let picks: Vec<(&str, Option<usize>)> = e.servers.iter().map(|s| (s.state, s.pick)).collect();
    assert_eq!(picks, [("up", Some(1)), ("up", Some(2)), ("ejected", None)], "{:?}", e.servers);
    pool.report(0, crate::upstream::Live::GatewayFailure, clock.now());
    pool.report(2, crate::upstream::Live::GatewayFailure, clock.now());
    let e = ask(&rt, &clock, "GET", "/api/users/1", &headers);
    assert_eq!(e.answer, Some(503));
    assert_eq!(e.answer_reason.as_deref(), Some("no server of the group is up"));
    clock.advance(Duration::from_secs(3600));
}

#[test]
fn timeouts_and_retry_policy_are_those_in_force() {
    let rt = runtime(GW);
    let clock = ManualClock::default();
    let e = ask(&rt, &clock, "GET", "/api/x", &[]);
    let t = e.timeouts.as_ref().unwrap();
    assert_eq!((t.connect_secs, t.read_secs), (10.0, 30.0), "{t:?}");
    let retry = e.retry.as_ref().unwrap();
    assert_eq!(retry.policy.as_ref().and_then(|p| p["attempts"].as_u64()), Some(2), "{retry:?}");
    assert!(retry.resendable, "a GET without a body may be resent");
    let e = ask(&rt, &clock, "POST", "/api/x", &[]);
    assert!(!e.retry.as_ref().unwrap().resendable, "a POST is never resent once it reached a server");
}

#[test]
fn a_target_is_a_path_with_a_query_or_an_absolute_url() {
    assert_eq!(parse_target("/a?b=1").unwrap(), ("/a".into(), Some("b=1".into()), None));
    assert_eq!(
        parse_target("https://shop.example:8443/x?y").unwrap(),
        ("/x".into(), Some("y".into()), Some("shop.example:8443".into()))
    );
    assert!(parse_target("ftp://x/").is_err());
    assert!(parse_target("users").is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Explain is the proxy's own decision: for any request, run before the proxy serves it, its answer is
    /// the status the proxy answers (or forwarding), and explaining twice says the same.
    #[test]
    fn the_explanation_predicts_the_plan(
        method in "GET|POST|DELETE|OPTIONS|PUT",
        path in "/(api|admin|api/users|api/users/public|x)(/[a-z.%0-9]{0,6}){0,3}",
        with_token in proptest::bool::ANY,
        origin in proptest::option::of("https://a|https://b"),
        key in "[a-c]",
    ) {
        let rt = runtime(GW);
        let clock = ManualClock::default();
        let auth = bearer(&clock);
        let mut headers = vec![("x-api-key", key.as_str())];
        if with_token { headers.push(("authorization", auth.as_str())); }
        if let Some(o) = &origin { headers.push(("origin", o.as_str())); headers.push(("access-control-request-method", "GET")); }
        for _ in 0..3 {
            let e = ask(&rt, &clock, &method, &path, &headers);
            proptest::prop_assert_eq!(&e, &ask(&rt, &clock, &method, &path, &headers));
            let (status, _) = served(&rt, &clock, &method, &path, &headers);
            proptest::prop_assert_eq!(e.answer.unwrap_or(0), status, "{:?}", e);
        }
    }
}
