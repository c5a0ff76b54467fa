//! The attempt state machine against a ManualClock: which server next, when a failure or an answer is
//! retried, what the client is told, what outlier detection hears, and what the retry limits allow.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::clock::{Clock, ManualClock, SeededEntropy};
use crate::config::load;
use crate::request::HeaderPairs;
use crate::runtime::Runtime;

/// A runtime with one group `u` of three servers and `settings` (YAML map entries) on the group.
fn group(settings: &str) -> Runtime {
    let text = format!(
        "mode: load_balancer\nupstreams:\n  u: {{ servers: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]{settings} }}\n\
         load_balancer: {{ upstream: u }}\n"
    );
    Runtime::build(load(&text, &|_| None).unwrap(), None, 1, ManualClock::default().now())
}

fn runtime(retries: u32, passive: &str) -> Runtime {
    group(&format!(", retries: {retries}{passive}"))
}

fn req<'a>(headers: &'a HeaderPairs<'a>) -> RequestInfo<'a> {
    RequestInfo { method: "GET", path: "/", query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers }
}

const GET: Resend<'static> = Resend { method: "GET", body_whole: true, time_left: true, head_sent: false };
const POST: Resend<'static> = Resend { method: "POST", body_whole: true, time_left: true, head_sent: false };

fn now() -> Instant {
    ManualClock::default().now()
}

#[test]
fn a_failed_connect_is_retried_on_servers_not_tried_until_retries_run_out() {
    let rt = runtime(2, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), now());
    let mut attempts = Attempts::new();
    let mut seen = Vec::new();
    loop {
        let server = attempts.next(pool, &req(&h), &e, now).unwrap();
        assert!(!seen.contains(&server), "server {server} tried twice");
        seen.push(server);
        if !attempts.fail(pool, server, UpstreamError::Connect, POST, now).retries() {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "retries: 2 means three attempts in all, whatever the method");
    assert_eq!(attempts.failed(), 3);
    assert_eq!(attempts.next(pool, &req(&h), &e, now), Err(Failure::UpstreamConnect), "every server tried: 502");
}

#[test]
fn retries_zero_means_one_attempt_and_nothing_tried_with_everything_down_is_503() {
    let rt = runtime(0, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), now());
    let mut attempts = Attempts::new();
    let server = attempts.next(pool, &req(&h), &e, now).unwrap();
    assert!(!attempts.fail(pool, server, UpstreamError::ConnectTimeout, GET, now).retries());
    let rt = runtime(1, ", passive: { consecutive_failures: 1 }");
    let pool = &rt.pools()[0];
    for server in 0..3 {
        pool.report(server, Live::GatewayFailure, now);
    }
    assert_eq!(Attempts::new().next(pool, &req(&h), &e, now), Err(Failure::NoHealthyUpstream));
}

#[test]
fn without_a_retry_policy_a_request_that_may_have_reached_the_server_is_never_retried() {
    let rt = runtime(5, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), now());
    for error in [UpstreamError::Timeout, UpstreamError::Broken] {
        let mut attempts = Attempts::new();
        let server = attempts.next(pool, &req(&h), &e, now).unwrap();
        assert!(!attempts.fail(pool, server, error, GET, now).retries(), "{error:?}");
        assert!(!error.before_sending());
    }
    assert_eq!(Attempts::new().answered(pool, 0, 503, GET, now), AfterFailure::default(), "answers stand");
}

#[test]
fn each_error_tells_the_client_its_status() {
    let status = |e: UpstreamError| e.failure().reply().status;
    assert_eq!(status(UpstreamError::Connect), 502);
    assert_eq!(status(UpstreamError::ConnectTimeout), 502);
    assert_eq!(status(UpstreamError::Unresolved), 502);
    assert_eq!(status(UpstreamError::Timeout), 504);
    assert_eq!(status(UpstreamError::Broken), 502);
}

