//! Configuration: parse (YAML + `${ENV}`), validate (every problem with its path), compile (into a
//! [`ValidConfig`] that the runtime is built from). Unvalidated config never reaches the core.

mod error;
mod live;
mod load;
mod schema;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use live::{redacted_json, restart_needed};
pub use load::{EnvLookup, MAX_CONFIG_BYTES, parse};
pub use schema::*;
pub use validate::{ValidConfig, validate};

/// Parses and validates YAML text.
pub fn load(text: &str, env: EnvLookup<'_>) -> Result<ValidConfig, ConfigErrors> {
    validate(parse(text, env)?)
}

#[cfg(test)]
mod tests;
