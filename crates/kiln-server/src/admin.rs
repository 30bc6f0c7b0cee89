//! The node's admin API under `/admin/v1/`, guarded by bearer tokens (see [`crate::tokens`]).
//!
//! Models (listing needs any token, uploading and removing a `models` token):
//!
//! - `GET /admin/v1/models`: the installed manifests, each with `loaded`, and the memory use;
//! - `PUT /admin/v1/models/{id}?filename=NAME[&task=TASK][&sha256=HEX]`: a `.onnx` or `.gguf`
//!   file as the body, installed as model `id`, replacing an installed model of that id (see
//!   [`crate::model_upload`]);
//! - `DELETE /admin/v1/models/{id}`: deletes the model and its files and unloads it.
//!
//! KV namespaces and keys (reading needs any token, writing a `kv` token):
//!
//! - `GET /admin/v1/kv/namespaces`: `{"namespaces": [ID, ...]}`;
//! - `POST` or `DELETE /admin/v1/kv/namespaces/{ns}`: create or delete a namespace;
//! - `GET /admin/v1/kv/namespaces/{ns}/keys?prefix=&limit=&cursor=`: one page of keys, in the
//!   binding's `list()` shape;
//! - `GET`, `PUT` or `DELETE /admin/v1/kv/namespaces/{ns}/values/{key}`: the raw value (its
//!   metadata and expiration in the `kiln-kv-metadata` and `kiln-kv-expiration` headers); `PUT`
//!   takes `expiration_ttl`, `expiration` and `metadata` (JSON) as query parameters;
//! - `PUT /admin/v1/kv/namespaces/{ns}/bulk`: a JSON array of `{key, value, expiration?,
//!   expiration_ttl?, metadata?, base64?}`, the format of Wrangler's bulk put.
//!
//! Usage (any token):
//!
//! - `GET /admin/v1/usage?worker=NAME&model=ID&since=DURATION`: `{"rows": [...], "total":
//!   {...}}`, one row per (worker, model) with requests, input and output tokens, images and
//!   compute seconds (see [`crate::usage`]). `since` takes `30m`, `24h`, `7d` and the like.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use kiln_kv::{
    is_reserved_namespace, Kv, KvError, ListOptions, PutOptions, MAX_VALUE_BYTES,
    RESERVED_NAMESPACE_PREFIX,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_body;
use crate::tokens::Scope;
use crate::{json_response, AppState};

/// Response header with a value's metadata, as JSON.
pub const METADATA_HEADER: &str = "kiln-kv-metadata";
/// Response header with a value's expiration, in Unix seconds.
pub const EXPIRATION_HEADER: &str = "kiln-kv-expiration";
/// Largest bulk-put body and pair count, as on the hosted API.
const MAX_BULK_BYTES: usize = 100 * 1024 * 1024;
pub const MAX_BULK_PAIRS: usize = 10_000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/v1/models", get(crate::model_upload::list))
        .route(
            "/admin/v1/models/{*id}",
            put(crate::model_upload::upload).delete(crate::model_upload::remove),
        )
        .route("/admin/v1/kv/namespaces", get(list_namespaces))
        .route(
            "/admin/v1/kv/namespaces/{namespace}",
            post(create_namespace).delete(delete_namespace),
        )
        .route("/admin/v1/kv/namespaces/{namespace}/keys", get(list_keys))
        .route("/admin/v1/kv/namespaces/{namespace}/bulk", put(bulk_put))
        .route(
            "/admin/v1/kv/namespaces/{namespace}/values/{*key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/admin/v1/usage", get(usage_report))
}

#[derive(Deserialize)]
struct UsageQuery {
    worker: Option<String>,
    model: Option<String>,
    since: Option<String>,
}

