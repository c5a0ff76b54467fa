//! JWT authentication: `Authorization: Bearer <JWT>` verified with jsonwebtoken.
//!
//! The algorithm list is enforced before any key is used, and each algorithm family has its own key, so a
//! token cannot pick its own verification (no `none`, no RSA public key used as an HMAC secret).
//! jsonwebtoken's own `exp`/`nbf` checks read the system clock, so they are off; ours use the Clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use regex::Regex;
use serde::Deserialize;

use super::jwks::{JwksSource, KeyStore, Lookup};
use crate::config::AuthConfig;
use crate::request::RequestInfo;

/// Longest token accepted, so a hostile header cannot make verification expensive.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a request was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthReject {
    /// No bearer token.
    Missing,
    /// Not a well-formed JWT.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// The header names an algorithm that is not allowed (including `none`).
    WrongAlgorithm,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` missing or wrong.
    WrongIssuer,
    /// `aud` missing or wrong.
    WrongAudience,
    /// The token's `kid` is not in the JWKS key set (or no set has been fetched yet).
    UnknownKey,
}

impl AuthReject {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReject::Missing => "missing",
            AuthReject::Malformed => "malformed",
            AuthReject::BadSignature => "bad_signature",
            AuthReject::WrongAlgorithm => "wrong_algorithm",
            AuthReject::Expired => "expired",
            AuthReject::NotYetValid => "not_yet_valid",
            AuthReject::WrongIssuer => "wrong_issuer",
            AuthReject::WrongAudience => "wrong_audience",
            AuthReject::UnknownKey => "unknown_key",
        }
    }
}

enum Excluded {
    Exact(String),
    Pattern(Regex),
}

/// A compiled JWT verifier.
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    /// The JWKS key set, for the allowed algorithms that have no static key.
    jwks: Option<Arc<KeyStore>>,
    /// The allowed algorithms, each with its own validation: jsonwebtoken refuses a key whose family differs
    /// from any algorithm a validation lists, so one validation cannot serve HS256 and RS256 together.
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    excluded: Vec<Excluded>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Algorithm> = self.keys.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Authenticator").field("algorithms", &algs).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TimeClaims {
    exp: Option<f64>,
    nbf: Option<f64>,
}

impl Authenticator {
    /// Checks and compiles the section; reads the public key file.
    pub fn compile(c: &AuthConfig, path: &str, problem: &mut dyn FnMut(String, String)) -> Option<Authenticator> {
        let before_ok = std::cell::Cell::new(true);
        let mut fail = |p: String, m: String| {
            before_ok.set(false);
            problem(p, m);
        };
        if c.jwt_secret.is_none() && c.jwt_public_key_path.is_none() && c.jwks_url.is_none() {
            fail(format!("{path}.jwt_secret"), "auth needs jwt_secret, jwt_public_key_path or jwks_url".into());
        }
        let jwks = c.jwks_url.as_ref().map(|url| {
            if c.jwt_public_key_path.is_some() {
                fail(
                    format!("{path}.jwks_url"),
                    "jwks_url and jwt_public_key_path both give the keys of RS, PS, ES and EdDSA tokens: keep one".into(),
                );
            }
            if !url.is_http() {
                fail(format!("{path}.jwks_url"), format!("{url} is not an http:// or https:// URL"));
            }
            if c.jwks_refresh_secs == 0 {
                fail(format!("{path}.jwks_refresh_secs"), "must be at least 1".into());
            }
            if let Some(ca) = c.jwks_ca_path.as_ref().filter(|ca| !std::path::Path::new(ca).is_file()) {
                fail(format!("{path}.jwks_ca_path"), format!("file {ca:?} does not exist"));
            }
            if !c.algorithms.iter().any(|a| a.parse::<Algorithm>().is_ok_and(|a| !is_hmac(a))) {
                fail(
                    format!("{path}.algorithms"),
                    "jwks_url needs an RS, PS, ES or EdDSA algorithm in algorithms (HMAC keys come from jwt_secret only)"
                        .into(),
                );
            }
            Arc::new(KeyStore::new(JwksSource {
                url: url.expose().to_owned(),
                refresh: Duration::from_secs(c.jwks_refresh_secs.max(1)),
                ca_path: c.jwks_ca_path.clone(),
            }))
        });
        if c.jwks_url.is_none() && c.jwks_ca_path.is_some() {
            fail(format!("{path}.jwks_ca_path"), "is for jwks_url, which is not set".into());
        }
        if c.jwt_secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            fail(format!("{path}.jwt_secret"), "must not be empty".into());
        }
        if c.algorithms.is_empty() {
            fail(format!("{path}.algorithms"), "no algorithms".into());
        }
        let pem = c.jwt_public_key_path.as_ref().and_then(|file| match std::fs::read(file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                fail(format!("{path}.jwt_public_key_path"), format!("cannot read {file:?}: {e}"));
                None
            }
        });
        let mut keys = Vec::new();
        let mut allowed = Vec::new();
        for (i, name) in c.algorithms.iter().enumerate() {
            let field = format!("{path}.algorithms[{i}]");
            let Ok(alg) = name.parse::<Algorithm>() else {
                fail(field, format!("unknown algorithm {name:?}"));
                continue;
            };
            allowed.push(alg);
            if jwks.is_some() && !is_hmac(alg) {
                // Its keys come from the JWKS set, per token by `kid`.
                continue;
            }
            let key = match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => match &c.jwt_secret {
                    Some(s) => Ok(DecodingKey::from_secret(s.expose().as_bytes())),
                    None => Err(format!("{name} needs jwt_secret")),
                },
                _ => match &pem {
                    None if c.jwt_public_key_path.is_none() => Err(format!("{name} needs jwt_public_key_path")),
                    None => continue,
                    Some(pem) => match alg {
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                        _ => DecodingKey::from_rsa_pem(pem),
                    }
                    .map_err(|e| format!("jwt_public_key_path is not a {name} public key: {e}")),
                },
            };
            match key {
                Ok(k) => keys.push((alg, k)),
                Err(m) => fail(field, m),
            }
        }
        let mut excluded = Vec::new();
        for (i, p) in c.excluded_paths.iter().enumerate() {
            if p.starts_with('^') {
                match Regex::new(p) {
                    Ok(r) => excluded.push(Excluded::Pattern(r)),
                    Err(e) => fail(format!("{path}.excluded_paths[{i}]"), format!("invalid regex: {e}")),
                }
            } else {
                excluded.push(Excluded::Exact(p.clone()));
            }
        }
        let mut validation = Validation::new(allowed.first().copied().unwrap_or(Algorithm::HS256));
        validation.algorithms = allowed;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = c.leeway_secs;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = c.audience.is_some();
        if let Some(aud) = &c.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let validations = validation
            .algorithms
            .iter()
            .map(|alg| {
                let mut one = validation.clone();
                one.algorithms = vec![*alg];
                (*alg, one)
            })
            .collect();
        before_ok.get().then_some(Authenticator { keys, jwks, validations, leeway: c.leeway_secs, excluded })
    }

    /// The JWKS key set it verifies with, when `jwks_url` is set.
    pub fn jwks(&self) -> Option<&Arc<KeyStore>> {
        self.jwks.as_ref()
    }

    /// Whether the path skips authentication.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| match e {
            Excluded::Exact(p) => p == path,
            Excluded::Pattern(r) => r.is_match(path),
        })
    }

    /// Verifies the request's bearer token at `now` (wall time for `exp`/`nbf`, monotonic time for the JWKS
    /// early refresh).
    pub fn check(&self, req: &RequestInfo<'_>, now: super::Now) -> Result<(), AuthReject> {
        if self.is_excluded(req.path) {
            return Ok(());
        }
        let header = req.headers.get("authorization").ok_or(AuthReject::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthReject::Missing)?;
        self.verify_at(token, now.unix, Some(now.mono))
    }

    /// Verifies one token at wall time `unix_now` (an unknown JWKS `kid` does not bring a refresh forward).
    pub fn verify(&self, token: &str, unix_now: Duration) -> Result<(), AuthReject> {
        self.verify_at(token, unix_now, None)
    }

    fn verify_at(&self, token: &str, unix_now: Duration, mono: Option<Instant>) -> Result<(), AuthReject> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthReject::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(e.kind()))?;
        // The algorithm list first: a token cannot choose an algorithm, and so a key, the operator did not allow.
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthReject::WrongAlgorithm);
        };
        let set;
        let key = match (self.keys.iter().find(|(a, _)| *a == header.alg), &self.jwks) {
            (Some((_, key)), _) => key,
            (None, Some(store)) if !is_hmac(header.alg) => {
                set = store.keys();
                match set.lookup(header.kid.as_deref(), header.alg) {
                    Lookup::Found(key) => key,
                    Lookup::Mismatch => return Err(AuthReject::WrongAlgorithm),
                    Lookup::Unknown => {
                        if let Some(now) = mono {
                            store.unknown_kid(now);
                        }
                        return Err(AuthReject::UnknownKey);
                    }
                }
            }
            (None, _) => return Err(AuthReject::WrongAlgorithm),
        };
        let data = jsonwebtoken::decode::<TimeClaims>(token, key, validation).map_err(|e| map_error(e.kind()))?;
        let now = unix_now.as_secs_f64();
        let leeway = self.leeway as f64;
        if data.claims.exp.is_some_and(|exp| now > exp + leeway) {
            return Err(AuthReject::Expired);
        }
        if data.claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthReject::NotYetValid);
        }
        Ok(())
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn map_error(kind: &ErrorKind) -> AuthReject {
    match kind {
        ErrorKind::InvalidSignature => AuthReject::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthReject::WrongAlgorithm
        }
        ErrorKind::UnsupportedAlgorithm => AuthReject::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthReject::Expired,
        ErrorKind::ImmatureSignature => AuthReject::NotYetValid,
        ErrorKind::InvalidIssuer => AuthReject::WrongIssuer,
        ErrorKind::InvalidAudience => AuthReject::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthReject::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthReject::WrongAudience,
        _ => AuthReject::Malformed,
    }
}
