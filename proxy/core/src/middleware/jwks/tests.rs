use std::time::Duration;

use crate::clock::{Clock, ManualClock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use super::*;
use crate::config::{AuthConfig, SecretUrl};
use crate::middleware::{AuthReject, Authenticator};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh RSA key: its JWK (with `kid`) and the key that signs.
fn rsa(kid: &str) -> (serde_json::Value, EncodingKey, Vec<u8>) {
    let key = Rsa::generate(2048).unwrap();
    let jwk = serde_json::json!({ "kty": "RSA", "kid": kid, "use": "sig", "n": b64(&key.n().to_vec()), "e": b64(&key.e().to_vec()) });
    let public_pem = key.public_key_to_pem().unwrap();
    let pem = PKey::from_rsa(key).unwrap().private_key_to_pem_pkcs8().unwrap();
    (jwk, EncodingKey::from_rsa_pem(&pem).unwrap(), public_pem)
}

/// A fresh P-256 key: its JWK and the key that signs.
fn ec(kid: &str) -> (serde_json::Value, EncodingKey) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (openssl::bn::BigNum::new().unwrap(), openssl::bn::BigNum::new().unwrap());
    key.public_key().affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap()).unwrap();
    let jwk = serde_json::json!({ "kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap()) });
    let pem = PKey::from_ec_key(key).unwrap().private_key_to_pem_pkcs8().unwrap();
    (jwk, EncodingKey::from_ec_pem(&pem).unwrap())
}

fn document(keys: &[&serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &serde_json::json!({ "sub": "a", "exp": 2_000_000_000u64 }), key).unwrap()
}

fn config(algorithms: &[&str]) -> AuthConfig {
    AuthConfig {
        jwt_secret: None,
        jwt_public_key_path: None,
        jwks_url: Some(SecretUrl::new("https://idp.example/jwks.json")),
        jwks_refresh_secs: 300,
        jwks_ca_path: None,
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        issuer: None,
        audience: None,
        leeway_secs: 30,
        excluded_paths: Vec::new(),
    }
}

fn compile(c: &AuthConfig) -> Result<Authenticator, Vec<String>> {
    let mut problems = Vec::new();
    Authenticator::compile(c, "auth", &mut |p, m| problems.push(format!("{p}: {m}"))).ok_or(problems)
}

const NOW: Duration = Duration::from_secs(1_800_000_000);

#[test]
fn a_document_keeps_the_signing_keys_and_names_what_it_skips() {
    let (r, _, _) = rsa("r1");
    let (e, _) = ec("e1");
    let oct = serde_json::json!({ "kty": "oct", "kid": "s", "k": "c2VjcmV0" });
    let enc = serde_json::json!({ "kty": "RSA", "kid": "enc", "use": "enc", "n": r["n"], "e": r["e"] });
    let odd = serde_json::json!({ "kty": "XYZ", "kid": "odd" });
    let (set, skipped) = KeySet::parse(&document(&[&r, &oct, &e, &enc, &odd])).unwrap();
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].contains("symmetric"), "{skipped:?}");
    assert!(skipped[1].contains("not a signing key"), "{skipped:?}");
    assert!(KeySet::parse(b"{\"keys\": []}").is_err());
    assert!(KeySet::parse(b"<html>").is_err());
    assert!(KeySet::parse(&document(&[&oct])).unwrap_err().contains("symmetric"));
}

#[test]
fn a_key_is_chosen_by_kid_and_only_for_an_algorithm_of_its_type() {
    let (r, _, _) = rsa("r1");
    let (e, _) = ec("e1");
    let mut pinned = rsa("r2").0;
    pinned["alg"] = "RS384".into();
    let (set, _) = KeySet::parse(&document(&[&r, &e, &pinned])).unwrap();
    assert!(matches!(set.lookup(Some("r1"), Algorithm::RS256), Lookup::Found(_)));
    assert!(matches!(set.lookup(Some("r1"), Algorithm::PS256), Lookup::Found(_)));
    assert!(matches!(set.lookup(Some("e1"), Algorithm::ES256), Lookup::Found(_)));
    assert!(matches!(set.lookup(Some("r1"), Algorithm::ES256), Lookup::Mismatch));
    assert!(matches!(set.lookup(Some("e1"), Algorithm::RS256), Lookup::Mismatch));
    assert!(matches!(set.lookup(Some("e1"), Algorithm::ES384), Lookup::Mismatch), "P-256 is not ES384's curve");
    assert!(matches!(set.lookup(Some("r2"), Algorithm::RS256), Lookup::Mismatch), "r2 names RS384");
    assert!(matches!(set.lookup(Some("r2"), Algorithm::RS384), Lookup::Found(_)));
    assert!(matches!(set.lookup(Some("nope"), Algorithm::RS256), Lookup::Unknown));
    assert!(matches!(set.lookup(None, Algorithm::ES256), Lookup::Found(_)), "one EC key: no kid needed");
    assert!(matches!(set.lookup(None, Algorithm::RS256), Lookup::Found(_)), "r2 is RS384's only: r1 alone fits");
    assert!(matches!(set.lookup(None, Algorithm::RS384), Lookup::Unknown), "two keys fit RS384: a kid is needed");
}

