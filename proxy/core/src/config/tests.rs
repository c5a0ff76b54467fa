use proptest::prelude::*;
use proptest::strategy::Strategy;

use super::Strategy as Balance;
use super::*;

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
    assert_eq!(valid.config.upstreams["u"].retries, 1);
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
                    retries: 1,
                    tls: false,
                    sni: None,
                    ca_path: None,
                    health_check: None,
                    passive: None,
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
