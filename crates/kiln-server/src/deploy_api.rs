//! The admin API of deployed workers (deploys, versions, rollbacks, secrets), the OpenAPI
//! description of the whole admin API, and the middleware that sends a request to the worker
//! routed on its host.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::admin::{authorize, success, AdminError, AdminResult};
use crate::deploy::{Bundle, Deployments, Routed};
use crate::tail::{TailFilter, TailHub};
use crate::tokens::Scope;
use crate::AppState;

/// The OpenAPI description of `/admin/v1/`, served at `/admin/v1/openapi.json`.
const OPENAPI: &str = include_str!("../openapi.json");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/v1/workers", get(list_workers))
        .route("/admin/v1/workers/{name}", put(deploy))
        .route("/admin/v1/workers/{name}/versions", get(list_versions))
        .route("/admin/v1/workers/{name}/rollback", post(rollback))
        .route("/admin/v1/workers/{name}/secrets", get(list_secrets))
        .route("/admin/v1/workers/{name}/tail", get(tail))
        .route(
            "/admin/v1/workers/{name}/secrets/{key}",
            put(put_secret).delete(delete_secret),
        )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn deployments(state: &AppState) -> Result<&Arc<Deployments>, AdminError> {
    state
        .deployments
        .as_ref()
        .ok_or_else(|| AdminError::new(503, "this node runs no deployed workers"))
}

/// Checks the token for `scope` and the worker name, and returns the node's deployments.
fn authorize_worker<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    scope: Scope,
    name: &str,
) -> Result<&'a Arc<Deployments>, AdminError> {
    authorize(state, headers, scope)?;
    check_worker_name(name)?;
    deployments(state)
}

/// Rejects worker names that cannot be a DNS label, since a worker is reachable on
/// `NAME.<domain>`.
fn check_worker_name(name: &str) -> Result<(), AdminError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(AdminError::new(
            400,
            format!(
                "invalid worker name {name:?}: a deployed worker's name is its host name, so use \
                 up to 63 lower-case letters, digits and dashes, not starting or ending with a dash"
            ),
        ))
    }
}

/// Rejects secret names that cannot be a property of `env` as written in code.
fn check_secret_name(name: &str) -> Result<(), AdminError> {
    let mut chars = name.chars();
    let valid = name.len() <= 128
        && chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(AdminError::new(
            400,
            format!(
                "invalid secret name {name:?}: use letters, digits and underscores, starting \
                 with a letter or underscore"
            ),
        ))
    }
}

async fn list_workers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> AdminResult {
    authorize(&state, &headers, Scope::Read)?;
    let deployments = deployments(&state)?;
    let workers: Vec<_> = deployments
        .list()
        .iter()
        .map(|active| {
            json!({
                "name": active.name,
                "version": active.version,
                "host": format!("{}.{}", active.name, deployments.domain()),
            })
        })
        .collect();
    Ok(success(json!({ "workers": workers })))
}

async fn deploy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Deploy, &name)?;
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            AdminError::new(
                413,
                format!(
                    "the bundle is over the node's limit of {} bytes (limits.max_body_bytes in kiln.toml)",
                    state.max_body_bytes
                ),
            )
        })?;
    let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|error| {
        AdminError::new(
            400,
            format!("invalid bundle: {error}. Send {{\"config\": TEXT, \"files\": {{PATH: TEXT}}}} as `kiln deploy` does"),
        )
    })?;
    let info = deployments.deploy(&name, bundle).await?;
    Ok(success(json!({
        "name": name,
        "version": info,
        "host": format!("{name}.{}", deployments.domain()),
    })))
}

async fn list_versions(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Read, &name)?;
    let versions = deployments.versions(&name)?;
    Ok(success(json!({ "name": name, "versions": versions })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The version to put back in service. Default: the one before the version in service.
    version: Option<u64>,
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Deploy, &name)?;
    let request: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            AdminError::new(
                400,
                format!("invalid rollback body: {error}. Send {{\"version\": N}} or nothing"),
            )
        })?
    };
    let info = deployments.rollback(&name, request.version).await?;
    Ok(success(json!({ "name": name, "version": info })))
}

