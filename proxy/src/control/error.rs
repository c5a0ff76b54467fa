//! The control API's errors, each one status and a JSON body.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use locci_core::ConfigErrors;

/// Why a control API request failed.
#[derive(Debug)]
pub enum ApiError {
    /// Missing or wrong key: 401.
    Unauthorized,
    /// The body is not what the endpoint takes: 400.
    BadRequest(String),
    /// The change would make an invalid config: 400 with every problem.
    Invalid(ConfigErrors),
    /// No such route, upstream or server: 404.
    NotFound(String),
    /// It exists already, or is still in use: 409.
    Conflict(String),
    /// The reload found problems (old config kept): 422.
    ReloadFailed(ConfigErrors),
    /// An enforced preflight refused the reload (old config kept): 422 with its verdict.
    PreflightRefused {
        /// Why, on one line.
        reason: String,
        /// The verdict as JSON.
        verdict: serde_json::Value,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => {
                let body = Json(serde_json::json!({ "error": "unauthorized" }));
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": m })),
            ApiError::Invalid(e) => {
                (StatusCode::BAD_REQUEST, serde_json::json!({ "error": "invalid change", "problems": e.lines() }))
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, serde_json::json!({ "error": m })),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, serde_json::json!({ "error": m })),
            ApiError::ReloadFailed(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "error": "reload failed, old config kept", "problems": e.lines() }),
            ),
            ApiError::PreflightRefused { reason, verdict } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "error": "reload refused by the preflight, old config kept",
                    "problems": [reason], "preflight": verdict }),
            ),
        };
        (status, Json(body)).into_response()
    }
}
