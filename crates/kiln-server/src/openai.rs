//! OpenAI-compatible endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and
//! `/v1/models`, also under `/client/v4/accounts/{account_id}/ai/v1/`. Requests become the same
//! [`TextGenerationInput`] as the native API, and errors take OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kiln_inference::fields::{self, type_name, Fields};
use kiln_inference::text_generation::{
    self, parse_tool_definitions, usage_json, FinishReason, Prompt, SamplingParams, StreamItem,
    ToolCall, ToolChoice,
};
use kiln_inference::{ErrorKind, InferenceError, Output, TextGenerationInput, TextStream};
use serde_json::{json, Value};

use crate::body::read_body;
use crate::errors::with_retry_after;
use crate::sse::sse_response;
use crate::{json_response, AppState, MODEL_HEADER};

/// Temperature when the request gives none, as OpenAI documents it.
const DEFAULT_TEMPERATURE: f64 = 1.0;
/// `max_tokens` of `/v1/completions` when absent, as OpenAI documents it.
const DEFAULT_COMPLETION_TOKENS: u32 = 16;
/// OpenAI accepts at most four stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;

/// An error in OpenAI's shape.
pub struct OpenAiError(InferenceError);

impl From<InferenceError> for OpenAiError {
    fn from(error: InferenceError) -> Self {
        Self(error)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let (status, kind, code) = match error.kind {
            ErrorKind::InvalidInput => (400, "invalid_request_error", None),
            ErrorKind::NoSuchModel => (404, "invalid_request_error", Some("model_not_found")),
            ErrorKind::RequestTooLarge => (413, "invalid_request_error", Some("request_too_large")),
            ErrorKind::OutOfCapacity => (429, "rate_limit_error", Some("rate_limit_exceeded")),
            ErrorKind::ModelUnavailable => (503, "server_error", Some("model_unavailable")),
            ErrorKind::Timeout => (408, "invalid_request_error", Some("timeout")),
            ErrorKind::Internal => (500, "server_error", None),
        };
        if status >= 500 {
            tracing::error!(error = %error.message, "OpenAI-compatible request failed");
        }
        let body = json!({"error": {
            "message": error.message,
            "type": kind,
            "param": field_in(&error.message),
            "code": code,
        }});
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        with_retry_after(json_response(status, body))
    }
}

/// Returns the field an error message names, which validation messages quote first in backticks.
fn field_in(message: &str) -> Value {
    let mut parts = message.split('`');
    match (parts.next(), parts.next()) {
        (Some(_), Some(field)) if !field.is_empty() && !field.contains(' ') => json!(field),
        _ => Value::Null,
    }
}

fn invalid(message: impl Into<String>) -> OpenAiError {
    OpenAiError(InferenceError::new(ErrorKind::InvalidInput, message))
}

