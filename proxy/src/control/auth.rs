//! Bearer-key authentication for every endpoint but `/healthz`, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::Shared;

/// Lets the request through when no key is configured or the bearer key matches.
pub async fn require_key(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let runtime = shared.runtime();
    if let Some(key) = &runtime.config().control_api.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(key.expose().as_bytes()).into();
        if !ok {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
}