#[test]
fn outlier_detection_hears_connect_failures_but_not_names_that_did_not_resolve() {
    let rt = runtime(5, ", passive: { consecutive_failures: 2 }");
    let pool = &rt.pools()[0];
    let now = now();
    let mut attempts = Attempts::new();
    assert_eq!(attempts.fail(pool, 0, UpstreamError::Unresolved, GET, now).transition, None);
    assert_eq!(attempts.fail(pool, 0, UpstreamError::Unresolved, GET, now).transition, None);
    assert!(pool.servers()[0].is_up(), "a name that does not resolve is not the server's fault");
    assert_eq!(attempts.fail(pool, 1, UpstreamError::Connect, GET, now).transition, None);
    assert_eq!(attempts.fail(pool, 1, UpstreamError::Connect, GET, now).transition, Some(Transition::Down));
}

#[test]
fn a_stale_pooled_connection_is_resent_once_without_judging_the_server() {
    let rt = runtime(0, ", passive: { consecutive_failures: 1 }");
    let pool = &rt.pools()[0];
    let (e, h) = (SeededEntropy::new(1), HeaderPairs(&[]));
    let mut attempts = Attempts::new();
    assert!(attempts.stale_connection(), "once, even with retries: 0");
    assert!(!attempts.stale_connection(), "never twice");
    assert!(pool.servers().iter().all(|s| s.is_up()));
    assert!(attempts.next(pool, &req(&h), &e, now()).is_ok(), "every server is still a candidate");
}

#[test]
fn after_sending_only_an_idempotent_request_on_a_stale_connection_goes_again() {
    let rt = runtime(2, ", passive: { consecutive_failures: 1 }");
    let pool = &rt.pools()[0];
    let now = now();
    let mut attempts = Attempts::new();
    let stale_get = attempts.fail_sent(pool, 0, UpstreamError::Broken, (true, true), GET, now);
    assert_eq!(stale_get.retry, Some(RetryReason::Reset), "resent");
    assert_eq!(stale_get.transition, None, "the server is not judged");
    let stale_post = attempts.fail_sent(pool, 1, UpstreamError::Broken, (true, false), POST, now);
    assert!(!stale_post.retries(), "a POST is never resent");
    assert_eq!(stale_post.transition, Some(Transition::Down), "and the failure counts against the server");
    let timeout = attempts.fail_sent(pool, 2, UpstreamError::Timeout, (false, true), GET, now);
    assert!(!timeout.retries(), "a GET that timed out may have reached the server");
}

#[test]
fn a_policy_retries_what_it_names_for_the_methods_it_lists() {
    let rt = group(", retry: { attempts: 2, on: [timeout, gateway_error] }");
    let pool = &rt.pools()[0];
    let now = now();
    let mut a = Attempts::new();
    assert_eq!(a.fail(pool, 0, UpstreamError::Timeout, GET, now).retry, Some(RetryReason::Timeout));
    assert_eq!(a.answered(pool, 1, 503, GET, now).retry, Some(RetryReason::GatewayError));
    assert_eq!(a.answered(pool, 2, 503, GET, now), AfterFailure::default(), "two retries, then the answer stands");
    assert_eq!(a.retried(), 2);
    let mut a = Attempts::new();
    assert!(!a.fail(pool, 0, UpstreamError::Broken, GET, now).retries(), "reset is not in on");
    assert!(!a.answered(pool, 0, 500, GET, now).retries(), "a 500 is not a gateway error");
    assert!(!a.fail(pool, 0, UpstreamError::Connect, GET, now).retries(), "connect_failure is not in on");
    let mut a = Attempts::new();
    assert!(!a.answered(pool, 0, 503, POST, now).retries(), "a POST that reached a server is never resent");
    assert!(!a.fail(pool, 0, UpstreamError::Timeout, POST, now).retries());
    let kept = Resend { body_whole: false, ..GET };
    assert!(!a.fail(pool, 0, UpstreamError::Timeout, kept, now).retries(), "a body not kept is not resent");
    let late = Resend { time_left: false, ..GET };
    assert!(!a.fail(pool, 0, UpstreamError::Timeout, late, now).retries(), "the route's timeout bounds it all");
}

