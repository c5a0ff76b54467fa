use super::*;
use crate::config::{ServerEntry, load};

fn config(servers: &str) -> Config {
    let text = format!(
        "mode: load_balancer\nupstreams:\n  app:\n    servers: {servers}\n  other:\n    servers: [{{ dns: \"app.internal:8080\" }}]\nload_balancer: {{ upstream: app }}\n"
    );
    load(&text, &|_| None).unwrap().config
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn the_names_a_config_asks_for_each_come_once_with_the_shortest_refresh() {
    let c = config(
        "[\"10.0.0.1:80\", \"db.internal:5432\", { dns: \"app.internal:8080\", refresh_secs: 5 }, { srv: \"_http._tcp.app.internal\" }]",
    );
    let w = wanted(&c);
    let names: Vec<String> = w.iter().map(|w| w.name.to_string()).collect();
    assert_eq!(names, ["dns:app.internal:8080", "srv:_http._tcp.app.internal", "db.internal"]);
    assert_eq!(w[0].refresh, Duration::from_secs(5), "the shortest of the entries that name it");
    assert_eq!(w[0].upstreams, ["app", "other"]);
    assert_eq!(w[1].refresh, DEFAULT_REFRESH);
    assert_eq!(w[2].refresh, DEFAULT_REFRESH, "plain hostnames every 30 s");
}

#[test]
fn a_good_answer_replaces_a_failed_or_empty_one_keeps_and_order_does_not_matter() {
    let mut a = Answers::default();
    let name = Name::Dns { host: "app.internal".into(), port: 8080 };
    assert_eq!(a.record(&name, Err("timeout".into())), Outcome::Failed { kept: 0 });
    assert_eq!(a.record(&name, Ok(addrs(&["10.0.0.2:8080", "10.0.0.1:8080"]))), Outcome::Changed);
    assert_eq!(a.record(&name, Ok(addrs(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.1:8080"]))), Outcome::Same);
    assert_eq!(a.record(&name, Err("SERVFAIL".into())), Outcome::Failed { kept: 2 });
    assert_eq!(a.record(&name, Ok(Vec::new())), Outcome::Failed { kept: 2 }, "an empty answer is not a fleet of none");
    assert_eq!(a.record(&name, Ok(addrs(&["10.0.0.3:8080"]))), Outcome::Changed);
    let mut c = config("[{ dns: \"app.internal:8080\" }]");
    a.fill(&mut c);
    let ServerEntry::Discovered(d) = &c.upstreams["app"].servers[0] else { panic!() };
    assert_eq!(d.resolved, addrs(&["10.0.0.3:8080"]));
    a.retain(&[]);
    assert_eq!(a, Answers::default());
}

#[test]
fn a_discovered_entry_compiles_to_its_answers_servers_and_to_none_before_the_first() {
    let text = "mode: load_balancer\nupstreams:\n  app:\n    servers: [\"10.0.0.1:8080\", { dns: \"app.internal:8080\", weight: 3 }]\n    health_check: { interval_secs: 1 }\nload_balancer: { upstream: app }\n";
    let valid = load(text, &|_| None).unwrap();
    assert_eq!(valid.groups[0].servers.len(), 1, "before any answer the entry gives no server (and is no error)");
    let mut c = valid.config.clone();
    let mut a = Answers::default();
    a.record(&Name::Dns { host: "app.internal".into(), port: 8080 }, Ok(addrs(&["10.0.0.1:8080", "10.0.0.2:8080"])));
    a.fill(&mut c);
    let valid = crate::config::validate(c).unwrap();
    let servers = &valid.groups[0].servers;
    assert_eq!(servers.len(), 2, "10.0.0.1:8080 is listed already: it stays the listed server");
    assert_eq!(servers[1].0.text, "10.0.0.2:8080");
    assert_eq!(servers[1].0.host, "app.internal", "the name stays the host (SNI, the checks' Host)");
    assert_eq!(servers[1].1, 3);
    assert!(!serde_json::to_string(&valid.config).unwrap().contains("10.0.0.2"), "answers are never written out");
}

#[test]
fn bad_discovered_entries_are_refused_by_field() {
    let text = "mode: load_balancer\nserver: { resolver: \"dns.internal\" }\nupstreams:\n  app:\n    servers: [{ dns: \"app.internal\" }, { srv: \"bad name\" }, { dns: \"a:1\", srv: \"b\" }, { dns: \"a.b:80\", refresh_secs: 0 }]\nload_balancer: { upstream: app }\n";
    let problems = match load(text, &|_| None) {
        Err(e) => e.lines().join("\n"),
        Ok(_) => panic!("accepted"),
    };
    assert!(problems.contains("upstreams.app.servers[0].dns: \"app.internal\" is not name:port"), "{problems}");
    assert!(problems.contains("upstreams.app.servers[1].srv: \"bad name\" is not a DNS name"), "{problems}");
    assert!(problems.contains("upstreams.app.servers[2]: give one of dns"), "{problems}");
    assert!(problems.contains("upstreams.app.servers[3].refresh_secs: must be at least 1"), "{problems}");
    assert!(problems.contains("server.resolver: \"dns.internal\" is not ip:port"), "{problems}");
}
