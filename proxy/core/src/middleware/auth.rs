//! JWT authentication: `Authorization: Bearer <JWT>` verified with jsonwebtoken.
//!
//! The algorithm list is enforced before any key is used, and each algorithm family has its own key, so a
//! token cannot pick its own verification (no `none`, no RSA public key used as an HMAC secret).
//! jsonwebtoken's own `exp`/`nbf` checks read the system clock, so they are off; ours use the Clock.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use regex::Regex;
use serde::Deserialize;

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
    validation: Validation,
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
        if c.jwt_secret.is_none() && c.jwt_public_key_path.is_none() {
            fail(format!("{path}.jwt_secret"), "auth needs jwt_secret or jwt_public_key_path".into());
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
        for (i, name) in c.algorithms.iter().enumerate() {
            let field = format!("{path}.algorithms[{i}]");
            let Ok(alg) = name.parse::<Algorithm>() else {
                fail(field, format!("unknown algorithm {name:?}"));
                continue;
            };
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
        let mut validation = Validation::new(keys.first().map_or(Algorithm::HS256, |(a, _)| *a));
        validation.algorithms = keys.iter().map(|(a, _)| *a).collect();
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
        before_ok.get().then_some(Authenticator { keys, validation, leeway: c.leeway_secs, excluded })
    }

    /// Whether the path skips authentication.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| match e {
            Excluded::Exact(p) => p == path,
            Excluded::Pattern(r) => r.is_match(path),
        })
    }

    /// Verifies the request's bearer token at wall time `unix_now`.
    pub fn check(&self, req: &RequestInfo<'_>, unix_now: Duration) -> Result<(), AuthReject> {
        if self.is_excluded(req.path) {
            return Ok(());
        }
        let header = req.headers.get("authorization").ok_or(AuthReject::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthReject::Missing)?;
        self.verify(token, unix_now)
    }

    /// Verifies one token.
    pub fn verify(&self, token: &str, unix_now: Duration) -> Result<(), AuthReject> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthReject::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(e.kind()))?;
        let key = self.keys.iter().find(|(a, _)| *a == header.alg).map(|(_, k)| k).ok_or(AuthReject::WrongAlgorithm)?;
        let data = jsonwebtoken::decode::<TimeClaims>(token, key, &self.validation).map_err(|e| map_error(e.kind()))?;
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
