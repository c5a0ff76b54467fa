//! What a running proxy may change live, and what it shows of its config.

use super::{Config, ConfigError};

/// What a secret is replaced with in any output.
pub const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets wherever they appear.
pub const SECRET_KEYS: [&str; 2] = ["jwt_secret", "api_key"];

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

/// The config as JSON with every secret replaced by `"[redacted]"`.
pub fn redacted_json(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) && !v.is_null() {
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

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
        new.upstreams["u"].retries = 3;
        assert!(restart_needed(&old, &new).is_empty());
        new.server.bind_address = "127.0.0.1:9999".into();
        new.control_api.bind_address = "127.0.0.1:9998".into();
        let paths: Vec<String> = restart_needed(&old, &new).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["server.bind_address", "control_api.bind_address"]);
    }
}
