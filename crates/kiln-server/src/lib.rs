//! Kiln's HTTP front. It speaks the hosted Workers AI REST API over the inference service:
//!
//! - `POST /ai/run/{model}`: the bare model result (the shape the `env.AI` binding returns);
//! - `POST /client/v4/accounts/{account_id}/ai/run/{model}`: the result in the v4 envelope;
//! - `GET /ai/models`, `GET /ai/models/search` and the v4 search route: the installed catalog;
//! - `GET /healthz`: liveness.

mod catalog;
mod errors;
mod run;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kiln_inference::InferenceService;
use tower_http::catch_panic::CatchPanicLayer;

pub use errors::ApiError;

/// Response header naming the installed model that really ran, after alias resolution.
pub const MODEL_HEADER: &str = "x-kiln-model";
/// Response header with the request id, as the hosted API names it.
pub const REQUEST_ID_HEADER: &str = "cf-ai-req-id";

/// Shared state of every handler.
pub struct AppState {
    pub inference: Arc<InferenceService>,
    /// Maximum request body, in bytes.
    pub max_body_bytes: usize,
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
        .route("/healthz", get(|| async { "ok" }))
        .fallback(errors::no_route)
        .layer(middleware::from_fn(log_request))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .with_state(state)
}

/// Logs one line per request and tags the response with a request id. The query string is
/// left out of the log, since it may carry user data.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();

    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let model = response
        .headers()
        .get(MODEL_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    tracing::info!(
        request_id = %request_id,
        method = %method,
        path = %path,
        status,
        model = %model,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

/// Serves the router until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

fn json_response(status: axum::http::StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