/// `GET /admin/v1/usage`: flushes the node's counters and returns the selected rows.
async fn usage_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<UsageQuery>,
) -> AdminResult {
    authorize(&state, &headers, Scope::Read)?;
    let since = match query.since.as_deref() {
        Some(text) => Some(
            crate::usage::parse_duration(text)
                .map_err(|error| AdminError::new(400, format!("`since`: {error}")))?,
        ),
        None => None,
    };
    let Some(recorder) = state.usage.clone() else {
        return Err(AdminError::new(503, "this node keeps no usage counters"));
    };
    let filter = crate::usage::UsageFilter {
        worker: query.worker,
        model: query.model,
        since,
    };
    let report = tokio::task::spawn_blocking(move || recorder.query(&filter))
        .await
        .map_err(|error| AdminError::new(500, format!("the usage query task failed: {error}")))?
        .map_err(|error| {
            tracing::error!(error = %error, "usage query failed");
            AdminError::new(500, error)
        })?;
    let result = serde_json::to_value(report)
        .map_err(|error| AdminError::new(500, format!("encoding the usage failed: {error}")))?;
    Ok(success(result))
}

/// A refused or failed admin request: `{"success": false, "errors": [{code, message}]}`.
pub(crate) struct AdminError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl AdminError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<KvError> for AdminError {
    fn from(error: KvError) -> Self {
        Self::new(error.status(), error.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(
            status,
            json!({
                "success": false,
                "errors": [{ "code": self.status, "message": self.message }],
            }),
        )
    }
}

pub(crate) type AdminResult = Result<Response, AdminError>;

/// Checks the request's token for `scope`, logging every refusal (never the token).
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(), AdminError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    state
        .tokens
        .authorize(header, scope)
        .map(drop)
        .map_err(|refusal| {
            tracing::warn!(reason = %refusal, scope = scope.as_str(), "admin request rejected");
            AdminError::new(refusal.status(), refusal.to_string())
        })
}

/// Checks the token like [`authorize`] and returns the node's KV store, refusing the node's
/// own namespaces.
fn authorize_kv<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    scope: Scope,
    namespace: Option<&str>,
) -> Result<&'a Kv, AdminError> {
    authorize(state, headers, scope)?;
    if let Some(namespace) = namespace.filter(|id| is_reserved_namespace(id)) {
        tracing::warn!(
            namespace,
            "admin request for a reserved KV namespace rejected"
        );
        return Err(AdminError::new(
            403,
            format!(
                "namespace ids starting with {RESERVED_NAMESPACE_PREFIX} are reserved for the node"
            ),
        ));
    }
    state
        .kv
        .as_ref()
        .ok_or_else(|| AdminError::new(503, "this node has no KV store"))
}

pub(crate) fn success(result: Value) -> Response {
    json_response(StatusCode::OK, json!({ "success": true, "result": result }))
}

async fn list_namespaces(State(state): State<Arc<AppState>>, headers: HeaderMap) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Read, None)?;
    let mut namespaces = kv.list_namespaces().await?;
    namespaces.retain(|id| !is_reserved_namespace(id));
    Ok(success(json!({ "namespaces": namespaces })))
}

async fn create_namespace(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Kv, Some(&namespace))?;
    let created = kv.create_namespace(&namespace).await?;
    tracing::info!(namespace = %namespace, created, "KV namespace created");
    Ok(success(json!({ "id": namespace, "created": created })))
}

async fn delete_namespace(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Kv, Some(&namespace))?;
    kv.delete_namespace(&namespace).await?;
    tracing::info!(namespace = %namespace, "KV namespace deleted");
    Ok(success(json!({ "id": namespace })))
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<f64>,
    cursor: Option<String>,
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Read, Some(&namespace))?;
    let options = ListOptions {
        prefix: query.prefix,
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = kv.namespace(&namespace).list(options).await?;
    Ok(success(page.to_json()))
}

