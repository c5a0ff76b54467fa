use proptest::prelude::*;
use proptest::strategy::Strategy;

use super::Strategy as Balance;
use super::*;
use crate::upstream::{Backoff, CircuitBreaker, RetryPolicy, RetryReason};
use std::time::Duration;

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

const LB: &str =
    "mode: load_balancer\nupstreams: { u: { servers: [\"127.0.0.1:9001\"] } }\nload_balancer: { upstream: u }\n";

fn errors(text: &str) -> Vec<String> {
    match load(text, &env(&[])) {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    }
}

#[test]
fn minimal_load_balancer_config_loads_with_defaults() {
    let valid = load(LB, &env(&[])).unwrap();
    assert_eq!(valid.config.server.bind_address, "0.0.0.0:8484");
    assert_eq!(valid.config.server.connection_pool.max_idle, 128);
    assert_eq!(valid.config.upstreams["u"].retries, None);
    assert_eq!(valid.groups[0].retries, 1, "retries defaults to 1");
    assert!(valid.summary().contains("mode lb"));
}

#[test]
fn interpolation_replaces_whole_and_embedded_references_with_types() {
    let text = "mode: ${MODE}\nserver:\n  bind_address: \"127.0.0.1:${PORT}\"\n  workers: ${WORKERS:-3}\n\
                upstreams: { u: { servers: [\"${HOST:-127.0.0.1}:9001\"] } }\nload_balancer: { upstream: u }\n\
                control_api:\n  api_key: ${KEY}\n";
    let valid = load(text, &env(&[("MODE", "lb"), ("PORT", "8080"), ("KEY", "12345")])).unwrap();
    assert_eq!(valid.config.server.bind_address, "127.0.0.1:8080");
    assert_eq!(valid.config.server.workers, Some(3));
    assert_eq!(valid.config.control_api.api_key.as_ref().unwrap().expose(), "12345", "numeric secret stays a string");
}

#[test]
fn a_missing_variable_without_default_is_an_error_naming_the_field() {
    let errs =
        errors("mode: load_balancer\nupstreams: { u: { servers: [\"${NOPE}\"] } }\nload_balancer: { upstream: u }\n");
    assert_eq!(errs, vec!["upstreams.u.servers[0]: environment variable NOPE is not set and has no default"]);
}

#[test]
fn env_values_cannot_inject_yaml_structure() {
    let text = "mode: load_balancer\nupstreams: { u: { servers: [\"${EVIL}\"] } }\nload_balancer: { upstream: u }\n";
    let errs = match load(text, &env(&[("EVIL", "a:1\"]\n  x: [\"b:2")])) {
        Ok(_) => vec![],
        Err(e) => e.lines(),
    };
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("upstreams.u.servers[0]"), "{errs:?}");
}

#[test]
fn unknown_keys_are_errors_with_path_and_line() {
    let errs = errors(
        "mode: load_balancer\nupstreams:\n  u:\n    servers: [\"127.0.0.1:1\"]\n    colour: red\nload_balancer: { upstream: u }\n",
    );
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("upstreams.u.colour (line 5): unknown field `colour`"), "{errs:?}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let errs = errors(
        "mode: api_gateway\nserver: { bind_address: nowhere, upstream_timeout_secs: 0 }\n\
         upstreams: { u: { servers: [\"http://x:1\", \"y\"], strategy: consistent, hash_key: cookie } }\n\
         api_gateway: { routes: { a: { path_pattern: \"(\", upstream: v, methods: [GOT] } } }\n",
    );
    let joined = errs.join("\n");
    for needle in [
        "server.bind_address",
        "server.upstream_timeout_secs",
        "upstreams.u.servers[0]",
        "upstreams.u.servers[1]",
        "upstreams.u.hash_key",
        "api_gateway.routes.a.methods",
        "api_gateway.routes.a.upstream: unknown upstream \"v\"",
    ] {
        assert!(joined.contains(needle), "missing {needle} in:\n{joined}");
    }
}

