//! The Text Generation task: input schema, defaults and ranges of the hosted API, and the
//! response shapes (a JSON object, or server-sent events with `stream: true`).

use kiln_engine_llama::{
    ChatMessage, EngineError, GenerateEvent, GenerateRequest, LlamaModelHandle, SamplingParams,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::fields::{self, type_name, Fields};
use crate::{ErrorKind, InferenceError};

/// Tokens generated when `max_tokens` is absent.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Temperature when `temperature` is absent.
pub const DEFAULT_TEMPERATURE: f64 = 0.6;

/// Fields that the hosted API accepts but this node cannot honour yet. They are rejected rather
/// than ignored, because ignoring them would return output the caller did not ask for.
const UNSUPPORTED_FIELDS: [&str; 4] = ["tools", "functions", "response_format", "lora"];

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A bare prompt. Unless `raw` is set, it is sent as one user message.
    Text {
        text: String,
        raw: bool,
    },
    Messages(Vec<ChatMessage>),
}

/// A validated text-generation input.
#[derive(Debug, Clone, PartialEq)]
pub struct TextGenerationInput {
    pub prompt: Prompt,
    pub stream: bool,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
}

impl TextGenerationInput {
    /// Validates an input object against the hosted schema. `max_generated_tokens` is the node's
    /// cap on `max_tokens`.
    pub fn parse(input: Value, max_generated_tokens: u32) -> Result<Self, InferenceError> {
        let fields = fields::object(input)?;
        if let Some(name) = UNSUPPORTED_FIELDS
            .iter()
            .find(|name| fields.contains_key(**name))
        {
            return Err(InferenceError::invalid_input(format!(
                "`{name}` is not supported by this node; remove it from the input"
            )));
        }

        let raw = fields::optional_bool(&fields, "raw")?.unwrap_or(false);
        let prompt = parse_prompt(&fields, raw)?;
        let stream = fields::optional_bool(&fields, "stream")?.unwrap_or(false);
        let max_tokens =
            fields::optional_integer(&fields, "max_tokens", 1, max_generated_tokens.into())?
                .map_or(DEFAULT_MAX_TOKENS.min(max_generated_tokens), |value| {
                    value as u32
                });
        let temperature = fields::optional_number(&fields, "temperature", 0.0, 5.0)?
            .unwrap_or(DEFAULT_TEMPERATURE);
        let seed = fields::optional_integer(&fields, "seed", 1, 9_999_999_999)?;
        let sampling = SamplingParams {
            temperature: temperature as f32,
            top_p: fields::optional_number(&fields, "top_p", 0.001, 1.0)?.map(|v| v as f32),
            top_k: fields::optional_integer(&fields, "top_k", 1, 50)?.map(|v| v as u32),
            seed: seed.map_or_else(rand::random, fold_seed),
            repetition_penalty: fields::optional_number(&fields, "repetition_penalty", 0.0, 2.0)?
                .map(|v| v as f32),
            frequency_penalty: fields::optional_number(&fields, "frequency_penalty", -2.0, 2.0)?
                .map(|v| v as f32),
            presence_penalty: fields::optional_number(&fields, "presence_penalty", -2.0, 2.0)?
                .map(|v| v as f32),
        };
        Ok(Self {
            prompt,
            stream,
            max_tokens,
            sampling,
        })
    }
}

/// Folds the API's seed range (up to 10 digits) into llama.cpp's 32-bit seed.
fn fold_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

fn parse_prompt(fields: &Fields, raw: bool) -> Result<Prompt, InferenceError> {
    let prompt = fields::optional_string(fields, "prompt")?;
    let messages = fields.get("messages").filter(|value| !value.is_null());
    match (prompt, messages) {
        (Some(_), Some(_)) => Err(InferenceError::invalid_input(
            "prompt and messages are mutually exclusive; send one of them",
        )),
        (None, None) => Err(InferenceError::invalid_input(
            "missing `prompt` (a string) or `messages` (an array of {role, content})",
        )),
        (Some(""), None) => Err(InferenceError::invalid_input("`prompt` must not be empty")),
        (Some(text), None) => Ok(Prompt::Text {
            text: text.to_string(),
            raw,
        }),
        (None, Some(messages)) => parse_messages(messages).map(Prompt::Messages),
    }
}

