use super::*;
use crate::clock::SeededEntropy;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_keeps_its_trace_and_flag_and_gets_the_proxys_span_as_parent() {
    let entropy = SeededEntropy::new(1);
    let ctx = TraceContext::start(Some(VALID), 0.0, &entropy);
    assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(ctx.parent, Some(0x00f067aa0ba902b7));
    assert!(ctx.sampled, "the caller's sampled flag is followed even with sample_ratio 0");
    assert!(ctx.keeps_tracestate());
    let sent = ctx.traceparent();
    assert_eq!(sent.len(), 55);
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(sent.ends_with("-01"));
    assert_ne!(&sent[36..52], "00f067aa0ba902b7", "the upstream's parent is the proxy's span, not the caller's");
    assert_eq!(parse(&sent).map(|p| p.span_id), Some(ctx.span_id));
}

#[test]
fn an_unsampled_caller_stays_unsampled_even_with_sample_ratio_one() {
    let entropy = SeededEntropy::new(2);
    let ctx = TraceContext::start(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), 1.0, &entropy);
    assert!(!ctx.sampled);
    assert!(ctx.traceparent().ends_with("-00"));
}

#[test]
fn invalid_traceparents_start_a_new_trace_and_drop_the_tracestate() {
    let bad = [
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    ];
    let entropy = SeededEntropy::new(3);
    for value in bad {
        assert_eq!(parse(value), None, "{value:?} must be refused");
        let ctx = TraceContext::start(Some(value), 1.0, &entropy);
        assert_ne!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736, "{value:?} must not be continued");
        assert_eq!(ctx.parent, None);
        assert!(!ctx.keeps_tracestate());
        assert!(parse(&ctx.traceparent()).is_some(), "the new traceparent is valid");
    }
}

#[test]
fn two_traceparents_are_invalid_and_start_a_new_trace() {
    let entropy = SeededEntropy::new(6);
    let ctx = TraceContext::start([VALID, VALID], 1.0, &entropy);
    assert_ne!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(ctx.parent, None);
}

#[test]
fn a_later_version_is_read_by_its_first_four_fields() {
    let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
    assert_eq!(parse(later).map(|p| p.trace_id), Some(0x4bf92f3577b34da6a3ce929d0e0e4736));
    let entropy = SeededEntropy::new(4);
    assert!(TraceContext::start(Some(later), 0.0, &entropy).traceparent().starts_with("00-"), "we speak version 00");
}

#[test]
fn a_new_trace_is_sampled_at_the_ratio() {
    let entropy = SeededEntropy::new(5);
    let n = 20_000;
    let sampled = (0..n).filter(|_| TraceContext::start(None, 0.25, &entropy).sampled).count();
    let share = sampled as f64 / n as f64;
    assert!((0.23..0.27).contains(&share), "{share} of new traces sampled at ratio 0.25");
    assert!((0..100).all(|_| TraceContext::start(None, 1.0, &entropy).sampled));
    assert!((0..100).all(|_| !TraceContext::start(None, 0.0, &entropy).sampled));
}

#[test]
fn new_traces_differ_and_are_the_same_for_the_same_seed() {
    let a: Vec<_> = (0..50).map(|_| TraceContext::start(None, 1.0, &SeededEntropy::new(9)).trace_id).collect();
    assert!(a.iter().all(|t| *t == a[0]), "one seed, one stream");
    let entropy = SeededEntropy::new(9);
    let mut ids: Vec<_> = (0..1000).map(|_| TraceContext::start(None, 1.0, &entropy).trace_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn the_log_shows_32_hex_digits_or_a_dash() {
    assert_eq!(TraceId(0x4bf9).to_string(), "00000000000000000000000000004bf9");
    assert_eq!(TraceId(0).to_string(), "-");
}
