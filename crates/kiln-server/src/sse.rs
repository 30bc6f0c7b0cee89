//! Server-sent event responses over a generation. When the client disconnects, the body and
//! with it the [`TextStream`] are dropped, which stops the generation.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kiln_inference::{InferenceError, StreamItem, TextStream, SSE_DONE};

use crate::errors::{ApiError, Envelope};

/// Sends `first`, then what `format` makes of each stream item, then `data: [DONE]`. `format`
/// also learns whether tool calls were sent, for the final `finish_reason`.
pub(crate) fn sse_response(
    generation: TextStream,
    first: String,
    format: impl Fn(&StreamItem, bool) -> Option<String> + Send + 'static,
) -> Response {
    struct State<F> {
        generation: TextStream,
        format: F,
        saw_tool_calls: bool,
        first: Option<String>,
    }
    let state = State {
        generation,
        format,
        saw_tool_calls: false,
        first: Some(first).filter(|first| !first.is_empty()),
    };
    let events = stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        if let Some(first) = state.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(first), Some(state)));
        }
        let Some(item) = state.generation.next().await else {
            return Some((Ok(SSE_DONE.to_string()), None));
        };
        state.saw_tool_calls |= matches!(item, StreamItem::ToolCalls(_));
        let text = (state.format)(&item, state.saw_tool_calls).unwrap_or_default();
        match item {
            StreamItem::Done { .. } | StreamItem::Error(_) => Some((Ok(text + SSE_DONE), None)),
            _ => Some((Ok(text), Some(state))),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|err| {
            let error = InferenceError::internal(format!("failed to build the stream: {err}"));
            ApiError::new(error, Envelope::V4).into_response()
        })
}
