//! Kiln's HTTP front. It speaks the hosted Workers AI REST API over the inference service:
//!
//! - `POST /ai/run/{model}`: the bare model result (the shape the `env.AI` binding returns);
//! - `POST /client/v4/accounts/{account_id}/ai/run/{model}`: the result in the v4 envelope;
//! - `GET /ai/models`, `GET /ai/models/search` and the v4 search route: the installed catalog;
//! - `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`: the
//!   OpenAI-compatible API, also under `/client/v4/accounts/{account_id}/ai/v1/`;
//! - `GET /metrics`: the node's metrics in Prometheus text format (see [`install_metrics`]);
//! - `GET /healthz`: liveness; `GET /readyz`: readiness (preloaded models, KV store);
//! - `/admin/v1/...`: the admin API, with bearer tokens (see [`admin`]), including the usage
//!   counters of [`usage`].
//!
//! [`worker_router`] serves a JavaScript worker on every path instead, as `kiln dev` does.

mod admin;
mod body;
mod cache;
mod catalog;
pub mod deploy;
mod deploy_api;
mod errors;
mod metrics;
mod model_upload;
mod openai;
mod run;
pub mod secrets;
mod sse;
pub mod tail;
pub mod tokens;
pub mod usage;
mod worker;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kiln_inference::{request_log, InferenceService};
use tower_http::catch_panic::CatchPanicLayer;

pub use admin::{put_all, BulkPair, EXPIRATION_HEADER, METADATA_HEADER};
pub use deploy::{Bundle, Deployments, WorkerStarter};
pub use errors::ApiError;
pub use metrics::{install as install_metrics, Readiness};
pub use tokens::{Scope, TokenStore};
pub use worker::{
    serve_worker, worker_router, InferenceAi, WorkerHttp, WorkerSlot, WorkerState,
    SCHEDULED_TEST_PATH,
};

/// Response header naming the installed model that really ran, after alias resolution.
pub const MODEL_HEADER: &str = "x-kiln-model";
/// Response header with the request id, as the hosted API names it.
pub const REQUEST_ID_HEADER: &str = "cf-ai-req-id";

/// The id that [`log_request`] gives a request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Shared state of every handler.
pub struct AppState {
    pub inference: Arc<InferenceService>,
    /// Maximum request body, in bytes.
    pub max_body_bytes: usize,
    /// Maximum time to receive a request body.
    pub body_timeout: std::time::Duration,
    /// The node's KV store: the admin API's namespaces and the inference cache.
    pub kv: Option<kiln_kv::Kv>,
    /// Tokens of the admin API.
    pub tokens: TokenStore,
    /// The node's data folder, where uploads are staged.
    pub data_dir: std::path::PathBuf,
    /// Preloads still running or failed, for `GET /readyz`.
    pub readiness: Arc<Readiness>,
    /// The node's usage counters, for `GET /admin/v1/usage`; `None` when the node keeps none.
    pub usage: Option<Arc<usage::UsageRecorder>>,
    /// Deployed workers and the routes to them; `None` on a node that runs none.
    pub deployments: Option<Arc<Deployments>>,
}

/// Builds the router with every route, request logging and panic isolation.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ai/run/{*model}", post(run::run_bare))
        .route(
            "/client/v4/accounts/{account_id}/ai/run/{*model}",
            post(run::run_enveloped),
        )
        .route("/ai/models", get(catalog::list_bare))
        .route("/ai/models/search", get(catalog::search_enveloped))
        .route(
            "/client/v4/accounts/{account_id}/ai/models/search",
            get(catalog::search_enveloped),
        )
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::list_models))
        .route(
            "/client/v4/accounts/{account_id}/ai/v1/chat/completions",
            post(openai::chat_completions),
        )
        .route(
            "/client/v4/accounts/{account_id}/ai/v1/completions",
            post(openai::completions),
        )
        .route(
            "/client/v4/accounts/{account_id}/ai/v1/embeddings",
            post(openai::embeddings),
        )
        .route(
            "/client/v4/accounts/{account_id}/ai/v1/models",
            get(openai::list_models),
        )
        .route("/metrics", get(metrics::prometheus))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(metrics::readyz))
        .merge(admin::routes())
        .merge(deploy_api::routes())
        .fallback(errors::no_route)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            deploy_api::route_by_host,
        ))
        .layer(middleware::from_fn(log_request))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .with_state(state)
}

/// Logs one line per request and tags the response with a request id. The query string is
/// left out of the log, since it may carry user data.
async fn log_request(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |matched| matched.as_str())
        .to_owned();
    // The labels below take the route by value, and the log line needs it too.
    let metric_route = route.clone();

    let (mut response, model_runs) = request_log::collect(next.run(request)).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    ::metrics::counter!("kiln_http_requests_total", "route" => metric_route.clone(), "status" => status.to_string())
        .increment(1);
    ::metrics::histogram!("kiln_http_request_duration_seconds", "route" => metric_route)
        .record(seconds);
    let model = response
        .headers()
        .get(MODEL_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let model_runs = serde_json::to_string(&model_runs).unwrap_or_default();
    let ms = seconds * 1000.0;
    if let Some(served) = response.extensions().get::<worker::WorkerLog>() {
        tail::TailHub::global().finish(tail::FinishedRequest {
            worker: &served.worker,
            version: served.version,
            request_id: &request_id,
            method: method.as_str(),
            path: &path,
            status,
            outcome: served.outcome,
        });
    }
    match response.extensions().get::<worker::WorkerLog>() {
        Some(served) => tracing::info!(
            request_id = %request_id,
            worker = %served.worker,
            version = served.version,
            method = %method,
            path = %path,
            status,
            outcome = served.outcome,
            colo = %served.colo,
            country = %served.country,
            ms,
            "request"
        ),
        None => tracing::info!(
            request_id = %request_id,
            route = %route,
            method = %method,
            path = %path,
            status,
            outcome = if status < 400 { "ok" } else { "error" },
            model = %model,
            model_runs = %model_runs,
            ms,
            "request"
        ),
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

/// Serves the router until `shutdown` completes, then lets in-flight requests finish for at
/// most `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown, grace).await
}

/// Serves `router` until `shutdown` completes. In-flight requests then get `grace` to finish,
/// after which the remaining connections are dropped, so a stalled client cannot keep the
/// process alive.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let server = axum::serve(listener, router.into_make_service()).with_graceful_shutdown(signal);
    let deadline = async move {
        let _ = stopped.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = std::future::IntoFuture::into_future(server) => result,
        () = deadline => {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "shutdown grace period over; dropping the remaining connections"
            );
            Ok(())
        }
    }
}

fn json_response(status: axum::http::StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