async fn list_secrets(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Read, &name)?;
    let names = deployments
        .secrets()
        .names(&name)
        .map_err(|error| AdminError::new(500, error.to_string()))?;
    Ok(success(json!({ "worker": name, "secrets": names })))
}

async fn put_secret(
    State(state): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Deploy, &name)?;
    check_secret_name(&key)?;
    let value = String::from_utf8(body.to_vec()).map_err(|_| {
        AdminError::new(400, format!("the value of secret {key} is not UTF-8 text"))
    })?;
    deployments.put_secret(&name, &key, &value).await?;
    tracing::info!(worker = %name, secret = %key, "secret stored");
    Ok(success(json!({ "worker": name, "name": key })))
}

async fn delete_secret(
    State(state): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Deploy, &name)?;
    check_secret_name(&key)?;
    if !deployments.delete_secret(&name, &key).await? {
        return Err(AdminError::new(
            404,
            format!("worker {name} has no secret {key}"),
        ));
    }
    tracing::info!(worker = %name, secret = %key, "secret deleted");
    Ok(success(json!({ "worker": name, "name": key })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    status: Option<String>,
    sample: Option<f64>,
}

/// Streams the worker's finished requests as JSON lines, after a first line that reports the
/// connection.
async fn tail(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<TailQuery>, QueryRejection>,
    headers: HeaderMap,
) -> AdminResult {
    let deployments = authorize_worker(&state, &headers, Scope::Read, &name)?;
    let Query(query) = query.map_err(|error| {
        AdminError::new(
            400,
            format!("{error}: pass status=ok|error and sample=RATE (0 to 1)"),
        )
    })?;
    let ok = match query.status.as_deref() {
        None => None,
        Some("ok") => Some(true),
        Some("error") => Some(false),
        Some(other) => {
            return Err(AdminError::new(
                400,
                format!("invalid status {other:?}: use ok or error"),
            ))
        }
    };
    let sample = query.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        return Err(AdminError::new(
            400,
            format!("invalid sample {sample}: give a rate from 0 to 1"),
        ));
    }
    if deployments.active_version(&name).is_none() {
        return Err(AdminError::new(
            404,
            format!("no worker named {name} is deployed on this node"),
        ));
    }
    let (receiver, guard) = TailHub::global().subscribe(&name, TailFilter { ok, sample });
    let connected = json!({ "connected": name }).to_string();
    let first = stream::once(async move { Ok::<_, std::convert::Infallible>(connected + "\n") });
    let events = stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
        let line = receiver.recv().await?;
        Some((Ok(format!("{line}\n")), (receiver, guard)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(first.chain(events)),
    )
        .into_response())
}

/// Sends a request to the deployed worker routed on its host, returns 404 for a host without a
/// worker, and lets the node's API serve the rest.
pub(crate) async fn route_by_host(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(deployments) = &state.deployments else {
        return next.run(request).await;
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host());
    match deployments.route(host, request.uri().path()) {
        Routed::Api => next.run(request).await,
        Routed::Worker(active) => {
            crate::worker::serve_request(
                &deployments.http,
                active.worker.clone(),
                Some(active.version),
                request,
            )
            .await
        }
        Routed::Unavailable(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
            format!("{error}. Deploy or roll back the worker, or fix the node's secrets key"),
        )
            .into_response(),
        Routed::NoWorker(host) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
            format!(
                "no worker is routed to host {host}: deploy a worker named NAME to answer on \
                 NAME.{domain}, add the host to a worker's `routes`, or list it in [deploy] \
                 api_hosts to serve the node's API there",
                domain = deployments.domain()
            ),
        )
            .into_response(),
    }
}