/// Reads the body as a JSON object.
async fn read_object(body: Body, state: &AppState) -> Result<Fields, OpenAiError> {
    let bytes = read_body(body, state.max_body_bytes, state.body_timeout).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| invalid(format!("the request body is not valid JSON: {err}")))?;
    match value {
        Value::Object(fields) => Ok(fields),
        other => Err(invalid(format!(
            "the request body must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn required_model(fields: &Fields) -> Result<String, OpenAiError> {
    match fields::optional_string(fields, "model")? {
        Some(model) if !model.is_empty() => Ok(model.to_string()),
        _ => Err(invalid(
            "missing `model`: name an installed model or a hosted model id",
        )),
    }
}

/// Reads the settings that chat and text completions share.
fn common_settings(fields: &Fields, default_max_tokens: u32) -> Result<Settings, OpenAiError> {
    if let Some(n) = fields::optional_integer(fields, "n", 0, u64::MAX)? {
        if n != 1 {
            return Err(invalid(format!("`n` must be 1 on this node, got {n}")));
        }
    }
    if fields::optional_bool(fields, "logprobs")? == Some(true) {
        return Err(invalid(
            "`logprobs` is not supported by this node; remove it",
        ));
    }
    let max_tokens =
        match fields::optional_integer(fields, "max_completion_tokens", 1, u32::MAX.into())? {
            Some(value) => Some(value),
            None => fields::optional_integer(fields, "max_tokens", 1, u32::MAX.into())?,
        };
    let seed = match fields.get("seed").filter(|value| !value.is_null()) {
        None => rand_seed(),
        Some(value) => value
            .as_i64()
            .map(|seed| text_generation::fold_seed(seed as u64))
            .ok_or_else(|| invalid(format!("`seed` must be an integer, got {value}")))?,
    };
    let stop = match fields.get("stop").filter(|value| !value.is_null()) {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(items)) if items.len() <= MAX_STOP_SEQUENCES => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("`stop` must be a string or an array of strings"))?,
        Some(_) => {
            return Err(invalid(format!(
                "`stop` must be a string or an array of at most {MAX_STOP_SEQUENCES} strings"
            )))
        }
    };
    Ok(Settings {
        stream: fields::optional_bool(fields, "stream")?.unwrap_or(false),
        include_usage: fields
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_tokens: max_tokens.map_or(default_max_tokens, |value| {
            value.min(u32::MAX.into()) as u32
        }),
        sampling: SamplingParams {
            temperature: fields::optional_number(fields, "temperature", 0.0, 2.0)?
                .unwrap_or(DEFAULT_TEMPERATURE) as f32,
            top_p: fields::optional_number(fields, "top_p", 0.0, 1.0)?
                .map(|value| value.max(0.001) as f32),
            top_k: None,
            seed,
            repetition_penalty: None,
            frequency_penalty: fields::optional_number(fields, "frequency_penalty", -2.0, 2.0)?
                .map(|value| value as f32),
            presence_penalty: fields::optional_number(fields, "presence_penalty", -2.0, 2.0)?
                .map(|value| value as f32),
        },
        stop,
    })
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

struct Settings {
    stream: bool,
    include_usage: bool,
    max_tokens: u32,
    sampling: SamplingParams,
    stop: Vec<String>,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OpenAiError> {
    let deadline = crate::run::request_deadline(&headers)?;
    let fields = read_object(body, &state).await?;
    let model = required_model(&fields)?;
    let settings = common_settings(&fields, text_generation::DEFAULT_MAX_TOKENS)?;
    let messages = fields
        .get("messages")
        .ok_or_else(|| invalid("missing `messages`: an array of {role, content} objects"))?;
    let messages = text_generation::parse_messages(messages)?;
    let response_format = match fields
        .get("response_format")
        .filter(|value| !value.is_null())
    {
        Some(value) => match value.get("type").and_then(Value::as_str) {
            Some("text") => None,
            _ => Some(text_generation::parse_response_format(
                value,
                "response_format",
            )?),
        },
        None => None,
    };
    let tools = match fields.get("tools").filter(|value| !value.is_null()) {
        Some(value) => parse_tool_definitions(value, "tools")?,
        None => Vec::new(),
    };
    let tool_choice = match fields.get("tool_choice").filter(|value| !value.is_null()) {
        Some(value) => text_generation::parse_tool_choice(value, &tools, "tool_choice")?,
        None => ToolChoice::Auto,
    };
    let input = TextGenerationInput {
        prompt: Prompt::Messages(messages),
        stream: settings.stream,
        max_tokens: settings.max_tokens,
        sampling: settings.sampling,
        stop: settings.stop,
        response_format,
        tools,
        tool_choice,
    };

    let (ran, generation) = deadline
        .run(state.inference.generate(&model, &input))
        .await?;
    let meta = ResponseMeta::new("chatcmpl", &model);
    let mut response = if settings.stream {
        chat_stream(generation, meta, settings.include_usage)
    } else {
        let completion = deadline.run(text_generation::collect(generation)).await?;
        let finish_reason =
            finish_reason(completion.finish_reason, !completion.tool_calls.is_empty());
        let mut message = json!({"role": "assistant", "content": completion.text});
        if !completion.tool_calls.is_empty() {
            message["content"] = Value::Null;
            message["tool_calls"] = openai_tool_calls(&completion.tool_calls);
        }
        json_response(
            StatusCode::OK,
            json!({
                "id": meta.id,
                "object": "chat.completion",
                "created": meta.created,
                "model": meta.model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": usage_json(&completion.usage),
            }),
        )
    };
    set_model_header(&mut response, &ran);
    Ok(response)
}

/// `POST /v1/completions`: a raw prompt, no chat template.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OpenAiError> {
    let deadline = crate::run::request_deadline(&headers)?;
    let fields = read_object(body, &state).await?;
    let model = required_model(&fields)?;
    let settings = common_settings(&fields, DEFAULT_COMPLETION_TOKENS)?;
    let prompt = match fields.get("prompt") {
        Some(Value::String(prompt)) if !prompt.is_empty() => prompt.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(invalid(
                "`prompt` must be a non-empty string (or an array of one string)",
            ))
        }
    };
    if fields::optional_bool(&fields, "echo")? == Some(true) {
        return Err(invalid("`echo` is not supported by this node; remove it"));
    }
    let input = TextGenerationInput {
        prompt: Prompt::Text {
            text: prompt,
            raw: true,
        },
        stream: settings.stream,
        max_tokens: settings.max_tokens,
        sampling: settings.sampling,
        stop: settings.stop,
        response_format: None,
        tools: Vec::new(),
        tool_choice: ToolChoice::Auto,
    };

    let (ran, generation) = deadline
        .run(state.inference.generate(&model, &input))
        .await?;
    let meta = ResponseMeta::new("cmpl", &model);
    let mut response = if settings.stream {
        completion_stream(generation, meta, settings.include_usage)
    } else {
        let completion = deadline.run(text_generation::collect(generation)).await?;
        json_response(
            StatusCode::OK,
            json!({
                "id": meta.id,
                "object": "text_completion",
                "created": meta.created,
                "model": meta.model,
                "choices": [{
                    "index": 0,
                    "text": completion.text,
                    "logprobs": null,
                    "finish_reason": finish_reason(completion.finish_reason, false),
                }],
                "usage": usage_json(&completion.usage),
            }),
        )
    };
    set_model_header(&mut response, &ran);
    Ok(response)
}

/// `POST /v1/embeddings`: runs the model's native embedding task and reshapes the result.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, OpenAiError> {
    let fields = read_object(body, &state).await?;
    let model = required_model(&fields)?;
    let manifest = state.inference.resolve(&model)?;
    if manifest.task != kiln_models::Task::TextEmbeddings {
        return Err(invalid(format!(
            "`model`: {} is a {} model, not a text-embeddings model",
            manifest.id,
            manifest.task.display_name()
        )));
    }
    let text =
        match fields.get("input") {
            Some(Value::String(text)) => json!(text),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => json!(items),
            Some(Value::Array(_)) => return Err(invalid(
                "`input` must be a string or an array of strings; token arrays are not supported",
            )),
            _ => return Err(invalid("missing `input`: a string or an array of strings")),
        };
    let base64 = match fields::optional_string(&fields, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(format!(
                "`encoding_format` must be \"float\" or \"base64\", got {other:?}"
            )))
        }
    };

    let run = state.inference.run(&model, json!({"text": text})).await?;
    let Output::Json(result) = run.output else {
        return Err(invalid(format!("model {model} is not an embedding model")));
    };
    let Some(vectors) = result.get("data").and_then(Value::as_array) else {
        return Err(invalid(format!("model {model} is not an embedding model")));
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                json!(encode_f32_base64(vector))
            } else {
                vector.clone()
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = run.usage.as_ref().map_or(0, |usage| usage.input_tokens);
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    );
    set_model_header(&mut response, &run.model);
    Ok(response)
}

