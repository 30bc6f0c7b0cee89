//! `POST /ai/run/{model}` and its v4 twin.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kiln_inference::{
    sse_event, ErrorKind, InferenceError, Output, RunOutput, StreamItem, TextStream, SSE_DONE,
};
use serde_json::{json, Value};

use crate::errors::{ApiError, Envelope};
use crate::{json_response, AppState, MODEL_HEADER};

pub async fn run_bare(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Body,
) -> Response {
    run(&state, &model, body, Envelope::Bare).await
}

pub async fn run_enveloped(
    State(state): State<Arc<AppState>>,
    Path((_account_id, model)): Path<(String, String)>,
    body: Body,
) -> Response {
    run(&state, &model, body, Envelope::V4).await
}

async fn run(state: &AppState, model: &str, body: Body, envelope: Envelope) -> Response {
    let input = match read_json(body, state.max_body_bytes).await {
        Ok(input) => input,
        Err(error) => return ApiError::new(error, envelope).into_response(),
    };
    match state.inference.run(model, input).await {
        Ok(output) => respond(output, envelope),
        Err(error) => ApiError::new(error, envelope).into_response(),
    }
}

/// Reads the body as a JSON object and drops the `options` object that may sit beside the
/// inputs (it carries request options such as `rejectIfBusy`, not model input).
async fn read_json(body: Body, limit: usize) -> Result<Value, InferenceError> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        InferenceError::new(
            ErrorKind::RequestTooLarge,
            format!(
                "Request is too large: the body is over the node's limit of {limit} bytes \
                 (limits.max_body_bytes in kiln.toml)"
            ),
        )
    })?;
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

/// Sends a generation as server-sent events, ending with `data: [DONE]`. When the client
/// disconnects, the body and with it the `TextStream` are dropped, which stops the generation.
fn event_stream(text: TextStream) -> Response {
    let events = stream::unfold(Some(text), |state| async move {
        let mut text = state?;
        let chunk = match text.next().await {
            Some(item @ StreamItem::Text(_)) => sse_event(&item),
            Some(item @ (StreamItem::Usage { .. } | StreamItem::Error(_))) => {
                if let StreamItem::Error(error) = &item {
                    tracing::error!(error = %error.message, "generation failed mid-stream");
                }
                let chunk = sse_event(&item) + SSE_DONE;
                return Some((Ok::<_, std::convert::Infallible>(chunk), None));
            }
            None => return Some((Ok(SSE_DONE.to_string()), None)),
        };
        Some((Ok(chunk), Some(text)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|err| {
            let error =
                InferenceError::internal(format!("failed to build the stream response: {err}"));
            ApiError::new(error, Envelope::V4).into_response()
        })
}
