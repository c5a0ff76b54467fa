//! Serves the control API as a Pingora background service, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::app::Shared;

/// How long a process started with `--upgrade` keeps trying to bind the control port while the old
/// process still holds it.
pub const UPGRADE_BIND_WAIT: Duration = Duration::from_secs(30);

/// The control API's listener.
pub struct ControlService {
    shared: Arc<Shared>,
    addr: SocketAddr,
    upgrading: bool,
}

impl ControlService {
    /// A service for `addr`; `upgrading` waits for the port to be freed by the process being replaced.
    pub fn new(shared: Arc<Shared>, addr: SocketAddr, upgrading: bool) -> ControlService {
        ControlService { shared, addr, upgrading }
    }

    async fn bind(&self) -> Option<tokio::net::TcpListener> {
        let deadline = tokio::time::Instant::now() + if self.upgrading { UPGRADE_BIND_WAIT } else { Duration::ZERO };
        loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => return Some(l),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(addr = %self.addr, error = %e, "control API cannot listen");
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.bind().await else { return };
        tracing::info!(addr = %self.addr, "control API listening");
        let app = super::router(Arc::clone(&self.shared));
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "control API stopped");
        }
    }
}
