//! Requests served by a JavaScript worker, and the `env.AI` binding over the inference service.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use kiln_inference::{sse_event, Deadline, InferenceService, Output, StreamItem, SSE_DONE};
use kiln_runtime::{
    AiBinding, AiError, AiOutput, ResponseBody, Worker, WorkerError, WorkerRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;

use crate::usage::UsageRecorder;
use crate::{errors, log_request, RequestId};

/// The worker that serves requests, replaced in place when `kiln dev` reloads the folder.
#[derive(Default)]
pub struct WorkerSlot {
    current: RwLock<Option<Result<Worker, String>>>,
}

impl WorkerSlot {
    /// Makes `worker` serve every following request.
    pub fn set(&self, worker: Worker) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(Ok(worker));
        }
    }

    /// Records that the worker failed to load, unless an earlier version is serving: requests
    /// then get 500 with `error` until a later [`WorkerSlot::set`].
    pub fn set_error_if_empty(&self, error: String) {
        if let Ok(mut current) = self.current.write() {
            if !matches!(*current, Some(Ok(_))) {
                *current = Some(Err(error));
            }
        }
    }

    /// Returns the worker that serves requests now, or the load error that requests get.
    pub fn get(&self) -> Result<Worker, String> {
        match self.current.read() {
            Ok(current) => match current.as_ref() {
                Some(Ok(worker)) => Ok(worker.clone()),
                Some(Err(error)) => Err(error.clone()),
                None => Err("no worker is loaded yet".into()),
            },
            Err(_) => Err("the worker slot lock is poisoned".into()),
        }
    }
}

/// Settings that turn worker requests into HTTP responses, for `kiln dev` and for deployed
/// workers.
pub struct WorkerHttp {
    /// Maximum request body, in bytes.
    pub max_body_bytes: usize,
    /// `request.cf.colo`.
    pub colo: String,
    /// Header whose value becomes `request.cf.country`, set by a trusted proxy.
    pub country_header: Option<String>,
    /// Send exception messages and stacks to the client, as a development server does.
    pub expose_errors: bool,
    /// Usage counters that count each fetch request, when the node keeps them.
    pub usage: Option<Arc<UsageRecorder>>,
}

/// Settings and state of a server whose every request goes to one worker.
pub struct WorkerState {
    pub slot: Arc<WorkerSlot>,
    pub http: WorkerHttp,
    /// Serve `/__scheduled?cron=EXPR` by running the worker's scheduled handler once, as
    /// `wrangler dev --test-scheduled` does. When false, that path goes to the worker's fetch.
    pub test_scheduled: bool,
}

/// Builds a router that sends every path and method to the worker in `state.slot`, except the
/// node's own `/__kiln/metrics` and `/__kiln/healthz`.
pub fn worker_router(state: Arc<WorkerState>) -> Router {
    Router::new()
        .route(
            "/__kiln/metrics",
            axum::routing::get(crate::metrics::prometheus),
        )
        .route("/__kiln/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(handle)
        .layer(axum::middleware::from_fn(log_request))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .with_state(state)
}

/// Serves the worker in `state.slot` on every path until `shutdown` completes.
pub async fn serve_worker(
    listener: tokio::net::TcpListener,
    state: Arc<WorkerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    crate::serve_router(listener, worker_router(state), shutdown, grace).await
}

async fn handle(State(state): State<Arc<WorkerState>>, request: Request) -> Response {
    let worker = match state.slot.get() {
        Ok(worker) => worker,
        Err(error) => return plain(StatusCode::INTERNAL_SERVER_ERROR, error),
    };
    if state.test_scheduled && request.uri().path() == SCHEDULED_TEST_PATH {
        return run_scheduled_test(&state.http, &worker, request.uri()).await;
    }
    serve_request(&state.http, worker, None, request).await
}

/// Sends `request` to `worker`, a deployed worker's `version` or the worker of `kiln dev`.
pub(crate) async fn serve_request(
    state: &WorkerHttp,
    worker: Worker,
    version: Option<u64>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over the node's limit of {} bytes \
                     (limits.max_body_bytes in kiln.toml)",
                    state.max_body_bytes
                ),
            )
        }
    };
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let url = format!("http://{host}{path}");
    if !is_valid_host(host) || url.parse::<Uri>().is_err() {
        tracing::info!(request_id = %request_id, host, "invalid Host header");
        return plain(
            StatusCode::BAD_REQUEST,
            format!("invalid Host header {host:?}: send HOST or HOST:PORT"),
        );
    }
    let request = WorkerRequest {
        id: request_id,
        method: parts.method.to_string(),
        url,
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        body,
        cf: request_cf(state, &parts.headers, parts.version),
    };

    let country = request.cf["country"].as_str().unwrap_or("").to_owned();
    if let Some(usage) = &state.usage {
        usage.record_worker_request(worker.name());
    }
    let worker_name = worker.name().to_owned();
    let mut outcome = Outcome::new(&worker_name);
    let result = worker.fetch(request).await;
    let (mut response, name) = match result {
        Ok(response) => (into_http(response, worker), "ok"),
        Err(error) => (worker_error(state, &error), error.outcome()),
    };
    outcome.finish(name, response.status().as_u16());
    response.extensions_mut().insert(WorkerLog {
        worker: worker_name,
        version,
        outcome: name,
        colo: state.colo.clone(),
        country,
    });
    response
}