/// Little-endian float32 bytes in base64, as OpenAI's `encoding_format: "base64"` sends them.
fn encode_f32_base64(vector: &Value) -> String {
    let bytes: Vec<u8> = vector
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|number| (number.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    match state.inference.store().list() {
        Ok(manifests) => json_response(
            StatusCode::OK,
            json!({
                "object": "list",
                "data": manifests.iter().map(|manifest| json!({
                    "id": manifest.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "kiln",
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(err) => OpenAiError(InferenceError::internal(err)).into_response(),
    }
}

/// Fields every response of one request shares.
struct ResponseMeta {
    id: String,
    created: u64,
    /// The model as the client named it; `x-kiln-model` names the one that ran.
    model: String,
}

impl ResponseMeta {
    fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            model: model.to_string(),
        }
    }
}

fn finish_reason(reason: FinishReason, tool_calls: bool) -> &'static str {
    if tool_calls {
        "tool_calls"
    } else {
        reason.as_str()
    }
}

fn openai_tool_calls(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(index, call)| {
                json!({
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments.to_string()},
                })
            })
            .collect(),
    )
}

fn set_model_header(response: &mut Response, model: &str) {
    if let Ok(value) = header::HeaderValue::from_str(model) {
        response.headers_mut().insert(MODEL_HEADER, value);
    }
}

/// Streams chat completion chunks: the role first, then content or tool-call deltas, a chunk
/// with `finish_reason`, optionally a usage chunk with no choices, then `data: [DONE]`.
fn chat_stream(generation: TextStream, meta: ResponseMeta, include_usage: bool) -> Response {
    let chunk = move |meta: &ResponseMeta, choices: Value, usage: Option<Value>| {
        let mut body = json!({
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        format!("data: {body}\n\n")
    };
    let first = chunk(
        &meta,
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        None,
    );
    sse_response(generation, first, move |item, saw_tool_calls| match item {
        StreamItem::Text(text) => Some(chunk(
            &meta,
            json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
            None,
        )),
        StreamItem::ToolCalls(calls) => Some(chunk(
            &meta,
            json!([{"index": 0, "delta": {"tool_calls": openai_tool_calls(calls)}, "logprobs": null, "finish_reason": null}]),
            None,
        )),
        StreamItem::Done {
            usage,
            finish_reason: reason,
        } => {
            let mut events = chunk(
                &meta,
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason(*reason, saw_tool_calls)}]),
                None,
            );
            if include_usage {
                events.push_str(&chunk(&meta, json!([]), Some(usage_json(usage))));
            }
            Some(events)
        }
        StreamItem::Error(error) => Some(error_event(error)),
    })
}