fn parse_messages(value: &Value) -> Result<Vec<ChatMessage>, InferenceError> {
    let Value::Array(items) = value else {
        return Err(InferenceError::invalid_input(format!(
            "`messages` must be an array of {{role, content}} objects, got {}",
            type_name(value)
        )));
    };
    if items.is_empty() {
        return Err(InferenceError::invalid_input(
            "`messages` must not be empty",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_message(index, item))
        .collect()
}

fn parse_message(index: usize, item: &Value) -> Result<ChatMessage, InferenceError> {
    let field = |name: &str| format!("messages[{index}].{name}");
    let Value::Object(message) = item else {
        return Err(InferenceError::invalid_input(format!(
            "`messages[{index}]` must be an object with `role` and `content`, got {}",
            type_name(item)
        )));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) if !role.is_empty() => role.clone(),
        Some(other) => {
            return Err(InferenceError::invalid_input(format!(
                "`{}` must be a non-empty string such as \"user\", got {}",
                field("role"),
                type_name(other)
            )))
        }
        None => {
            return Err(InferenceError::invalid_input(format!(
                "missing `{}`: use \"system\", \"user\" or \"assistant\"",
                field("role")
            )))
        }
    };
    let content = match message.get("content") {
        Some(Value::String(content)) => content.clone(),
        Some(Value::Array(parts)) => join_text_parts(parts, &field("content"))?,
        Some(other) => {
            return Err(InferenceError::invalid_input(format!(
                "`{}` must be a string or an array of {{type: \"text\", text}} parts, got {}",
                field("content"),
                type_name(other)
            )))
        }
        None => {
            return Err(InferenceError::invalid_input(format!(
                "missing `{}`",
                field("content")
            )))
        }
    };
    Ok(ChatMessage { role, content })
}

fn join_text_parts(parts: &[Value], field: &str) -> Result<String, InferenceError> {
    let mut text = String::new();
    for (index, part) in parts.iter().enumerate() {
        match part.get("text") {
            Some(Value::String(piece))
                if part.get("type").and_then(Value::as_str) == Some("text") =>
            {
                text.push_str(piece)
            }
            _ => {
                return Err(InferenceError::invalid_input(format!(
                    "`{field}[{index}]` must be {{\"type\": \"text\", \"text\": \"...\"}}"
                )))
            }
        }
    }
    Ok(text)
}

/// A generation in progress. Dropping it cancels the generation.
pub struct TextStream {
    events: UnboundedReceiver<GenerateEvent>,
    pub prompt_tokens: u32,
}

/// One server-sent event of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Text(String),
    Usage {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Error(InferenceError),
}

impl TextStream {
    /// Returns the next item, or `None` when the generation is over.
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            let item = match self.events.recv().await? {
                GenerateEvent::Started { .. } => continue,
                GenerateEvent::Text(text) => StreamItem::Text(text),
                GenerateEvent::Finished {
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => StreamItem::Usage {
                    prompt_tokens,
                    completion_tokens,
                },
                GenerateEvent::Failed(error) => StreamItem::Error(engine_error(error)),
            };
            return Some(item);
        }
    }
}

/// Formats a stream item as one server-sent event of the hosted API.
pub fn sse_event(item: &StreamItem) -> String {
    let data = match item {
        StreamItem::Text(text) => json!({ "response": text }),
        StreamItem::Usage {
            prompt_tokens,
            completion_tokens,
        } => json!({ "response": "", "usage": usage(*prompt_tokens, *completion_tokens) }),
        StreamItem::Error(error) => json!({
            "error": { "code": error.code(), "message": error.message },
        }),
    };
    format!("data: {data}\n\n")
}

/// The event that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Starts a generation and waits until the model accepted the prompt, so a rejected prompt
/// becomes an error before any response bytes are sent.
pub async fn start(
    model: &LlamaModelHandle,
    input: &TextGenerationInput,
) -> Result<TextStream, InferenceError> {
    let prompt = match &input.prompt {
        Prompt::Text { text, raw: true } => text.clone(),
        Prompt::Text { text, raw: false } => model
            .render_chat(&[ChatMessage {
                role: "user".into(),
                content: text.clone(),
            }])
            .map_err(engine_error)?,
        Prompt::Messages(messages) => model.render_chat(messages).map_err(engine_error)?,
    };

    let (sender, mut events) = unbounded_channel();
    model
        .submit(GenerateRequest {
            prompt,
            max_tokens: input.max_tokens,
            sampling: input.sampling.clone(),
            ignore_eos: false,
            events: sender,
        })
        .map_err(engine_error)?;
    match events.recv().await {
        Some(GenerateEvent::Started { prompt_tokens }) => Ok(TextStream {
            events,
            prompt_tokens,
        }),
        Some(GenerateEvent::Failed(error)) => Err(engine_error(error)),
        Some(other) => Err(InferenceError::internal(format!(
            "the model sent {other:?} before accepting the prompt"
        ))),
        None => Err(engine_error(EngineError::WorkerStopped)),
    }
}