/// Returns whether a `Host` header is a non-empty host with an optional port from 0 to 65535.
fn is_valid_host(header: &str) -> bool {
    let (name, port) = match header.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, tail)) if tail.is_empty() || tail.starts_with(':') => {
                (address, tail.strip_prefix(':'))
            }
            _ => return false,
        },
        None => match header.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (header, None),
        },
    };
    !name.is_empty() && port.is_none_or(|port| port.parse::<u16>().is_ok())
}

/// Fields that a worker request adds to its log line, carried to the logging middleware in the
/// response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct WorkerLog {
    pub worker: String,
    /// The deployed version that served the request; `None` under `kiln dev`.
    pub version: Option<u64>,
    /// `ok`, or how the request failed (`exception`, `exceededCpu`, …).
    pub outcome: &'static str,
    pub colo: String,
    /// `request.cf.country`, or empty.
    pub country: String,
}

/// Counts a worker request in the node's metrics once it ends; a request dropped before its
/// response (the client went away) counts as `canceled`.
struct Outcome {
    worker: String,
    started: std::time::Instant,
    recorded: bool,
}

impl Outcome {
    fn new(worker: &str) -> Self {
        Self {
            worker: worker.to_owned(),
            started: std::time::Instant::now(),
            recorded: false,
        }
    }

    fn finish(&mut self, outcome: &'static str, status: u16) {
        self.recorded = true;
        self.record(outcome, status.to_string());
    }

    fn record(&self, outcome: &'static str, status: String) {
        let worker = self.worker.clone();
        metrics::counter!(
            "kiln_worker_requests_total",
            "worker" => worker.clone(),
            "status" => status,
            "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!("kiln_worker_request_duration_seconds", "worker" => worker)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.recorded {
            // 499 is the status that nginx logs for a client that closed the connection.
            self.record("canceled", "499".into());
        }
    }
}

/// Path that runs the scheduled handler when [`WorkerState::test_scheduled`] is set.
pub const SCHEDULED_TEST_PATH: &str = "/__scheduled";

/// Query of [`SCHEDULED_TEST_PATH`].
#[derive(Deserialize)]
struct ScheduledTestQuery {
    /// `controller.cron`, which is empty when the query has none, as in Wrangler.
    #[serde(default)]
    cron: String,
    /// `controller.scheduledTime` in milliseconds since the Unix epoch. Default: now.
    #[serde(default)]
    time: Option<u64>,
}

/// Runs the worker's scheduled handler once for `/__scheduled?cron=EXPR[&time=MS]`. Returns
/// 200 when the event succeeded, else 500 with the error.
async fn run_scheduled_test(state: &WorkerHttp, worker: &Worker, uri: &Uri) -> Response {
    let query = match Query::<ScheduledTestQuery>::try_from_uri(uri) {
        Ok(Query(query)) => query,
        Err(error) => {
            tracing::warn!(error = %error, "invalid {SCHEDULED_TEST_PATH} query");
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid {SCHEDULED_TEST_PATH} query: {error}. Pass cron=EXPR and, \
                     optionally, time=MS (milliseconds since the Unix epoch)"
                ),
            );
        }
    };
    let scheduled_time = query
        .time
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    match worker.scheduled(&query.cron, scheduled_time).await {
        Ok(()) => plain(StatusCode::OK, "Ran scheduled event".to_owned()),
        Err(error) => {
            let response = worker_error(state, &error);
            let (mut parts, body) = response.into_parts();
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
            Response::from_parts(parts, body)
        }
    }
}