#[test]
fn tokens_verify_against_the_fetched_set_and_unknown_kids_bring_one_refresh_forward_per_30_seconds() {
    let (r, rkey, _) = rsa("r1");
    let (e, ekey) = ec("e1");
    let auth = compile(&config(&["RS256", "ES256"])).unwrap();
    let store = auth.jwks().unwrap();
    let t0 = ManualClock::new(NOW).now();
    let now = |secs| crate::middleware::Now { mono: t0 + Duration::from_secs(secs), unix: NOW };
    let token = sign(Algorithm::RS256, Some("r1"), &rkey);
    assert_eq!(auth.verify(&token, NOW), Err(AuthReject::UnknownKey), "no set yet: refused, never a crash");
    store.replace(KeySet::parse(&document(&[&r, &e])).unwrap().0);
    assert!(store.loaded());
    assert_eq!(auth.verify(&token, NOW), Ok(()));
    assert_eq!(auth.verify(&sign(Algorithm::ES256, Some("e1"), &ekey), NOW), Ok(()));
    assert_eq!(auth.verify(&sign(Algorithm::RS256, Some("e1"), &rkey), NOW), Err(AuthReject::WrongAlgorithm));
    assert_eq!(auth.verify(&sign(Algorithm::RS256, Some("r1"), &rsa("r1").1), NOW), Err(AuthReject::BadSignature));
    assert_eq!(
        auth.verify(&sign(Algorithm::RS512, Some("r1"), &rkey), NOW),
        Err(AuthReject::WrongAlgorithm),
        "not allowed"
    );
    // Unknown kids: the first asks for an early refresh, the next ones within 30 s do not.
    let stranger = sign(Algorithm::RS256, Some("r9"), &rkey);
    let req = |tok: &str| (format!("Bearer {tok}"),);
    let check = |tok: &str, at| {
        let (value,) = req(tok);
        let headers = [("authorization", value.as_str())];
        let info = crate::request::RequestInfo {
            method: "GET",
            path: "/",
            query: None,
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            headers: &crate::request::HeaderPairs(&headers),
        };
        auth.check(&info, now(at))
    };
    assert!(!store.take_due());
    assert_eq!(check(&stranger, 0), Err(AuthReject::UnknownKey));
    assert!(store.take_due(), "an unknown kid asks for an early refresh");
    assert_eq!(check(&stranger, 10), Err(AuthReject::UnknownKey));
    assert_eq!(check(&stranger, 29), Err(AuthReject::UnknownKey));
    assert!(!store.take_due(), "at most one per 30 s");
    assert_eq!(check(&stranger, 30), Err(AuthReject::UnknownKey));
    assert!(store.take_due(), "30 s later, another");
    assert_eq!(check(&token, 31), Ok(()));
}