#[test]
fn empty_and_oversized_files_are_refused() {
    assert_eq!(errors(""), vec!["the file is empty"]);
    let big = "#".repeat(MAX_CONFIG_BYTES + 1);
    assert!(errors(&big)[0].contains("larger than"));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let text = format!("{LB}control_api: {{ api_key: hunter2-secret }}\n");
    let valid = load(&text, &env(&[])).unwrap();
    assert!(!format!("{valid:?}").contains("hunter2-secret"));
}

#[test]
fn the_tracing_section_is_checked_and_its_endpoint_never_shows_its_credentials() {
    let valid = load(LB, &env(&[])).unwrap();
    assert_eq!(valid.config.tracing.sample_ratio, 1.0, "parent-based over always-on, as OpenTelemetry's default");
    assert_eq!(valid.config.tracing.service_name, "locci");
    assert!(valid.config.tracing.otlp_endpoint.is_none());
    let bad = format!(
        "{LB}tracing: {{ otlp_endpoint: \"ftp://user:hunter2@collector:4318\", sample_ratio: 1.5, service_name: \" \" }}\n"
    );
    let problems = errors(&bad).join("\n");
    assert!(problems.contains("tracing.sample_ratio: must be between 0 and 1"), "{problems}");
    assert!(problems.contains("tracing.service_name: must not be empty"), "{problems}");
    assert!(problems.contains("tracing.otlp_endpoint: ftp://[redacted]@collector:4318 is not an http"), "{problems}");
    assert!(!problems.contains("hunter2"), "{problems}");
    let good = format!("{LB}tracing: {{ otlp_endpoint: \"http://user:hunter2@127.0.0.1:4318\", sample_ratio: 0.1 }}\n");
    let valid = load(&good, &env(&[])).unwrap();
    assert!(!format!("{:?}", valid.config).contains("hunter2"));
    assert!(!serde_json::to_string(&valid.config).unwrap().contains("hunter2"));
}