/// Streams text completion chunks in the same pattern as [`chat_stream`].
fn completion_stream(generation: TextStream, meta: ResponseMeta, include_usage: bool) -> Response {
    let chunk = move |meta: &ResponseMeta, text: &str, reason: Value, usage: Option<Value>| {
        let choices = if usage.is_some() {
            json!([])
        } else {
            json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}])
        };
        let mut body = json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        format!("data: {body}\n\n")
    };
    sse_response(generation, String::new(), move |item, _| match item {
        StreamItem::Text(text) => Some(chunk(&meta, text, Value::Null, None)),
        StreamItem::ToolCalls(_) => None,
        StreamItem::Done {
            usage,
            finish_reason,
        } => {
            let mut events = chunk(&meta, "", json!(finish_reason.as_str()), None);
            if include_usage {
                events.push_str(&chunk(&meta, "", Value::Null, Some(usage_json(usage))));
            }
            Some(events)
        }
        StreamItem::Error(error) => Some(error_event(error)),
    })
}

fn error_event(error: &InferenceError) -> String {
    tracing::error!(error = %error.message, "generation failed mid-stream");
    let body = json!({"error": {"message": error.message, "type": "server_error", "param": null, "code": null}});
    format!("data: {body}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_encode_little_endian() {
        // 1.0f32 is 00 00 80 3f in little-endian bytes.
        assert_eq!(encode_f32_base64(&json!([1.0])), "AACAPw==");
    }

    #[test]
    fn param_is_first_backticked_word() {
        assert_eq!(
            field_in("`temperature` must be from 0 to 2"),
            json!("temperature")
        );
        assert_eq!(field_in("no field here"), Value::Null);
    }
}