#[test]
fn a_failure_after_the_client_has_the_response_head_is_never_retried_but_still_counts_against_the_server() {
    let rt = group(
        ", retry: { attempts: 3, on: [connect_failure, reset, timeout] }, outlier: { consecutive_gateway_failure: 2 }",
    );
    let pool = &rt.pools()[0];
    let now = now();
    let mid_body = Resend { head_sent: true, ..GET };
    let mut a = Attempts::new();
    assert!(!a.fail(pool, 0, UpstreamError::Broken, mid_body, now).retries(), "a body broken off is not resent");
    assert!(!a.fail_sent(pool, 0, UpstreamError::Broken, (true, true), mid_body, now).retries(), "nor as stale");
    assert!(!pool.servers()[0].is_up(), "two broken exchanges eject the server, head sent or not");
    assert_eq!(a.retried(), 0);
    let mut b = Attempts::new();
    assert!(b.fail(pool, 1, UpstreamError::Broken, GET, now).retries(), "before the head, a reset is retried");
}

#[test]
fn a_connect_failure_is_retried_whatever_the_method_and_a_listed_post_is_resent() {
    let rt = group(", retry: { attempts: 3, on: [connect_failure, 5xx], methods: [GET, POST] }");
    let pool = &rt.pools()[0];
    let now = now();
    let mut a = Attempts::new();
    let patch = Resend { method: "PATCH", ..GET };
    assert!(a.fail(pool, 0, UpstreamError::Connect, patch, now).retries(), "never reached the server");
    assert!(!a.answered(pool, 1, 500, patch, now).retries(), "PATCH is not listed");
    assert_eq!(a.answered(pool, 1, 500, POST, now).retry, Some(RetryReason::Status5xx), "POST is listed");
}

#[test]
fn a_retry_goes_to_a_server_not_tried_while_one_is_left_then_to_any() {
    let rt = group(", retry: { attempts: 5, on: [gateway_error] }");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), now());
    let mut a = Attempts::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s = a.next(pool, &req(&h), &e, now).unwrap();
        assert!(!seen.contains(&s));
        seen.push(s);
        assert!(a.answered(pool, s, 502, GET, now).retries());
    }
    assert!(a.next(pool, &req(&h), &e, now).is_ok(), "with every server tried, a tried one takes the retry");
}

#[test]
fn a_retried_answer_is_heard_by_outlier_detection_and_a_delivered_one_is_not() {
    let rt = group(", retry: { attempts: 1, on: [gateway_error] }, outlier: { consecutive_gateway_failure: 1 }");
    let pool = &rt.pools()[0];
    let now = now();
    let mut a = Attempts::new();
    assert_eq!(a.answered(pool, 0, 503, GET, now).transition, Some(Transition::Down));
    assert_eq!(a.answered(pool, 1, 503, GET, now).transition, None, "the last answer is judged when it ends");
    assert!(pool.servers()[1].is_up());
}

#[test]
fn max_retries_and_the_budget_hold_retries_in_flight_and_a_refusal_is_not_an_error() {
    let rt = group(
        ", retry: { attempts: 1, budget: { percent: 50, min_concurrent: 1 } }, circuit_breaker: { max_retries: 2 }",
    );
    let pool = &rt.pools()[0];
    let now = now();
    let admitted: Vec<_> = (0..4).map(|_| pool.admit().unwrap()).collect();
    let mut a = Attempts::new();
    let mut b = Attempts::new();
    assert!(a.answered(pool, 0, 502, GET, now).retries(), "1 retrying of 3 first attempts: within 50 %");
    let refused = b.answered(pool, 0, 502, GET, now);
    assert_eq!(refused.refused, Some(Overflow::Budget), "2 retrying > max(1, 50 % of 2)");
    assert!(!refused.retries());
    assert_eq!(pool.admitted(), (4, 1), "a refused retry leaves nothing behind");
    drop(a);
    assert_eq!(pool.admitted(), (4, 0), "a request's retry slot ends with it");
    let more: Vec<_> = (0..20).map(|_| pool.admit().unwrap()).collect();
    let mut held: Vec<Attempts> = Vec::new();
    for _ in 0..2 {
        let mut x = Attempts::new();
        assert!(x.answered(pool, 0, 502, GET, now).retries());
        held.push(x);
    }
    let mut c = Attempts::new();
    assert_eq!(c.answered(pool, 0, 502, GET, now).refused, Some(Overflow::Retries), "max_retries: 2");
    drop((admitted, more, held));
    assert_eq!(pool.admitted(), (0, 0));
}