fn arb_config() -> impl Strategy<Value = Config> {
    let server = (1u16..65535, prop::option::of(1usize..16), 1u64..100);
    let strategy = prop::sample::select(vec![
        Balance::RoundRobin,
        Balance::Weighted,
        Balance::Random,
        Balance::LeastRequest,
        Balance::Consistent,
    ]);
    (server, strategy, prop::collection::vec((1u16..65535, 1u32..100), 1..5), any::<bool>()).prop_map(
        |((port, workers, timeout), strategy, servers, gateway)| {
            let mut upstreams = indexmap::IndexMap::new();
            upstreams.insert(
                "u".to_string(),
                UpstreamConfig {
                    servers: servers
                        .iter()
                        .enumerate()
                        .map(|(i, (p, w))| {
                            ServerEntry::Weighted(WeightedServer {
                                address: format!("127.0.0.{}:{p}", i + 1),
                                weight: *w,
                            })
                        })
                        .collect(),
                    strategy,
                    hash_key: None,
                    retries: Some(1),
                    retry: None,
                    tls: false,
                    sni: None,
                    ca_path: None,
                    health_check: None,
                    passive: None,
                    outlier: None,
                    panic_threshold_percent: 0,
                    circuit_breaker: None,
                    slow_start_secs: None,
                },
            );
            let mut routes = indexmap::IndexMap::new();
            routes.insert(
                "r".to_string(),
                RouteConfig {
                    path_pattern: "^/".into(),
                    methods: vec!["GET".into()],
                    upstream: "u".into(),
                    strip_prefix: true,
                    timeout_secs: Some(timeout),
                    middlewares: vec![],
                    max_body_bytes: None,
                    websocket: true,
                },
            );
            Config {
                mode: if gateway { Mode::ApiGateway } else { Mode::LoadBalancer },
                server: ServerConfig {
                    bind_address: format!("127.0.0.1:{port}"),
                    workers,
                    upstream_timeout_secs: timeout,
                    ..ServerConfig::default()
                },
                logging: LoggingConfig::default(),
                upstreams,
                load_balancer: Some(LoadBalancerConfig { upstream: "u".into() }),
                api_gateway: Some(ApiGatewayConfig { routes, middlewares: MiddlewaresConfig::default() }),
                control_api: ControlApiConfig::default(),
                reload: ReloadConfig::default(),
                tracing: TracingConfig::default(),
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    // Arbitrary text never panics the loader: it is a config or a list of problems.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = load(&text, &|_| None);
    }

    // Arbitrary YAML-shaped text built from config words never panics either.
    #[test]
    fn arbitrary_yaml_structures_never_panic(
        lines in prop::collection::vec(
            (prop::sample::select(vec!["mode", "server", "upstreams", "api_gateway", "routes", "servers", "load_balancer",
                                        "path_pattern", "upstream", "middlewares", "weight", "${X}", "- ", "u", "r"]),
             0usize..6,
             prop::sample::select(vec!["", "lb", "gateway", "[\"127.0.0.1:1\"]", "{}", "[]", "^/(", "0", "-1", "~", "${Y:-3}"])),
            0..20)
    ) {
        let text: String = lines.iter().map(|(k, indent, v)| format!("{}{k}: {v}\n", " ".repeat(*indent * 2))).collect();
        let _ = load(&text, &|name| (name == "X").then(|| "mode".to_string()));
    }

    // A valid config serialised and loaded again is the same config.
    #[test]
    fn valid_config_round_trips_through_yaml(config in arb_config()) {
        let valid = validate(config.clone()).expect("generated configs are valid");
        let text = serde_yaml_ng::to_string(&valid.config).unwrap();
        let again = load(&text, &|_| None).unwrap();
        prop_assert_eq!(again.config, config);
    }
}

#[test]
fn an_empty_api_key_means_no_key() {
    let valid = load(&format!("{LB}control_api: {{ api_key: \"${{UNSET_KEY:-}}\" }}\n"), &env(&[])).unwrap();
    assert_eq!(valid.config.control_api.api_key, None);
}

fn lb_with(group: &str) -> String {
    format!(
        "mode: load_balancer\nupstreams: {{ u: {{ servers: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"], {group} }} }}\nload_balancer: {{ upstream: u }}\n"
    )
}

