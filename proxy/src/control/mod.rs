//! The control API (SPEC.md section 4): status, config, routes, upstreams, reload and metrics, behind a
//! bearer key. `router(shared)` is the whole API; `ControlService` serves it as a Pingora background service.

mod auth;
mod error;
mod handlers;
mod service;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};

pub use error::ApiError;
pub use service::ControlService;

use crate::app::Shared;

/// Largest request body the control API accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The control API over shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(handlers::status))
        .route("/api/v1/config", get(handlers::config))
        .route("/api/v1/explain", get(handlers::explain))
        .route("/api/v1/traffic-profile", get(handlers::traffic_profile))
        .route("/api/v1/routes", get(handlers::list_routes).post(handlers::add_route))
        .route("/api/v1/routes/{name}", delete(handlers::delete_route))
        .route("/api/v1/upstreams", get(handlers::list_upstreams).post(handlers::add_upstream))
        .route("/api/v1/upstreams/{name}", delete(handlers::delete_upstream))
        .route("/api/v1/upstreams/{name}/servers", post(handlers::add_server))
        .route("/api/v1/upstreams/{name}/servers/{address}", delete(handlers::delete_server))
        .route("/api/v1/reload", post(handlers::reload))
        .route("/api/v1/metrics", get(handlers::metrics))
        .route("/metrics", get(handlers::metrics))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), auth::require_key));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

#[cfg(test)]
mod tests;
