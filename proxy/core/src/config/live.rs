//! What a running proxy may change live, and what it shows of its config.

use super::{Config, ConfigError};

/// The changes from `old` to `new` that only a restart can apply; empty when the reload may proceed.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    let mut check = |changed: bool, path: &str| {
        if changed {
            problems.push(ConfigError::at(path, "changed: this needs a restart, not a reload (old config kept)"));
        }
    };
    check(old.server.bind_address != new.server.bind_address, "server.bind_address");
    check(old.server.tls != new.server.tls, "server.tls");
    check(old.server.workers != new.server.workers, "server.workers");
    check(old.control_api.bind_address != new.control_api.bind_address, "control_api.bind_address");
    check(old.control_api.enabled != new.control_api.enabled, "control_api.enabled");
    problems
}

/// The config as JSON; every secret renders as `"[redacted]"` by its type ([`super::Secret`]).
pub fn redacted_json(config: &Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{REDACTED, parse};

    const BASE: &str = "mode: api_gateway\nupstreams: { u: { servers: [\"127.0.0.1:1\"] } }\n\
        api_gateway:\n  routes: { r: { path_pattern: \"^/\", upstream: u } }\n  middlewares: { authentication: { jwt_secret: s3cr3t-jwt } }\n\
        control_api: { api_key: k3y-s3cr3t }\n";

    #[test]
    fn redaction_removes_every_secret_and_keeps_the_rest() {
        let config = parse(BASE, &|_| None).unwrap();
        let text = redacted_json(&config).to_string();
        assert!(!text.contains("s3cr3t-jwt") && !text.contains("k3y-s3cr3t"), "{text}");
        assert_eq!(text.matches(REDACTED).count(), 2);
        assert!(text.contains("127.0.0.1:1"));
    }

    #[test]
    fn listener_changes_need_a_restart_and_others_do_not() {
        let old = parse(BASE, &|_| None).unwrap();
        let mut new = old.clone();
        new.upstreams["u"].retries = Some(3);
        assert!(restart_needed(&old, &new).is_empty());
        new.server.bind_address = "127.0.0.1:9999".into();
        new.control_api.bind_address = "127.0.0.1:9998".into();
        let paths: Vec<String> = restart_needed(&old, &new).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["server.bind_address", "control_api.bind_address"]);
    }
}
