//! The proxy's one constructor, and the state every request and background task shares.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use locci_core::clock::{Clock, Entropy, OsEntropy, TokioClock};
use locci_core::{Runtime, ValidConfig};
use pingora_core::protocols::tls::CaType;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;

use crate::server::gateway::Gateway;
use crate::server::transport::{NativeTransport, Prober, TcpProber, UpstreamTransport};

/// What differs between production and simulation: time, randomness and the network.
#[derive(Clone)]
pub struct Env {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub entropy: Arc<dyn Entropy>,
    /// How the proxy connects to upstream servers.
    pub transport: Arc<dyn UpstreamTransport>,
    /// How health checks reach upstream servers.
    pub prober: Arc<dyn Prober>,
}

impl Env {
    /// The production environment: tokio time, OS-seeded randomness, kernel sockets.
    pub fn production() -> Env {
        Env {
            clock: Arc::new(TokioClock::new()),
            entropy: Arc::new(OsEntropy::new()),
            transport: Arc::new(NativeTransport),
            prober: Arc::new(TcpProber),
        }
    }
}

/// State shared by every request, the health driver and the control plane.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The environment.
    pub env: Env,
    /// Upstream CA bundles by path, read when a config is applied (never on the request path).
    cas: ArcSwap<BTreeMap<String, Arc<CaType>>>,
    /// Serialises changes so each builds on the one before it.
    change: Mutex<()>,
}

impl Shared {
    /// Shared state serving `valid` as generation 1.
    pub fn new(valid: ValidConfig, env: Env) -> Arc<Shared> {
        let runtime = Runtime::build(valid, None, 1, env.clock.now());
        let cas = ArcSwap::from_pointee(read_cas(&runtime));
        Arc::new(Shared { runtime: ArcSwap::from_pointee(runtime), env, cas, change: Mutex::new(()) })
    }

    /// The CA bundle read from `path`, if the current config names it.
    pub fn ca(&self, path: &str) -> Option<Arc<CaType>> {
        self.cas.load().get(path).cloned()
    }

    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in a new validated config; returns the new generation. In-flight requests keep theirs.
    pub fn apply(&self, valid: ValidConfig) -> u64 {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let generation = old.generation() + 1;
        let next = Runtime::build(valid, Some(&old), generation, self.env.clock.now());
        self.cas.store(Arc::new(read_cas(&next)));
        self.runtime.store(Arc::new(next));
        generation
    }
}

/// Builds the proxy application over `shared`; production wraps it in a Pingora listening service, the
/// simulator feeds it simulated connections.
pub fn build_app(shared: Arc<Shared>, conf: &Arc<ServerConf>) -> HttpProxy<Gateway> {
    pingora_proxy::http_proxy(conf, Gateway::new(shared))
}

fn read_cas(runtime: &Runtime) -> BTreeMap<String, Arc<CaType>> {
    let mut cas = BTreeMap::new();
    for pool in runtime.pools() {
        if let Some(path) = &pool.spec().ca_path {
            match crate::config_file::read_ca_bundle(path) {
                Some(bundle) => {
                    cas.insert(path.clone(), Arc::new(bundle));
                }
                None => tracing::error!(upstream = pool.name(), path = %path, "cannot read CA bundle"),
            }
        }
    }
    cas
}