/// Runs a generation to the end and returns the hosted API's JSON result.
pub async fn complete(mut stream: TextStream) -> Result<Value, InferenceError> {
    let mut response = String::new();
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Text(text) => response.push_str(&text),
            StreamItem::Usage {
                prompt_tokens,
                completion_tokens,
            } => {
                return Ok(json!({
                    "response": response,
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
            }
            StreamItem::Error(error) => return Err(error),
        }
    }
    Err(engine_error(EngineError::WorkerStopped))
}

fn engine_error(error: EngineError) -> InferenceError {
    let kind = match &error {
        EngineError::PromptTooLong { .. }
        | EngineError::EmptyPrompt
        | EngineError::ChatTemplate(_) => ErrorKind::InvalidInput,
        EngineError::QueueFull { .. } => ErrorKind::OutOfCapacity,
        EngineError::Load { .. } | EngineError::WorkerStopped | EngineError::Decode(_) => {
            ErrorKind::ModelUnavailable
        }
    };
    match kind {
        ErrorKind::InvalidInput => InferenceError::invalid_input(error),
        _ => InferenceError::new(kind, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: Value) -> Result<TextGenerationInput, InferenceError> {
        TextGenerationInput::parse(input, 4096)
    }

    #[test]
    fn defaults_follow_hosted_schema() {
        let input = parse(json!({"prompt": "hi"})).unwrap();
        assert_eq!(input.max_tokens, 256);
        assert!((input.sampling.temperature - 0.6).abs() < 1e-6);
        assert!(!input.stream);
        assert_eq!(input.sampling.top_k, None);
    }

    #[test]
    fn prompt_and_messages_conflict() {
        let error = parse(json!({"prompt": "a", "messages": []})).unwrap_err();
        assert!(
            error.message.contains("mutually exclusive"),
            "{}",
            error.message
        );
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn missing_prompt_is_rejected() {
        let error = parse(json!({"max_tokens": 5})).unwrap_err();
        assert!(error.message.contains("`prompt`"), "{}", error.message);
    }

    #[test]
    fn out_of_range_fields_name_the_field() {
        let cases = [
            (json!({"prompt": "a", "temperature": 5.5}), "temperature"),
            (json!({"prompt": "a", "top_p": 0}), "top_p"),
            (json!({"prompt": "a", "top_k": 51}), "top_k"),
            (json!({"prompt": "a", "seed": 0}), "seed"),
            (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": "a", "max_tokens": 5000}), "max_tokens"),
            (
                json!({"prompt": "a", "repetition_penalty": 2.5}),
                "repetition_penalty",
            ),
            (
                json!({"prompt": "a", "frequency_penalty": -3}),
                "frequency_penalty",
            ),
            (
                json!({"prompt": "a", "presence_penalty": 3}),
                "presence_penalty",
            ),
            (json!({"prompt": "a", "stream": "yes"}), "stream"),
            (json!({"prompt": 5}), "prompt"),
        ];
        for (input, field) in cases {
            let error = parse(input.clone()).unwrap_err();
            assert_eq!(error.code(), 3010, "{input}");
            assert!(
                error.message.contains(&format!("`{field}`")),
                "{input}: {}",
                error.message
            );
        }
    }

    #[test]
    fn message_errors_name_the_index() {
        let error =
            parse(json!({"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}))
                .unwrap_err();
        assert!(
            error.message.contains("messages[1].content"),
            "{}",
            error.message
        );
    }

    #[test]
    fn content_parts_are_joined() {
        let input = parse(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}
        ]}]}))
        .unwrap();
        let Prompt::Messages(messages) = input.prompt else {
            panic!("expected messages");
        };
        assert_eq!(messages[0].content, "Hello, world");
    }

    #[test]
    fn unsupported_field_is_rejected() {
        let error = parse(json!({"prompt": "a", "tools": []})).unwrap_err();
        assert!(error.message.contains("`tools`"), "{}", error.message);
    }

    #[test]
    fn equal_seeds_fold_equally() {
        let first = parse(json!({"prompt": "a", "seed": 9_999_999_999u64})).unwrap();
        let second = parse(json!({"prompt": "a", "seed": 9_999_999_999u64})).unwrap();
        assert_eq!(first.sampling.seed, second.sampling.seed);
    }

    #[test]
    fn sse_events_have_hosted_shape() {
        assert_eq!(
            sse_event(&StreamItem::Text("hi".into())),
            "data: {\"response\":\"hi\"}\n\n"
        );
        let usage = sse_event(&StreamItem::Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        });
        assert!(usage.contains("\"total_tokens\":5"), "{usage}");
    }
}