#[test]
fn max_requests_refuses_the_first_attempt_over_it_and_frees_on_the_way_out() {
    let rt = group(", circuit_breaker: { max_requests: 2 }");
    let pool = &rt.pools()[0];
    let one = pool.admit().unwrap();
    let _two = pool.admit().unwrap();
    assert_eq!(pool.admit().err(), Some(Overflow::Requests));
    assert_eq!(pool.admitted().0, 2, "a refused request is not counted");
    drop(one);
    assert!(pool.admit().is_ok());
}

#[test]
fn backoff_waits_only_before_retries_of_a_policy_and_per_try_timeouts_fit_the_route() {
    let rt = group(", retry: { attempts: 2, per_try_timeout_secs: 2, backoff: { base_ms: 100, max_ms: 100 } }");
    let pool = &rt.pools()[0];
    let e = SeededEntropy::new(5);
    let mut a = Attempts::new();
    assert_eq!(a.backoff(pool, &e), Duration::ZERO, "no wait before the first attempt");
    a.fail(pool, 0, UpstreamError::Timeout, GET, now());
    let waits: Vec<Duration> = (0..50).map(|_| a.backoff(pool, &e)).collect();
    assert!(waits.iter().all(|w| *w <= Duration::from_millis(100)) && waits.iter().any(|w| !w.is_zero()));
    let secs = Duration::from_secs;
    assert_eq!(a.read_timeout(pool, secs(30), secs(0)), Some(secs(2)));
    assert_eq!(a.read_timeout(pool, secs(30), secs(29)), Some(secs(1)), "the route's timeout bounds every attempt");
    assert_eq!(a.read_timeout(pool, secs(30), secs(30)), None, "spent: 504");
    let plain = runtime(1, "");
    assert_eq!(Attempts::new().read_timeout(&plain.pools()[0], secs(30), secs(29)), Some(secs(30)), "no policy");
}

#[test]
fn the_plan_hands_over_attempts_that_know_whether_the_body_can_go_again() {
    let rt = group(", retry: { attempts: 1, on: [timeout], max_body_bytes: 100 }");
    let pool = &rt.pools()[0];
    let (e, now) = (SeededEntropy::new(1), now());
    let resent = |headers: &[(&str, &str)]| {
        let h = HeaderPairs(headers);
        let (mut a, server) = Attempts::start(pool, &req(&h), &e, now).unwrap();
        a.fail(pool, server, UpstreamError::Timeout, GET, now).retries()
    };
    assert!(resent(&[]), "no body");
    assert!(resent(&[("content-length", "100")]), "a declared length within max_body_bytes");
    assert!(!resent(&[("content-length", "101")]), "too large to keep");
    assert!(!resent(&[("transfer-encoding", "chunked")]), "unknown length");
    let limited = group(", circuit_breaker: { max_requests: 1 }");
    let pool = &limited.pools()[0];
    let h = HeaderPairs(&[]);
    let held = Attempts::start(pool, &req(&h), &e, now).unwrap();
    assert_eq!(Attempts::start(pool, &req(&h), &e, now).err(), Some(Failure::Overloaded(Overflow::Requests)));
    drop(held);
    assert!(Attempts::start(pool, &req(&h), &e, now).is_ok(), "its attempts held the place until dropped");
}
