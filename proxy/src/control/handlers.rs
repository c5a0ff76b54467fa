//! The control API's endpoints. Every change derives a new config from the current one and goes through
//! `Shared::change`: the same validation as a file, then one atomic swap.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use locci_core::config::{
    Config, Mode, PreflightMode, RouteConfig, ServerEntry, UpstreamConfig, WeightedServer, redacted_json,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::ApiError;
use crate::app::{ChangeError, ReloadError, Shared, refusal};

type Api<T> = Result<T, ApiError>;

pub async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let rt = shared.runtime();
    let upstreams: Map<String, Value> = rt
        .pools()
        .iter()
        .map(|p| {
            let servers: Vec<Value> =
                p.servers().iter().map(|s| json!({ "address": s.addr.text, "healthy": s.is_up() })).collect();
            (p.name().to_string(), json!({ "servers": servers }))
        })
        .collect();
    Json(json!({
        "mode": mode_name(rt.mode()),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.uptime().as_secs(),
        "generation": rt.generation(),
        "upstreams": upstreams,
    }))
}

/// `GET /api/v1/explain?method=GET&path=/x&header=Name:value…`: the live config's explanation, with live health.
pub async fn explain(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Api<Json<Value>> {
    let (mut method, mut path, mut headers, mut client_ip) = (None, None, Vec::new(), None);
    for (key, value) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*key {
            "method" => method = Some(value.into_owned()),
            "path" => path = Some(value.into_owned()),
            "header" => headers.push(value.into_owned()),
            "client_ip" => {
                let ip =
                    value.parse().map_err(|_| ApiError::BadRequest(format!("client_ip {value:?} is not an IP")))?;
                client_ip = Some(ip);
            }
            other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    let path = path.ok_or_else(|| ApiError::BadRequest("path is required".into()))?;
    let method = method.unwrap_or_else(|| "GET".into());
    let asked = crate::explain::Asked::new(&method, &path, &headers, client_ip).map_err(ApiError::BadRequest)?;
    let clock = &shared.env.clock;
    let now = locci_core::middleware::Now { mono: clock.now(), unix: clock.unix_now() };
    let explanation = asked.explain(&shared.runtime(), now);
    serde_json::to_value(explanation).map(Json).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub async fn traffic_profile(State(shared): State<Arc<Shared>>) -> Json<locci_core::profile::TrafficProfile> {
    Json(shared.runtime().traffic_profile(shared.env.clock.unix_now().as_secs()))
}

pub async fn config(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(redacted_json(shared.runtime().config()))
}

pub async fn list_routes(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let rt = shared.runtime();
    let routes: Vec<Value> = rt
        .config()
        .api_gateway
        .iter()
        .flat_map(|gw| gw.routes.iter())
        .map(|(name, route)| with_name(name, route))
        .collect();
    Json(Value::Array(routes))
}

pub async fn add_route(State(shared): State<Arc<Shared>>, body: Json<Value>) -> Api<impl IntoResponse> {
    let (name, route): (String, RouteConfig) = named_body(body.0)?;
    let generation = change(&shared, |c| {
        let gw = c.api_gateway.get_or_insert_with(Default::default);
        if gw.routes.contains_key(&name) {
            return Err(ApiError::Conflict(format!("route {name:?} exists")));
        }
        gw.routes.insert(name.clone(), route.clone());
        Ok(())
    })?;
    Ok((StatusCode::CREATED, Json(json!({ "name": name, "generation": generation }))))
}

pub async fn delete_route(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Api<StatusCode> {
    change(&shared, |c| match c.api_gateway.as_mut().and_then(|gw| gw.routes.shift_remove(&name)) {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("no route {name:?}"))),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_upstreams(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let rt = shared.runtime();
    let groups: Vec<Value> = rt
        .pools()
        .iter()
        .map(|p| {
            let servers: Vec<Value> = p
                .servers()
                .iter()
                .map(|s| {
                    json!({ "address": s.addr.text, "weight": s.weight, "healthy": s.is_up(), "in_flight": s.inflight(),
                            "ejected": s.is_ejected(), "ejections": s.ejections() })
                })
                .collect();
            let strategy = serde_json::to_value(p.spec().strategy).unwrap_or(Value::Null);
            json!({ "name": p.name(), "strategy": strategy, "servers": servers, "panic": p.in_panic() })
        })
        .collect();
    Json(Value::Array(groups))
}

pub async fn add_upstream(State(shared): State<Arc<Shared>>, body: Json<Value>) -> Api<impl IntoResponse> {
    let (name, upstream): (String, UpstreamConfig) = named_body(body.0)?;
    let generation = change(&shared, |c| {
        if c.upstreams.contains_key(&name) {
            return Err(ApiError::Conflict(format!("upstream {name:?} exists")));
        }
        c.upstreams.insert(name.clone(), upstream.clone());
        Ok(())
    })?;
    Ok((StatusCode::CREATED, Json(json!({ "name": name, "generation": generation }))))
}

pub async fn delete_upstream(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Api<StatusCode> {
    change(&shared, |c| {
        if !c.upstreams.contains_key(&name) {
            return Err(ApiError::NotFound(format!("no upstream {name:?}")));
        }
        if let Some(user) = users_of(c, &name).first() {
            return Err(ApiError::Conflict(format!("upstream {name:?} is used by {user}")));
        }
        c.upstreams.shift_remove(&name);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

pub async fn add_server(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Json<Value>,
) -> Api<impl IntoResponse> {
    let server: NewServer = typed(body.0)?;
    let generation = change(&shared, |c| {
        let group = c.upstreams.get_mut(&name).ok_or_else(|| ApiError::NotFound(format!("no upstream {name:?}")))?;
        if group.servers.iter().any(|s| s.address() == server.address) {
            return Err(ApiError::Conflict(format!("{:?} is already in {name:?}", server.address)));
        }
        group
            .servers
            .push(ServerEntry::Weighted(WeightedServer { address: server.address.clone(), weight: server.weight }));
        Ok(())
    })?;
    Ok((StatusCode::CREATED, Json(json!({ "address": server.address, "generation": generation }))))
}

pub async fn delete_server(
    State(shared): State<Arc<Shared>>,
    Path((name, address)): Path<(String, String)>,
) -> Api<StatusCode> {
    change(&shared, |c| {
        let group = c.upstreams.get_mut(&name).ok_or_else(|| ApiError::NotFound(format!("no upstream {name:?}")))?;
        let before = group.servers.len();
        group.servers.retain(|s| s.address() != address);
        if group.servers.len() == before {
            return Err(ApiError::NotFound(format!("no server {address:?} in {name:?}")));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn reload(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Api<Json<Value>> {
    let mut dry_run = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        dry_run = match (key.as_ref(), value.as_ref()) {
            ("dry_run", "true" | "1") => true,
            ("dry_run", "false" | "0") => false,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {key}={value} (known: dry_run=true|false)"
                )));
            }
        };
    }
    let done = tokio::task::spawn_blocking(move || shared.reload_file(dry_run))
        .await
        .map_err(|_| ApiError::BadRequest("reload task failed".into()))?
        .map_err(|e| match e {
            ReloadError::Invalid(errors) => ApiError::ReloadFailed(errors),
            ReloadError::Refused(verdict) => ApiError::PreflightRefused {
                reason: refusal(&verdict),
                verdict: verdict.to_json(PreflightMode::Enforce),
            },
        })?;
    let preflight = done.preflight.as_ref().map_or(Value::Null, |(mode, v)| v.to_json(*mode));
    Ok(Json(
        json!({ "generation": done.generation, "applied": done.applied, "dry_run": dry_run, "preflight": preflight }),
    ))
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = shared.metrics.render(&shared.runtime(), shared.connections());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// Applies `edit` to a copy of the current config through the shared change path.
fn change(shared: &Shared, edit: impl FnOnce(&mut Config) -> Result<(), ApiError>) -> Api<u64> {
    let result = shared.change(|current| {
        let mut next = current.clone();
        edit(&mut next).map(|()| next)
    });
    match result {
        Ok(generation) => {
            tracing::info!(generation, "config changed through the control API");
            Ok(generation)
        }
        Err(ChangeError::Refused(e)) => Err(e),
        Err(ChangeError::Invalid(errors)) => Err(ApiError::Invalid(errors)),
    }
}

/// Splits `{"name": ..., <fields>}` into the name and the typed fields.
fn named_body<T: DeserializeOwned>(body: Value) -> Api<(String, T)> {
    let Value::Object(mut map) = body else { return Err(ApiError::BadRequest("body must be a JSON object".into())) };
    let name = match map.remove("name") {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 128 => n,
        _ => return Err(ApiError::BadRequest("body needs \"name\": a string of 1 to 128 characters".into())),
    };
    Ok((name, typed(Value::Object(map))?))
}

fn typed<T: DeserializeOwned>(value: Value) -> Api<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!("{path}: ") };
        ApiError::BadRequest(format!("{at}{}", e.inner()))
    })
}

fn with_name<T: serde::Serialize>(name: &str, item: &T) -> Value {
    let mut value = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("name".into(), Value::String(name.into()));
    }
    value
}

fn users_of(c: &Config, upstream: &str) -> Vec<String> {
    let mut users: Vec<String> = c
        .api_gateway
        .iter()
        .flat_map(|gw| gw.routes.iter())
        .filter(|(_, r)| r.upstream == upstream)
        .map(|(n, _)| format!("route {n:?}"))
        .collect();
    if c.load_balancer.as_ref().is_some_and(|lb| lb.upstream == upstream) {
        users.push("load_balancer".into());
    }
    users
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::LoadBalancer => "load_balancer",
        Mode::ApiGateway => "api_gateway",
    }
}
