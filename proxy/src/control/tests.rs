//! The control API through its router (axum `oneshot`), without sockets.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::router;
use crate::app::{ConfigSource, Env, Shared};
use crate::config_file::{Overrides, load_text};

const KEY: &str = "control-key-123";
const JWT_SECRET: &str = "jwt-secret-never-shown";

fn shared() -> Arc<Shared> {
    let yaml = format!(
        "mode: api_gateway\nupstreams:\n  users: {{ servers: [\"127.0.0.1:3001\"] }}\n  spare: {{ servers: [\"127.0.0.1:3002\"] }}\n\
         api_gateway:\n  routes:\n    users: {{ path_pattern: \"^/users\", upstream: users, middlewares: [auth] }}\n\
         \x20 middlewares:\n    authentication: {{ jwt_secret: \"{JWT_SECRET}\" }}\ncontrol_api: {{ api_key: \"{KEY}\" }}\n"
    );
    let valid = load_text(&yaml, &Overrides::default()).unwrap();
    Shared::new(valid, Env::production(), ConfigSource::default()).unwrap()
}

async fn call(
    shared: &Arc<Shared>,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router(Arc::clone(shared)).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn healthz_is_open_and_everything_else_needs_the_key() {
    let s = shared();
    assert_eq!(call(&s, "GET", "/healthz", None, None).await, (StatusCode::OK, "ok".into()));
    for uri in
        ["/api/v1/status", "/api/v1/config", "/api/v1/routes", "/api/v1/upstreams", "/metrics", "/api/v1/metrics"]
    {
        let (status, body) = call(&s, "GET", uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(body, r#"{"error":"unauthorized"}"#);
        assert_eq!(call(&s, "GET", uri, Some("wrong"), None).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(call(&s, "GET", uri, Some(KEY), None).await.0, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn config_dump_redacts_every_secret() {
    let s = shared();
    let (status, body) = call(&s, "GET", "/api/v1/config", Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(KEY) && !body.contains(JWT_SECRET), "{body}");
    assert_eq!(body.matches("[redacted]").count(), 2);
}

#[tokio::test]
async fn routes_are_added_validated_and_deleted() {
    let s = shared();
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/routes",
        Some(KEY),
        Some(r#"{"name":"spare","path_pattern":"^/spare","upstream":"spare"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(s.runtime().generation(), 2);
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/routes",
        Some(KEY),
        Some(r#"{"name":"spare","path_pattern":"^/x","upstream":"spare"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) =
        call(&s, "POST", "/api/v1/routes", Some(KEY), Some(r#"{"name":"bad","path_pattern":"^/(","upstream":"nope"}"#))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown upstream") && body.contains("invalid regex"), "{body}");
    let (status, body) = call(
        &s,
        "POST",
        "/api/v1/routes",
        Some(KEY),
        Some(r#"{"name":"typo","path_patern":"^/x","upstream":"spare"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown field"), "{body}");
    assert_eq!(s.runtime().generation(), 2, "refused changes change nothing");
    assert_eq!(call(&s, "DELETE", "/api/v1/routes/spare", Some(KEY), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&s, "DELETE", "/api/v1/routes/spare", Some(KEY), None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upstreams_and_servers_are_managed_with_conflicts_reported() {
    let s = shared();
    let (status, _) =
        call(&s, "POST", "/api/v1/upstreams", Some(KEY), Some(r#"{"name":"new","servers":["127.0.0.1:3003"]}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        call(&s, "POST", "/api/v1/upstreams", Some(KEY), Some(r#"{"name":"new","servers":["127.0.0.1:1"]}"#)).await.0,
        StatusCode::CONFLICT
    );
    let (status, body) = call(&s, "POST", "/api/v1/upstreams", Some(KEY), Some(r#"{"name":"bad","servers":[]}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("upstreams.bad.servers: no servers"), "{body}");
    let (status, _) = call(
        &s,
        "POST",
        "/api/v1/upstreams/new/servers",
        Some(KEY),
        Some(r#"{"address":"127.0.0.1:3004","weight":2}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, body) = call(&s, "GET", "/api/v1/upstreams", Some(KEY), None).await;
    assert!(
        body.contains(
            r#""address":"127.0.0.1:3004","ejected":false,"ejections":0,"healthy":true,"in_flight":0,"weight":2"#
        ),
        "{body}"
    );
    assert_eq!(
        call(&s, "DELETE", "/api/v1/upstreams/new/servers/127.0.0.1:3004", Some(KEY), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, "DELETE", "/api/v1/upstreams/new/servers/127.0.0.1:3004", Some(KEY), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = call(&s, "DELETE", "/api/v1/upstreams/users", Some(KEY), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("route \\\"users\\\""), "{body}");
    assert_eq!(call(&s, "DELETE", "/api/v1/upstreams/new", Some(KEY), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&s, "DELETE", "/api/v1/upstreams/new", Some(KEY), None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reload_without_a_file_is_refused_and_counted() {
    let s = shared();
    let (status, body) = call(&s, "POST", "/api/v1/reload", Some(KEY), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("no config file"), "{body}");
    let (_, metrics) = call(&s, "GET", "/metrics", Some(KEY), None).await;
    assert!(metrics.contains(r#"locci_config_reloads_total{result="failure"} 1"#), "{metrics}");
}

#[tokio::test]
async fn an_upstream_added_by_the_api_takes_the_resilience_policies_and_their_checks() {
    let s = shared();
    let body = r#"{"name":"safe","servers":["127.0.0.1:3005","127.0.0.1:3006"],
        "retry":{"attempts":2,"on":["gateway_error","timeout"],"budget":{"percent":20}},
        "outlier":{"consecutive_gateway_failure":3,"max_ejection_percent":50},
        "panic_threshold_percent":50,"circuit_breaker":{"max_requests":100},"slow_start_secs":30}"#;
    assert_eq!(call(&s, "POST", "/api/v1/upstreams", Some(KEY), Some(body)).await.0, StatusCode::CREATED);
    let rt = s.runtime();
    let pool = rt.pools().iter().find(|p| p.name() == "safe").unwrap();
    let spec = pool.spec();
    assert_eq!(spec.retry.as_ref().map(|r| r.attempts), Some(2));
    assert_eq!(spec.outlier.and_then(|o| o.consecutive_gateway_failure), Some(3));
    assert_eq!((spec.panic_threshold_percent, spec.slow_start), (50, Some(std::time::Duration::from_secs(30))));
    assert_eq!(spec.circuit_breaker.and_then(|c| c.max_requests), Some(100));
    let bad = r#"{"name":"worse","servers":["127.0.0.1:3007"],"retries":2,"retry":{"on":["sometimes"]}}"#;
    let (status, body) = call(&s, "POST", "/api/v1/upstreams", Some(KEY), Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("upstreams.worse.retries: not with retry"), "{body}");
    assert!(body.contains("upstreams.worse.retry.on[0]"), "{body}");
}
