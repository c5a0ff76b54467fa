//! Fetches an identity provider's JWKS document in the background (SPEC §15), on a thread of its own: at
//! start-up, every `jwks_refresh_secs`, and early when the verifier met an unknown `kid` (at most once per
//! 30 s, decided in the core). A failed fetch keeps the last good set; it is logged and counted.

use std::sync::{Arc, Weak};
use std::time::Duration;

use locci_core::clock::Clock;
use locci_core::config::SecretUrl;
use locci_core::middleware::jwks::{KeySet, KeyStore};

use crate::observe::JwksCounts;

/// Largest JWKS document read; a bigger answer is a failed fetch.
const MAX_DOCUMENT: u64 = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed fetch, the next one comes this soon (or at the refresh interval, when that is shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often the thread looks for an early refresh or the end of its store.
const POLL: Duration = Duration::from_millis(100);

/// Starts the fetcher of `store`; it ends once no runtime holds the store any more.
pub fn start(store: &Arc<KeyStore>, counts: JwksCounts, clock: Arc<dyn Clock>) -> std::io::Result<()> {
    let weak = Arc::downgrade(store);
    std::thread::Builder::new().name("locci-jwks".into()).spawn(move || run(&weak, &counts, &*clock)).map(|_| ())
}

fn run(store: &Weak<KeyStore>, counts: &JwksCounts, clock: &dyn Clock) {
    let Some(source) = store.upgrade().map(|s| s.source().clone()) else { return };
    // The URL as logs show it: a password or token in it is redacted.
    let shown = SecretUrl::new(source.url.clone()).to_string();
    let client = match client(source.ca_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %shown, error = %e, "cannot build the JWKS client; tokens needing its keys are refused");
            counts.add("failure");
            return;
        }
    };
    loop {
        let ok = {
            let Some(store) = store.upgrade() else { return };
            fetch_into(&client, (&source.url, &shown), &store, counts, clock)
        };
        let wait = if ok { source.refresh } else { source.refresh.min(RETRY_AFTER_FAILURE) };
        let since = clock.now();
        loop {
            std::thread::sleep(POLL);
            let Some(store) = store.upgrade() else { return };
            if store.take_due() {
                tracing::info!(url = %shown, "a token named a key the JWKS set lacks: refreshing early");
                break;
            }
            if clock.now().saturating_duration_since(since) >= wait {
                break;
            }
        }
    }
}

/// One fetch; the store gets the new set when it is good. Returns whether it was.
fn fetch_into(
    client: &reqwest::blocking::Client,
    (url, shown): (&str, &str),
    store: &KeyStore,
    counts: &JwksCounts,
    clock: &dyn Clock,
) -> bool {
    let started = clock.now();
    match fetch(client, url).and_then(|body| KeySet::parse(&body)) {
        Ok((set, skipped)) => {
            for why in &skipped {
                tracing::warn!(url = %shown, skipped = %why, "JWKS key not used");
            }
            tracing::info!(url = %shown, keys = set.len(), ms = clock.now().saturating_duration_since(started).as_millis() as u64, "JWKS key set fetched");
            store.replace(set);
            counts.add("success");
            true
        }
        Err(e) => {
            counts.add("failure");
            if store.loaded() {
                tracing::warn!(url = %shown, error = %e, "JWKS refresh failed; the last good key set is kept");
            } else {
                tracing::error!(url = %shown, error = %e, "JWKS fetch failed and no key set is loaded yet: tokens needing it are refused");
            }
            false
        }
    }
}

fn client(ca_path: Option<&str>) -> Result<reqwest::blocking::Client, String> {
    let mut builder =
        reqwest::blocking::Client::builder().timeout(FETCH_TIMEOUT).redirect(reqwest::redirect::Policy::limited(3));
    if let Some(path) = ca_path {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read jwks_ca_path {path:?}: {e}"))?;
        // Only this bundle verifies the endpoint, as upstreams' ca_path does.
        builder = builder.tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("jwks_ca_path {path:?}: {e}"))?,
        );
    }
    builder.build().map_err(|e| e.to_string())
}

fn fetch(client: &reqwest::blocking::Client, url: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let response = client.get(url).header("accept", "application/json").send().map_err(describe)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the endpoint answered {status}"));
    }
    let mut body = Vec::new();
    response.take(MAX_DOCUMENT + 1).read_to_end(&mut body).map_err(|e| e.to_string())?;
    if body.len() as u64 > MAX_DOCUMENT {
        return Err(format!("the document is over {MAX_DOCUMENT} bytes"));
    }
    Ok(body)
}

/// A reqwest error with its causes, without the URL it names (which may carry credentials; the log line shows
/// the redacted one beside it).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
