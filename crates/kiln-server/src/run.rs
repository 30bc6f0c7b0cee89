//! `POST /ai/run/{model}` and its v4 twin.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kiln_inference::{
    request_log, sse_event, Deadline, InferenceError, Output, RunOutput, StreamItem, TextStream,
};
use serde_json::{json, Value};

use crate::body::read_body;
use crate::cache::{self, CacheRequest, InferenceCache};
use crate::errors::{ApiError, Envelope};
use crate::sse::sse_response;
use crate::{json_response, AppState, MODEL_HEADER};

pub async fn run_bare(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&state, &model, &headers, body, Envelope::Bare).await
}

pub async fn run_enveloped(
    State(state): State<Arc<AppState>>,
    Path((_account_id, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&state, &model, &headers, body, Envelope::V4).await
}

async fn run(
    state: &AppState,
    model: &str,
    headers: &HeaderMap,
    body: Body,
    envelope: Envelope,
) -> Response {
    let input = if is_binary(headers) {
        read_binary(body, state.max_body_bytes, state.body_timeout).await
    } else {
        read_json(body, state.max_body_bytes, state.body_timeout).await
    };
    let input = match input {
        Ok(input) => input,
        Err(error) => return error_response(error, envelope),
    };
    let cache = match CacheRequest::from_headers(headers) {
        Ok(cache) => cache,
        Err(error) => return error_response(error, envelope),
    };
    let deadline = match request_deadline(headers) {
        Ok(deadline) => deadline,
        Err(error) => return error_response(error, envelope),
    };
    let streaming = input.get("stream") == Some(&Value::Bool(true));
    let mut response = match (cache, &state.kv) {
        (CacheRequest::Use { ttl }, Some(kv)) if !streaming => {
            let store = InferenceCache::new(kv);
            match deadline
                .run(run_cached(state, &store, model, input, ttl))
                .await
            {
                Ok((output, hit)) => {
                    let result = if hit { "hit" } else { "miss" };
                    metrics::counter!("kiln_inference_cache_lookups_total", "result" => result)
                        .increment(1);
                    let mut response = respond(output, envelope);
                    let status = HeaderValue::from_static(if hit { "HIT" } else { "MISS" });
                    response.headers_mut().insert(cache::STATUS_HEADER, status);
                    return response;
                }
                Err(error) => return error_response(error, envelope),
            }
        }
        _ => match deadline.run(state.inference.run(model, input)).await {
            Ok(output) => respond(output, envelope),
            Err(error) => error_response(error, envelope),
        },
    };
    if let Some(miss) = cache.miss_header() {
        request_log::mark_cache("MISS");
        response.headers_mut().insert(cache::STATUS_HEADER, miss);
    }
    response
}

/// Reads the request's time limit to its first byte from `cf-aig-request-timeout`.
pub(crate) fn request_deadline(headers: &HeaderMap) -> Result<Deadline, InferenceError> {
    let value = headers
        .get(REQUEST_TIMEOUT_HEADER)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    Deadline::parse(value, "cf-aig-request-timeout header")
}

/// Request header with the milliseconds a request may wait for the first byte of its response.
const REQUEST_TIMEOUT_HEADER: &str = "cf-aig-request-timeout";

/// Serves the result from the inference cache, or runs the model and stores a JSON result. Returns the
/// output and whether it came from the cache.
async fn run_cached(
    state: &AppState,
    store: &InferenceCache,
    model: &str,
    input: Value,
    ttl: u64,
) -> Result<(RunOutput, bool), InferenceError> {
    let manifest = state.inference.resolve(model)?;
    if let Some(result) = store.get(&manifest, &input).await {
        request_log::record(request_log::ModelRun {
            requested: model.to_owned(),
            model: manifest.id.clone(),
            outcome: "ok".into(),
            cache: Some("HIT"),
            ..request_log::ModelRun::default()
        });
        let output = RunOutput {
            model: manifest.id,
            output: Output::Json(result),
            // A cached result ran no model, so it counts no usage.
            usage: None,
        };
        return Ok((output, true));
    }
    let output = state.inference.run(model, input.clone()).await;
    request_log::mark_cache("MISS");
    let output = output?;
    if let Output::Json(result) = &output.output {
        store.put(&manifest, &input, result, ttl).await;
    }
    Ok((output, false))
}

fn error_response(error: InferenceError, envelope: Envelope) -> Response {
    ApiError::new(error, envelope).into_response()
}

/// Whether the body is a raw file (`image/*` or `application/octet-stream`) rather than JSON.
fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase())
        .is_some_and(|value| {
            value.starts_with("image/") || value.starts_with("application/octet-stream")
        })
}

/// Reads a raw file body as the input `{"image": BASE64}`, which image models accept.
async fn read_binary(body: Body, limit: usize, timeout: Duration) -> Result<Value, InferenceError> {
    let bytes = read_body(body, limit, timeout).await?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    Ok(json!({ "image": encoded }))
}

/// Reads the body as a JSON object and drops the `options` object that may sit beside the
/// inputs (it carries request options such as `rejectIfBusy`, not model input).
async fn read_json(body: Body, limit: usize, timeout: Duration) -> Result<Value, InferenceError> {
    let bytes = read_body(body, limit, timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(InferenceError::invalid_input(
            "the request body is empty; send the model's input as a JSON object",
        ));
    }
    let mut input: Value = serde_json::from_slice(&bytes).map_err(|err| {
        InferenceError::invalid_input(format!("the request body is not valid JSON: {err}"))
    })?;
    if let Value::Object(fields) = &mut input {
        fields.remove("options");
    }
    Ok(input)
}

fn respond(run: RunOutput, envelope: Envelope) -> Response {
    let mut response = match run.output {
        Output::Json(result) => match envelope {
            Envelope::Bare => json_response(StatusCode::OK, result),
            Envelope::V4 => json_response(
                StatusCode::OK,
                json!({ "result": result, "success": true, "errors": [], "messages": [] }),
            ),
        },
        // Streams are never wrapped in the envelope, on either route.
        Output::TextStream(text) => event_stream(text),
    };
    if let Ok(value) = HeaderValue::from_str(&run.model) {
        response.headers_mut().insert(MODEL_HEADER, value);
    }
    response
}

/// Sends a generation as the hosted API's server-sent events, ending with `data: [DONE]`.
fn event_stream(text: TextStream) -> Response {
    sse_response(text, String::new(), |item, _| {
        if let StreamItem::Error(error) = item {
            tracing::error!(error = %error.message, "generation failed mid-stream");
        }
        Some(sse_event(item))
    })
}
