//! Loading the config from disk for `run`, `check` and reload: the file, `.env`, CLI overrides, and the
//! checks the core cannot make itself (TLS certificate and key parsing, with OpenSSL).

use std::path::Path;

use locci_core::ValidConfig;
use locci_core::config::{self, Config, ConfigError, ConfigErrors, Mode};
use pingora_core::tls::pkey::PKey;
use pingora_core::tls::x509::X509;

/// Command-line values that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--bind`.
    pub bind: Option<String>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(bind) = &self.bind {
            config.server.bind_address = bind.clone();
        }
    }
}

/// Reads, interpolates, validates and checks a config file.
pub fn load_file(path: &Path, overrides: &Overrides) -> Result<ValidConfig, ConfigErrors> {
    validate_parsed(read_file(path, overrides)?)
}

/// Reads and interpolates a config file and applies the overrides, without validating.
pub fn read_file(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::one(ConfigError::at("", format!("cannot read {}: {e}", path.display()))))?;
    if meta.len() > config::MAX_CONFIG_BYTES as u64 {
        return Err(ConfigErrors::one(ConfigError::at(
            "",
            format!("{} is larger than {} bytes", path.display(), config::MAX_CONFIG_BYTES),
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(ConfigError::at("", format!("cannot read {}: {e}", path.display()))))?;
    parse_text(&text, overrides)
}

/// Interpolates, validates and checks config text, with the process environment.
pub fn load_text(text: &str, overrides: &Overrides) -> Result<ValidConfig, ConfigErrors> {
    validate_parsed(parse_text(text, overrides)?)
}

fn parse_text(text: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    let mut parsed = config::parse(text, &env)?;
    overrides.apply(&mut parsed);
    Ok(parsed)
}

/// Validates a parsed config with the core's rules plus the TLS checks only OpenSSL can make: the one
/// validation that the file, reloads and the control API all share.
pub fn validate_parsed(parsed: Config) -> Result<ValidConfig, ConfigErrors> {
    let tls_problems = check_tls(&parsed);
    match config::validate(parsed) {
        Ok(valid) if tls_problems.is_empty() => Ok(valid),
        Ok(_) => Err(ConfigErrors(tls_problems)),
        Err(mut errors) => {
            // The core already reports missing files; add only what it cannot see.
            let extra: Vec<ConfigError> =
                tls_problems.into_iter().filter(|p| !errors.0.iter().any(|e| e.path == p.path)).collect();
            errors.0.extend(extra);
            Err(errors)
        }
    }
}

/// Reads a PEM bundle of CA certificates; `None` when it is missing, unreadable or holds no certificate.
pub fn read_ca_bundle(path: &str) -> Option<Box<[X509]>> {
    let pem = std::fs::read(path).ok()?;
    X509::stack_from_pem(&pem).ok().filter(|c| !c.is_empty()).map(Vec::into_boxed_slice)
}

/// Checks that the listener's certificate and key parse and belong together, and that upstream CA bundles
/// parse.
pub fn check_tls(config: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for (name, upstream) in &config.upstreams {
        if let Some(ca) = &upstream.ca_path
            && Path::new(ca).is_file()
            && read_ca_bundle(ca).is_none()
        {
            problems.push(ConfigError::at(
                format!("upstreams.{name}.ca_path"),
                format!("{ca:?} is not a PEM certificate bundle"),
            ));
        }
    }
    let Some(tls) = &config.server.tls else {
        return problems;
    };
    let cert = match std::fs::read(&tls.cert_path) {
        Err(_) => None, // a missing file is reported by validation
        Ok(pem) => match X509::stack_from_pem(&pem) {
            Ok(chain) if !chain.is_empty() => chain.into_iter().next(),
            _ => {
                problems.push(ConfigError::at(
                    "server.tls.cert_path",
                    format!("{:?} is not a PEM certificate", tls.cert_path),
                ));
                None
            }
        },
    };
    let key = match std::fs::read(&tls.key_path) {
        Err(_) => None,
        Ok(pem) => match PKey::private_key_from_pem(&pem) {
            Ok(key) => Some(key),
            Err(_) => {
                problems.push(ConfigError::at(
                    "server.tls.key_path",
                    format!("{:?} is not a PEM private key", tls.key_path),
                ));
                None
            }
        },
    };
    if let (Some(cert), Some(key)) = (cert, key) {
        let matches = cert.public_key().map(|public| public.public_eq(&key)).unwrap_or(false);
        if !matches {
            problems.push(ConfigError::at(
                "server.tls.key_path",
                format!("{:?} does not belong to the certificate {:?}", tls.key_path, tls.cert_path),
            ));
        }
    }
    problems
}
