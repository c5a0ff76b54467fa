//! Reading a configuration: YAML text -> `${ENV}` interpolation -> typed [`Config`].
//!
//! serde_yaml_ng (the maintained fork of serde_yaml) parses the text into a tree that keeps mapping order
//! and reports the line and column of syntax errors. Interpolation works on that tree, never on the text,
//! so an environment value can never inject YAML structure.

use serde_yaml_ng::Value;

use super::{Config, ConfigError, ConfigErrors};

/// Looks up an environment variable.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The largest configuration text accepted, so a runaway file cannot exhaust memory.
pub const MAX_CONFIG_BYTES: usize = 8 * 1024 * 1024;

/// Parses YAML text into a [`Config`], replacing `${NAME}` and `${NAME:-default}` from `env`.
pub fn parse(text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::one(ConfigError::at("", format!("file larger than {MAX_CONFIG_BYTES} bytes"))));
    }
    let mut tree: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors::one(yaml_error(&e)))?;
    if tree.is_null() {
        return Err(ConfigErrors::one(ConfigError::at("", "the file is empty")));
    }
    let mut problems = Vec::new();
    interpolate(&mut tree, &mut String::new(), env, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let mut error = ConfigError::at(clean_path(&path), e.inner().to_string());
        error.line = line_of(text, &path);
        ConfigErrors::one(error)
    })
}

fn yaml_error(e: &serde_yaml_ng::Error) -> ConfigError {
    let mut error = ConfigError::at("", format!("invalid YAML: {e}"));
    error.line = e.location().map(|l| l.line());
    error
}

fn clean_path(path: &str) -> String {
    if path == "." { String::new() } else { path.to_string() }
}

/// Finds the line of a typed error by deserializing the raw text once more: the same structural error
/// shows up at the same path, now with a location.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Config>(de) {
        Err(e) if e.path().to_string() == path => e.inner().location().map(|l| l.line()),
        _ => None,
    }
}

fn interpolate(value: &mut Value, path: &mut String, env: EnvLookup<'_>, problems: &mut Vec<ConfigError>) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(Expanded { text, whole }) => *value = if whole { retype(text) } else { Value::String(text) },
            Err(message) => problems.push(ConfigError::at(path.clone(), message)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.as_str().unwrap_or("?"));
                interpolate(item, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => interpolate(&mut tagged.value, path, env, problems),
        _ => {}
    }
}

struct Expanded {
    text: String,
    /// The scalar was exactly one reference, so the value may take a number or boolean type.
    whole: bool,
}

fn expand(s: &str, env: EnvLookup<'_>) -> Result<Expanded, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut references = 0;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Messages never echo the scalar: it may be a secret (`jwt_secret: "${KEY}tail"`).
        let end = after.find('}').ok_or_else(|| "unclosed ${ (no matching })".to_string())?;
        let body = &after[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("invalid variable name in ${…} (letters, digits and _ only)".to_string());
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("environment variable {name} is not set and has no default"));
            }
        }
        references += 1;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let whole = references == 1 && s.starts_with("${") && s.ends_with('}');
    Ok(Expanded { text: out, whole })
}

/// A whole-scalar reference such as `workers: ${WORKERS}` takes the type its value spells, as if the value
/// had been written in the file; anything but a number or boolean stays a string.
fn retype(text: String) -> Value {
    match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(text),
    }
}