#[test]
fn every_resilience_key_is_checked_with_its_field_path() {
    let cases = [
        ("retries: 1, retry: { attempts: 1 }", "upstreams.u.retries: not with retry"),
        ("passive: { consecutive_failures: 1 }, outlier: {}", "upstreams.u.passive: not with outlier"),
        ("retry: { attempts: 0 }", "upstreams.u.retry.attempts: must be 1 to 10"),
        ("retry: { attempts: 11 }", "upstreams.u.retry.attempts: must be 1 to 10"),
        ("retry: { on: [timeout, teapot] }", "upstreams.u.retry.on[1]: \"teapot\" is not one of connect_failure"),
        ("retry: { on: [] }", "upstreams.u.retry.on: must name at least one reason"),
        ("retry: { on: [retriable_status], retriable_status: [700] }", "upstreams.u.retry.retriable_status[0]"),
        ("retry: { retriable_status: [409] }", "upstreams.u.retry.retriable_status: has no effect"),
        ("retry: { methods: [GET, FETCH] }", "upstreams.u.retry.methods: not HTTP methods: FETCH"),
        ("retry: { methods: [] }", "upstreams.u.retry.methods: must list at least one method"),
        ("retry: { per_try_timeout_secs: 0 }", "upstreams.u.retry.per_try_timeout_secs: must be from 0.001"),
        ("retry: { per_try_timeout_secs: 0.0001 }", "upstreams.u.retry.per_try_timeout_secs: must be from 0.001"),
        ("retry: { per_try_timeout_secs: -1 }", "upstreams.u.retry.per_try_timeout_secs: must be from 0.001"),
        ("retry: { per_try_timeout_secs: .nan }", "upstreams.u.retry.per_try_timeout_secs: must be from 0.001"),
        ("retry: { per_try_timeout_secs: 1e30 }", "upstreams.u.retry.per_try_timeout_secs: must be from 0.001"),
        ("retry: { backoff: { base_ms: 100, max_ms: 10 } }", "upstreams.u.retry.backoff.max_ms"),
        ("retry: { budget: { percent: 0 } }", "upstreams.u.retry.budget.percent: must be 1 to 100"),
        ("retry: { max_body_bytes: 1000000 }", "upstreams.u.retry.max_body_bytes: must be at most 65536"),
        ("outlier: { consecutive_5xx: 0 }", "upstreams.u.outlier.consecutive_5xx: must be at least 1"),
        ("outlier: { base_ejection_secs: 60, max_ejection_secs: 30 }", "upstreams.u.outlier.max_ejection_secs"),
        ("outlier: { max_ejection_percent: 101 }", "upstreams.u.outlier.max_ejection_percent: must be 0 to 100"),
        ("panic_threshold_percent: 150", "upstreams.u.panic_threshold_percent: must be 0 to 100"),
        ("circuit_breaker: {}", "upstreams.u.circuit_breaker: needs max_requests or max_retries"),
        ("circuit_breaker: { max_requests: 0 }", "upstreams.u.circuit_breaker.max_requests: must be at least 1"),
        ("slow_start_secs: 0", "upstreams.u.slow_start_secs: must be at least 1"),
        ("retry: { attempts: 1, jitter: true }", "jitter"),
    ];
    for (group, needle) in cases {
        let joined = errors(&lb_with(group)).join("\n");
        assert!(joined.contains(needle), "{group}: missing {needle:?} in:\n{joined}");
    }
}

#[test]
fn resilience_defaults_are_those_of_the_spec() {
    let valid = load(&lb_with("retry: {}, outlier: {}, circuit_breaker: { max_requests: 9 }"), &env(&[])).unwrap();
    let g = &valid.groups[0];
    let retry = g.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 1);
    assert_eq!(g.retries, 0, "retry covers connect failures itself");
    for reason in RetryReason::ALL {
        let on = RetryPolicy::DEFAULT_ON.contains(&reason);
        assert_eq!(retry.on.has(reason), on, "{reason:?}");
    }
    assert!(retry.resends("PUT") && retry.resends("GET") && !retry.resends("POST") && !retry.resends("PATCH"));
    assert_eq!(retry.backoff, Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) });
    assert_eq!((retry.budget, retry.max_body_bytes, retry.per_try_timeout), (None, 65536, None));
    let fraction = load(&lb_with("retry: { per_try_timeout_secs: 0.15 }"), &env(&[])).unwrap();
    let per_try = fraction.groups[0].retry.as_ref().and_then(|r| r.per_try_timeout);
    assert_eq!(per_try, Some(Duration::from_millis(150)), "a fraction of a second is a per-try timeout under one");
    let o = g.outlier.unwrap();
    assert_eq!((o.consecutive_5xx, o.consecutive_gateway_failure), (Some(5), None));
    assert_eq!((o.base_ejection, o.max_ejection), (Duration::from_secs(30), Duration::from_secs(300)));
    assert_eq!(o.max_ejection_percent, 50);
    assert_eq!(g.panic_threshold_percent, 0);
    assert_eq!(g.circuit_breaker, Some(CircuitBreaker { max_requests: Some(9), max_retries: None }));
    let plain = load(&lb_with("strategy: round_robin"), &env(&[])).unwrap();
    let g = &plain.groups[0];
    assert!(g.retry.is_none() && g.outlier.is_none() && g.circuit_breaker.is_none() && g.slow_start.is_none());
}
