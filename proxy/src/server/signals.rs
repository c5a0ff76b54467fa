//! Process signals: SIGHUP reloads the config; SIGTERM drains and exits; SIGQUIT hands the listening
//! sockets to a new process (graceful upgrade) and drains; SIGINT exits at once.
//!
//! Pingora's own watcher has no SIGHUP, and after SIGTERM it always waits its whole grace period; this one
//! exits as soon as the requests in flight are done, bounded by `graceful_shutdown_timeout_secs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::app::Shared;

/// Pingora keeps accepting this long after handing its sockets to a new process (its CLOSE_TIMEOUT).
pub const UPGRADE_HANDOVER: Duration = Duration::from_secs(5);

/// How long an exit waits for the last spans to reach the collector.
const SPAN_FLUSH: Duration = Duration::from_secs(5);

/// How often the drain watcher looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// locci's signal handling.
pub struct Signals {
    shared: Arc<Shared>,
    grace: Duration,
}

impl Signals {
    /// Handling over `shared`, draining for at most `grace`.
    pub fn new(shared: Arc<Shared>, grace: Duration) -> Signals {
        Signals { shared, grace }
    }

    /// Exits the process once no request is in flight (after `delay`), or when `grace` has passed.
    fn exit_when_drained(&self, delay: Duration) {
        let shared = Arc::clone(&self.shared);
        let grace = self.grace;
        let spawned = std::thread::Builder::new().name("drain".into()).spawn(move || {
            std::thread::sleep(delay);
            let mut waited = Duration::ZERO;
            while shared.inflight() > 0 && waited < grace {
                std::thread::sleep(DRAIN_POLL);
                waited += DRAIN_POLL;
            }
            tracing::info!(in_flight = shared.inflight(), "drained, exiting");
            shared.finish_spans(SPAN_FLUSH);
            std::process::exit(0);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the drain watcher; Pingora's grace period applies");
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let kinds = [SignalKind::quit(), SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()];
        let [Ok(mut quit), Ok(mut term), Ok(mut int), Ok(mut hup)] = kinds.map(signal) else {
            tracing::error!("cannot install signal handlers; signals keep their default actions");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let shared = Arc::clone(&self.shared);
                    if tokio::task::spawn_blocking(move || shared.reload()).await.is_err() {
                        tracing::error!("reload task failed");
                    }
                }
                _ = term.recv() => {
                    tracing::info!(in_flight = self.shared.inflight(), "SIGTERM: draining");
                    self.shared.start_draining();
                    self.exit_when_drained(Duration::from_millis(100));
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT: handing the listeners to the new process");
                    self.shared.start_draining();
                    self.exit_when_drained(UPGRADE_HANDOVER + Duration::from_millis(500));
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}