async fn get_value(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Read, Some(&namespace))?;
    let entry = kv
        .namespace(&namespace)
        .get(&key, None)
        .await?
        .ok_or_else(|| {
            AdminError::new(
                404,
                format!("key {key:?} not found in namespace {namespace:?}"),
            )
        })?;
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        entry.value,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(metadata) = &entry.metadata {
        if let Ok(value) = HeaderValue::from_str(&metadata.to_string()) {
            headers.insert(METADATA_HEADER, value);
        }
    }
    if let Some(expiration) = entry.expiration {
        headers.insert(EXPIRATION_HEADER, HeaderValue::from(expiration));
    }
    Ok(response)
}

#[derive(Deserialize)]
struct PutQuery {
    expiration: Option<f64>,
    expiration_ttl: Option<f64>,
    /// JSON text.
    metadata: Option<String>,
}

async fn put_value(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Kv, Some(&namespace))?;
    let metadata = match &query.metadata {
        Some(text) => Some(serde_json::from_str(text).map_err(|error| {
            AdminError::new(
                400,
                format!("the metadata parameter is not valid JSON: {error}"),
            )
        })?),
        None => None,
    };
    let value = read_body(body, MAX_VALUE_BYTES + 1, state.body_timeout)
        .await
        .map_err(|error| AdminError::new(error.status(), error.message))?;
    let options = PutOptions {
        expiration: query.expiration,
        expiration_ttl: query.expiration_ttl,
        metadata,
    };
    kv.namespace(&namespace).put(&key, value, options).await?;
    Ok(success(json!({ "key": key })))
}

async fn delete_value(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Kv, Some(&namespace))?;
    kv.namespace(&namespace).delete(&key).await?;
    Ok(success(json!({ "key": key })))
}

/// One pair of a bulk put, in Wrangler's file format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkPair {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub expiration: Option<f64>,
    #[serde(default)]
    pub expiration_ttl: Option<f64>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// `value` is base64 of the bytes to store.
    #[serde(default)]
    pub base64: bool,
}

impl BulkPair {
    /// Returns the key, the bytes to store and the put options.
    pub fn into_parts(self) -> Result<(String, Bytes, PutOptions), String> {
        let value = if self.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(&self.value)
                .map_err(|error| {
                    format!("key {:?}: value is not valid base64: {error}", self.key)
                })?
        } else {
            self.value.into_bytes()
        };
        let options = PutOptions {
            expiration: self.expiration,
            expiration_ttl: self.expiration_ttl,
            metadata: self.metadata,
        };
        Ok((self.key, Bytes::from(value), options))
    }
}

async fn bulk_put(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> AdminResult {
    let kv = authorize_kv(&state, &headers, Scope::Kv, Some(&namespace))?;
    let body = read_body(body, MAX_BULK_BYTES, state.body_timeout)
        .await
        .map_err(|error| AdminError::new(error.status(), error.message))?;
    let pairs: Vec<BulkPair> = serde_json::from_slice(&body).map_err(|error| {
        AdminError::new(
            400,
            format!("the body must be a JSON array of {{key, value, ...}} objects: {error}"),
        )
    })?;
    let written =
        put_all(&kv.namespace(&namespace), pairs)
            .await
            .map_err(|(written, message)| {
                AdminError::new(
                    400,
                    format!("{message} ({written} pairs before it were written)"),
                )
            })?;
    Ok(success(json!({ "written": written })))
}

/// Writes the pairs in order and returns how many were written; on the first failure,
/// returns how many were written before it and the error.
pub async fn put_all(
    namespace: &kiln_kv::Namespace,
    pairs: Vec<BulkPair>,
) -> Result<usize, (usize, String)> {
    if pairs.len() > MAX_BULK_PAIRS {
        let message = format!(
            "a bulk put takes at most {MAX_BULK_PAIRS} pairs, got {}: split the file",
            pairs.len()
        );
        return Err((0, message));
    }
    let mut written = 0;
    for pair in pairs {
        let (key, value, options) = pair.into_parts().map_err(|error| (written, error))?;
        namespace
            .put(&key, value, options)
            .await
            .map_err(|error| (written, format!("key {key:?}: {error}")))?;
        written += 1;
    }
    Ok(written)
}
