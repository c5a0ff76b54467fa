//! Configuration problems, each named by its field path.

use std::fmt;

/// One problem in a configuration, named by the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path, e.g. `api_gateway.routes.users.upstream`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based YAML line, when known.
    pub line: Option<usize>,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into(), line: None }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.path.is_empty()) {
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (Some(line), false) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single problem.
    pub fn one(error: ConfigError) -> Self {
        Self(vec![error])
    }

    /// The problems as lines, for the API and the log.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
