//! The node's metrics: the Prometheus recorder behind the `metrics` macros that every crate
//! calls, the help text of each metric, `GET /metrics` and `GET /readyz`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::AppState;

/// Upper bounds of the latency histograms, in seconds: 1 ms to 2 min.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the batch size histogram.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Upper bounds of the decode rate histogram, in tokens per second.
const RATE_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Histogram samples are folded into the buckets at each scrape and at least this often.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder and describes every metric. Later calls do
/// nothing. Without it the `metrics` macros record nothing and `GET /metrics` is empty.
pub fn install() {
    HANDLE.get_or_init(|| {
        let handle = build_recorder();
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(error) = spawned {
            tracing::warn!(error = %error, "failed to start the metrics upkeep thread");
        }
        handle
    });
}

fn build_recorder() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full("kiln_batch_size".into()), &BATCH_BUCKETS)
        })
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("kiln_generation_tokens_per_second".into()),
                &RATE_BUCKETS,
            )
        })
        .expect("the bucket lists are not empty");
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %error, "another metrics recorder is installed; /metrics stays empty");
    }
    handle
}

/// Gives each metric its help text and unit.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    describe_counter!(
        "kiln_http_requests_total",
        "HTTP requests answered, by matched route and status code."
    );
    describe_histogram!(
        "kiln_http_request_duration_seconds",
        Unit::Seconds,
        "Time from an HTTP request's arrival to its response head, by matched route."
    );
    describe_counter!(
        "kiln_worker_requests_total",
        "Requests served by a worker, by worker, status code and outcome (ok, exception, \
         exceededCpu, exceededMemory, exceededStack, exceededWall, canceled, unavailable)."
    );
    describe_histogram!(
        "kiln_worker_request_duration_seconds",
        Unit::Seconds,
        "Time from a worker request's arrival to its response head, by worker."
    );
    describe_gauge!(
        "kiln_worker_isolates",
        "Isolates running for a worker, by worker."
    );
    describe_gauge!(
        "kiln_worker_isolate_memory_bytes",
        Unit::Bytes,
        "Heap bytes held by a worker's isolates after their latest turn, by worker."
    );
    describe_gauge!(
        "kiln_model_memory_bytes",
        Unit::Bytes,
        "Size of a loaded model's files, an estimate of the memory its weights take, by model."
    );
    describe_counter!(
        "kiln_inference_requests_total",
        "Model runs through the REST run routes and env.AI, by installed model and outcome (ok \
         or the error class)."
    );
    describe_histogram!(
        "kiln_inference_duration_seconds",
        Unit::Seconds,
        "Time of a model run, by installed model; for a streamed generation, until the stream \
         starts."
    );
    describe_counter!(
        "kiln_inference_rejected_total",
        "Requests rejected with 429 because the model's queue was full, by model."
    );
    describe_gauge!(
        "kiln_inference_queue_depth",
        "Requests waiting in an embeddings, classification or custom model's queue, by model."
    );
    describe_histogram!(
        "kiln_inference_queue_wait_seconds",
        Unit::Seconds,
        "Time a request waited before its model started on it, by model."
    );
    describe_counter!(
        "kiln_input_tokens_total",
        "Input tokens run by a model (prompt tokens, or encoder tokens over all passes), by model."
    );
    describe_counter!(
        "kiln_prompt_cached_tokens_total",
        "Prompt tokens of text generations that reused the KV cache of an earlier request with \
         the same prefix instead of being decoded, by model."
    );
    describe_counter!(
        "kiln_output_tokens_total",
        "Tokens generated by a text-generation model, by model."
    );
    describe_histogram!(
        "kiln_time_to_first_token_seconds",
        Unit::Seconds,
        "Time from submitting a generation to its first token, by model."
    );
    describe_histogram!(
        "kiln_generation_tokens_per_second",
        "Decode rate of each finished generation (tokens after the first, per second), by model."
    );
    describe_counter!(
        "kiln_batch_forward_passes_total",
        "Forward passes run by an embeddings, classification or custom model, by model."
    );
    describe_counter!(
        "kiln_batch_items_total",
        "Texts, images or tensors run by a model's batches, over all passes, by model."
    );
    describe_histogram!(
        "kiln_batch_size",
        "Items in each forward pass of a batched model, by model."
    );
    describe_counter!(
        "kiln_inference_cache_lookups_total",
        "Inference cache lookups of requests with cf-aig-cache-ttl, by result (hit or miss)."
    );
    describe_counter!(
        "kiln_kv_operations_total",
        "KV namespace operations, from workers, the admin API and the inference cache, by op."
    );
    describe_counter!(
        "kiln_kv_errors_total",
        "KV namespace operations that failed, by op."
    );
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub async fn prometheus() -> Response {
    let text = HANDLE.get().map_or_else(String::new, |handle| {
        handle.run_upkeep();
        handle.render()
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Models that the node loads at start, for `GET /readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Model ids whose preload has not finished yet.
    loading: Mutex<Vec<String>>,
    /// Preloads that failed: model id and error.
    failed: Mutex<Vec<(String, String)>>,
}

impl Readiness {
    /// Starts with every model in `preload` still loading.
    pub fn loading(preload: &[String]) -> Arc<Readiness> {
        Arc::new(Readiness {
            loading: Mutex::new(preload.to_vec()),
            failed: Mutex::default(),
        })
    }

    /// Records that the preload of `model` finished, with its error when it failed.
    pub fn finished(&self, model: &str, error: Option<String>) {
        if let Ok(mut loading) = self.loading.lock() {
            loading.retain(|id| id != model);
        }
        if let (Some(error), Ok(mut failed)) = (error, self.failed.lock()) {
            failed.push((model.to_owned(), error));
        }
    }
}

/// `GET /readyz`: 200 once every preloaded model is loaded and the KV store responds, else 503
/// with what is missing.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let loading = state
        .readiness
        .loading
        .lock()
        .map(|loading| loading.clone())
        .unwrap_or_default();
    let failed: Vec<_> = state
        .readiness
        .failed
        .lock()
        .map(|failed| failed.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(model, error)| json!({ "model": model, "error": error }))
        .collect();
    let storage = match &state.kv {
        Some(kv) => match kv.list_namespaces().await {
            Ok(_) => None,
            Err(error) => Some(error.to_string()),
        },
        None => None,
    };
    let ready = loading.is_empty() && failed.is_empty() && storage.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "loading": loading,
        "failed": failed,
        "storage_error": storage,
    });
    (status, axum::Json(body)).into_response()
}
