//! JWT keys from an identity provider's JWKS document (SPEC §15): which key verifies a token, and when the
//! set is due for an early refresh. Fetching is the proxy's (off the request path); the set is kept here.
//!
//! A key is chosen by the token's `kid`, and only for an algorithm of its own type: an RSA key verifies RS*
//! and PS*, an EC key ES256 on P-256 or ES384 on P-384, an OKP Ed25519 key EdDSA; a key that names its `alg`
//! verifies that one only. Symmetric (`oct`) keys and keys for encryption (`use: enc`) are never taken from a
//! JWKS: HMAC algorithms are verified with `jwt_secret` alone, so a public key can never serve as an HMAC
//! secret (the key-confusion attack).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How often an unknown `kid` may bring the next refresh forward, at most.
pub const EARLY_REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Most keys taken from one document; the rest are skipped (a hostile or broken endpoint cannot grow it).
pub const MAX_KEYS: usize = 64;

/// The type of a key, as the algorithms it may verify see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key of a set.
struct Key {
    kid: Option<String>,
    kind: KeyType,
    /// The one algorithm the document allows it, when it names one.
    alg: Option<KeyAlgorithm>,
    key: DecodingKey,
}

/// A parsed JWKS document: the keys locci may use.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

/// What looking a token's key up found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The key that verifies it.
    Found(&'a DecodingKey),
    /// No key has that `kid` (or, without a `kid`, no single key of the algorithm's type).
    Unknown,
    /// The key with that `kid` is of another type than the algorithm, or names another algorithm.
    Mismatch,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`); keys locci cannot or must not use are skipped and named in
    /// the second value. An unreadable document, or one with no usable key, is an error.
    pub fn parse(document: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            if set.keys.len() == MAX_KEYS {
                skipped.push(format!("keys after the first {MAX_KEYS}"));
                break;
            }
            match serde_json::from_value::<Jwk>(value).map_err(|e| e.to_string()).and_then(|jwk| usable(&jwk)) {
                Ok(key) => set.keys.push(key),
                Err(why) => skipped.push(format!("key {i}: {why}")),
            }
        }
        if set.keys.is_empty() {
            return Err(format!(
                "no usable key ({})",
                if skipped.is_empty() { "empty".into() } else { skipped.join("; ") }
            ));
        }
        Ok((set, skipped))
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token whose header says `kid` and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let fits = |k: &Key| k.kind.verifies(alg) && k.alg.as_ref().is_none_or(|a| *a == KeyAlgorithm::from(alg));
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if fits(k) => Lookup::Found(&k.key),
                Some(_) => Lookup::Mismatch,
                None => Lookup::Unknown,
            },
            // No `kid`: only a set with exactly one key for the algorithm can say which.
            None => {
                let mut fitting = self.keys.iter().filter(|k| fits(k));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(&k.key),
                    _ => Lookup::Unknown,
                }
            }
        }
    }
}

/// A JWK as a key locci may use, or why not.
fn usable(jwk: &Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyType::P256,
            EllipticCurve::P384 => KeyType::P384,
            _ => return Err("an EC curve other than P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyType::Ed25519,
        AlgorithmParameters::OctetKeyPair(_) => return Err("an OKP curve other than Ed25519".into()),
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: HMAC keys come from jwt_secret only".into());
        }
        _ => return Err("an unknown key type".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable key material: {e}"))?;
    Ok(Key { kid: jwk.common.key_id.clone(), kind, alg: jwk.common.key_algorithm, key })
}

/// Where the keys come from and how often they are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// The document's URL.
    pub url: String,
    /// Time between fetches.
    pub refresh: Duration,
    /// A PEM bundle that verifies the endpoint's certificate, instead of the system's roots.
    pub ca_path: Option<String>,
}

/// The key set in force, shared by the verifier (which reads it per token) and the fetcher (which replaces
/// it); also asks the fetcher for an early refresh when tokens name a key it does not hold.
#[derive(Debug)]
pub struct KeyStore {
    source: JwksSource,
    keys: RwLock<Arc<KeySet>>,
    loaded: std::sync::atomic::AtomicBool,
    /// When an unknown `kid` last brought a refresh forward.
    early: Mutex<Option<Instant>>,
    due: std::sync::atomic::AtomicBool,
}

impl KeyStore {
    /// An empty store for `source` (no key set yet: every token is refused until the first fetch).
    pub fn new(source: JwksSource) -> KeyStore {
        KeyStore {
            source,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: false.into(),
            early: Mutex::new(None),
            due: false.into(),
        }
    }

    /// Where it is fetched from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The set in force.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether a set was ever installed.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Installs a freshly fetched set.
    pub fn replace(&self, set: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.loaded.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Starts from another store's set (a reload keeps the keys while the new store fetches its own).
    pub fn adopt(&self, previous: &KeyStore) {
        if previous.source == self.source && previous.loaded() {
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = previous.keys();
            self.loaded.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// A token named a key the set lacks at `now`: the next refresh is brought forward, at most once per
    /// [`EARLY_REFRESH_EVERY`]. Returns whether this call asked for it.
    pub fn unknown_kid(&self, now: Instant) -> bool {
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        if early.is_some_and(|t| now.saturating_duration_since(t) < EARLY_REFRESH_EVERY) {
            return false;
        }
        *early = Some(now);
        self.due.store(true, std::sync::atomic::Ordering::Release);
        true
    }

    /// Whether an early refresh was asked for since the last call (the fetcher's question).
    pub fn take_due(&self) -> bool {
        self.due.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests;