#[test]
fn a_public_key_never_serves_as_an_hmac_secret() {
    let (r, _, public_pem) = rsa("r1");
    // The key-confusion attack: HS256 "signed" with the RSA public key's bytes, naming the RSA key.
    let forged = sign(Algorithm::HS256, Some("r1"), &EncodingKey::from_secret(&public_pem));
    let jwks_only = compile(&config(&["RS256"])).unwrap();
    jwks_only.jwks().unwrap().replace(KeySet::parse(&document(&[&r])).unwrap().0);
    assert_eq!(jwks_only.verify(&forged, NOW), Err(AuthReject::WrongAlgorithm));
    let mut both = config(&["RS256", "HS256"]);
    both.jwt_secret = Some(crate::config::Secret::new("an-hmac-secret-that-is-long-enough-1234"));
    let both = compile(&both).unwrap();
    both.jwks().unwrap().replace(KeySet::parse(&document(&[&r])).unwrap().0);
    assert_eq!(both.verify(&forged, NOW), Err(AuthReject::BadSignature), "HS256 is checked with jwt_secret only");
    // Two families in one list each verify with their own key (one validation per algorithm: jsonwebtoken
    // refuses a key when any algorithm of the validation is of another family, which refused every token here).
    let hs = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"an-hmac-secret-that-is-long-enough-1234"));
    assert_eq!(both.verify(&hs, NOW), Ok(()));
    let (r2, r2key, _) = rsa("r2");
    both.jwks().unwrap().replace(KeySet::parse(&document(&[&r, &r2])).unwrap().0);
    assert_eq!(both.verify(&sign(Algorithm::RS256, Some("r2"), &r2key), NOW), Ok(()));
}

#[test]
fn a_secret_and_a_public_key_file_together_each_verify_their_own_family() {
    let (_, rkey, public_pem) = rsa("r1");
    let dir = std::env::temp_dir().join(format!("locci-jwks-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("public.pem");
    std::fs::write(&pem_path, &public_pem).unwrap();
    let mut c = config(&["HS256", "RS256"]);
    c.jwks_url = None;
    c.jwt_secret = Some(crate::config::Secret::new("an-hmac-secret-that-is-long-enough-1234"));
    c.jwt_public_key_path = Some(pem_path.to_string_lossy().into_owned());
    let auth = compile(&c).unwrap();
    let hs = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"an-hmac-secret-that-is-long-enough-1234"));
    assert_eq!(auth.verify(&hs, NOW), Ok(()));
    assert_eq!(auth.verify(&sign(Algorithm::RS256, None, &rkey), NOW), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_keeps_the_set_while_the_new_store_fetches_its_own() {
    let (r, rkey, _) = rsa("r1");
    let old = compile(&config(&["RS256"])).unwrap();
    old.jwks().unwrap().replace(KeySet::parse(&document(&[&r])).unwrap().0);
    let new = compile(&config(&["RS256"])).unwrap();
    new.jwks().unwrap().adopt(old.jwks().unwrap());
    assert_eq!(new.verify(&sign(Algorithm::RS256, Some("r1"), &rkey), NOW), Ok(()));
    let mut elsewhere = config(&["RS256"]);
    elsewhere.jwks_url = Some(SecretUrl::new("https://other.example/jwks.json"));
    let other = compile(&elsewhere).unwrap();
    other.jwks().unwrap().adopt(old.jwks().unwrap());
    assert!(!other.jwks().unwrap().loaded(), "another URL's keys are not adopted");
}

#[test]
fn a_config_is_refused_when_jwks_cannot_work_or_two_sources_give_one_family() {
    let mut both = config(&["RS256"]);
    both.jwt_public_key_path = Some("/etc/hostname".into());
    assert!(compile(&both).unwrap_err().join("\n").contains("jwks_url and jwt_public_key_path both give"));
    let hmac_only = compile(&config(&["HS256"])).unwrap_err().join("\n");
    assert!(hmac_only.contains("jwks_url needs an RS, PS, ES or EdDSA algorithm"), "{hmac_only}");
    let mut bad = config(&["RS256"]);
    bad.jwks_url = Some(SecretUrl::new("ftp://user:hunter2@idp/jwks"));
    bad.jwks_refresh_secs = 0;
    bad.jwks_ca_path = Some("/nonexistent/ca.pem".into());
    let problems = compile(&bad).unwrap_err().join("\n");
    assert!(problems.contains("auth.jwks_url: ftp://[redacted]@idp/jwks is not an http"), "{problems}");
    assert!(!problems.contains("hunter2"));
    assert!(problems.contains("auth.jwks_refresh_secs: must be at least 1"), "{problems}");
    assert!(problems.contains("auth.jwks_ca_path: file \"/nonexistent/ca.pem\" does not exist"), "{problems}");
    let mut stray = config(&["HS256"]);
    stray.jwks_url = None;
    stray.jwt_secret = Some(crate::config::Secret::new("an-hmac-secret-that-is-long-enough-1234"));
    stray.jwks_ca_path = Some("/etc/hostname".into());
    assert!(compile(&stray).unwrap_err().join("\n").contains("jwks_ca_path: is for jwks_url"));
}
