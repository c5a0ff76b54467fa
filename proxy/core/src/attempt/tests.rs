//! The attempt state machine against a ManualClock: which server next, when a failure may be retried, what
//! the client is told, and what passive detection hears.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::clock::{Clock, ManualClock, SeededEntropy};
use crate::config::load;
use crate::request::HeaderPairs;
use crate::runtime::Runtime;

fn runtime(retries: u32, passive: &str) -> Runtime {
    let text = format!(
        "mode: load_balancer\nupstreams:\n  u: {{ servers: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"], retries: {retries}{passive} }}\n\
         load_balancer: {{ upstream: u }}\n"
    );
    Runtime::build(load(&text, &|_| None).unwrap(), None, 1, ManualClock::default().now())
}

fn req<'a>(headers: &'a HeaderPairs<'a>) -> RequestInfo<'a> {
    RequestInfo { method: "GET", path: "/", query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers }
}

#[test]
fn a_failed_connect_is_retried_on_servers_not_tried_until_retries_run_out() {
    let rt = runtime(2, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), ManualClock::default().now());
    let mut attempts = Attempts::new();
    let mut seen = Vec::new();
    loop {
        let server = attempts.next(pool, &req(&h), &e).unwrap();
        assert!(!seen.contains(&server), "server {server} tried twice");
        seen.push(server);
        if !attempts.fail(pool, server, UpstreamError::Connect, now).retry {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "retries: 2 means three attempts in all");
    assert_eq!(attempts.failed(), 3);
    assert_eq!(attempts.next(pool, &req(&h), &e), Err(Failure::UpstreamConnect), "every server tried: 502");
}

#[test]
fn retries_zero_means_one_attempt_and_nothing_tried_with_everything_down_is_503() {
    let rt = runtime(0, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), ManualClock::default().now());
    let mut attempts = Attempts::new();
    let server = attempts.next(pool, &req(&h), &e).unwrap();
    assert!(!attempts.fail(pool, server, UpstreamError::ConnectTimeout, now).retry);
    let rt = runtime(1, ", passive: { consecutive_failures: 1 }");
    let pool = &rt.pools()[0];
    for server in 0..3 {
        pool.report(server, false, now);
    }
    assert_eq!(Attempts::new().next(pool, &req(&h), &e), Err(Failure::NoHealthyUpstream));
}

#[test]
fn a_request_that_may_have_reached_the_server_is_never_retried() {
    let rt = runtime(5, "");
    let pool = &rt.pools()[0];
    let (e, h, now) = (SeededEntropy::new(1), HeaderPairs(&[]), ManualClock::default().now());
    for error in [UpstreamError::Timeout, UpstreamError::Broken] {
        let mut attempts = Attempts::new();
        let server = attempts.next(pool, &req(&h), &e).unwrap();
        assert!(!attempts.fail(pool, server, error, now).retry, "{error:?}");
        assert!(!error.before_sending());
    }
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
fn passive_detection_hears_connect_failures_but_not_names_that_did_not_resolve() {
    let rt = runtime(5, ", passive: { consecutive_failures: 2 }");
    let pool = &rt.pools()[0];
    let now = ManualClock::default().now();
    let mut attempts = Attempts::new();
    assert_eq!(attempts.fail(pool, 0, UpstreamError::Unresolved, now).transition, None);
    assert_eq!(attempts.fail(pool, 0, UpstreamError::Unresolved, now).transition, None);
    assert!(pool.servers()[0].is_up(), "a name that does not resolve is not the server's fault");
    assert_eq!(attempts.fail(pool, 1, UpstreamError::Connect, now).transition, None);
    assert_eq!(attempts.fail(pool, 1, UpstreamError::Connect, now).transition, Some(Transition::Down));
}

#[test]
fn an_answer_below_500_is_a_live_success() {
    assert!(live_success(200, false));
    assert!(live_success(404, false));
    assert!(live_success(499, false));
    assert!(!live_success(500, false));
    assert!(!live_success(503, false));
    assert!(!live_success(200, true), "an exchange that failed after its head is not a success");
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
    assert!(attempts.next(pool, &req(&h), &e).is_ok(), "every server is still a candidate");
}

#[test]
fn after_sending_only_an_idempotent_request_on_a_stale_connection_goes_again() {
    let rt = runtime(2, ", passive: { consecutive_failures: 1 }");
    let pool = &rt.pools()[0];
    let now = ManualClock::default().now();
    let mut attempts = Attempts::new();
    let stale_get = attempts.fail_sent(pool, 0, UpstreamError::Broken, (true, true), now);
    assert_eq!(stale_get, AfterFailure { retry: true, transition: None }, "resent, server not judged");
    let stale_post = attempts.fail_sent(pool, 1, UpstreamError::Broken, (true, false), now);
    assert!(!stale_post.retry, "a POST is never resent");
    assert_eq!(stale_post.transition, Some(Transition::Down), "and the failure counts against the server");
    let timeout = attempts.fail_sent(pool, 2, UpstreamError::Timeout, (false, true), now);
    assert!(!timeout.retry, "a GET that timed out may have reached the server");
}