/// Builds `request.cf` from the fields a self-hosted node can fill in.
fn request_cf(state: &WorkerHttp, headers: &HeaderMap, version: axum::http::Version) -> Value {
    let mut cf = json!({
        "colo": state.colo,
        "httpProtocol": format!("{version:?}"),
        "clientAcceptEncoding": headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .unwrap_or(""),
    });
    let country = state
        .country_header
        .as_ref()
        .and_then(|name| headers.get(name.as_str()))
        .and_then(|value| value.to_str().ok());
    if let Some(country) = country {
        cf["country"] = Value::String(country.to_owned());
    }
    cf
}

/// Converts a worker's response. A streamed body keeps `worker` alive until it ends, so a
/// reload that replaces the worker does not cut the stream.
fn into_http(response: kiln_runtime::WorkerResponse, worker: Worker) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let body = match response.body {
        ResponseBody::Bytes(bytes) => Body::from(bytes),
        ResponseBody::Stream(chunks) => {
            let chunks = stream::unfold((chunks, worker), |(mut chunks, worker)| async move {
                let chunk = chunks.recv().await?;
                Some((chunk.map_err(std::io::Error::other), (chunks, worker)))
            });
            Body::from_stream(chunks)
        }
    };
    let mut http = Response::new(body);
    *http.status_mut() = status;
    for (name, value) in response.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        http.headers_mut().append(name, value);
    }
    http
}

fn worker_error(state: &WorkerHttp, error: &WorkerError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = match error {
        WorkerError::Exception { message, stack, .. } if state.expose_errors => {
            format!("{message}\n{stack}")
        }
        WorkerError::Exception { .. } => "the worker threw an exception".to_owned(),
        other => other.to_string(),
    };
    plain(status, text)
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
        text,
    )
        .into_response()
}

/// The `[ai]` binding over the node's inference service: the same model resolution, schemas
/// and errors as `POST /ai/run/{model}`.
pub struct InferenceAi {
    pub inference: Arc<InferenceService>,
    /// The worker that owns this binding. Its runs count as that worker's usage, or outside
    /// any worker when `None`.
    pub worker: Option<String>,
}

impl AiBinding for InferenceAi {
    fn run(
        &self,
        request_id: String,
        model: String,
        inputs: Value,
        options: Value,
    ) -> BoxFuture<'static, Result<AiOutput, AiError>> {
        let inference = Arc::clone(&self.inference);
        let worker = self.worker.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let timeout = options.pointer("/gateway/requestTimeoutMs").map(|value| {
                value
                    .as_u64()
                    .map_or_else(|| value.to_string(), |ms| ms.to_string())
            });
            let run = async {
                let deadline = Deadline::parse(timeout.as_deref(), "gateway.requestTimeoutMs")?;
                let run = inference.run_for_worker(worker.as_deref(), &model, inputs);
                deadline.run(run).await
            };
            let run = run.await.map_err(|error| {
                tracing::info!(
                    request_id = %request_id,
                    model = %model,
                    outcome = error.name(),
                    code = error.code(),
                    error = %error.message,
                    "env.AI.run failed"
                );
                AiError {
                    name: error.name().to_owned(),
                    code: error.code(),
                    description: error.message.clone(),
                }
            })?;
            let usage = run.usage.as_ref();
            tracing::info!(
                request_id = %request_id,
                model = %model,
                ran = %run.model,
                outcome = "ok",
                ms = started.elapsed().as_secs_f64() * 1000.0,
                input_tokens = usage.map(|usage| usage.input_tokens),
                output_tokens = usage.map(|usage| usage.output_tokens),
                "env.AI.run"
            );
            Ok(match run.output {
                Output::Json(value) => AiOutput::Json(value),
                Output::TextStream(text) => AiOutput::Stream(sse_bytes(text)),
            })
        })
    }
}

/// Formats a generation as server-sent event bytes that end with `data: [DONE]`, as the REST
/// route sends them. Dropping the stream drops the generation, which stops it.
fn sse_bytes(text: kiln_inference::TextStream) -> BoxStream<'static, Result<Bytes, String>> {
    stream::unfold(Some(text), |state| async move {
        let mut text = state?;
        let chunk = match text.next().await {
            Some(item @ StreamItem::Error(_)) => {
                if let StreamItem::Error(error) = &item {
                    tracing::error!(error = %error.message, "generation failed mid-stream");
                }
                return Some((Ok(Bytes::from(sse_event(&item) + SSE_DONE)), None));
            }
            Some(item) => sse_event(&item),
            None => return Some((Ok(Bytes::from_static(SSE_DONE.as_bytes())), None)),
        };
        Some((Ok(Bytes::from(chunk)), Some(text)))
    })
    .boxed()
}
