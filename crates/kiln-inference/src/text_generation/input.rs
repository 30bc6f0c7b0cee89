//! The native input schema of text generation, with the hosted API's defaults and ranges.

use kiln_engine_llama::{ChatMessage, SamplingParams};
use serde_json::Value;

use super::tools::{parse_tool_choice, parse_tool_definitions};
use super::{Prompt, ResponseFormat, TextGenerationInput};
use crate::fields::{self, type_name, Fields};
use crate::InferenceError;

/// Tokens generated when `max_tokens` is absent.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Temperature when `temperature` is absent.
pub const DEFAULT_TEMPERATURE: f64 = 0.6;

/// Fields that the hosted API accepts but this node cannot honour yet. They are rejected rather
/// than ignored, because ignoring them would return output the caller did not ask for.
const UNSUPPORTED_FIELDS: [&str; 2] = ["functions", "lora"];

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
        let response_format = fields
            .get("response_format")
            .filter(|value| !value.is_null())
            .map(|value| parse_response_format(value, "response_format"))
            .transpose()?;
        if stream && response_format.is_some() {
            return Err(InferenceError::invalid_input(
                "JSON mode (`response_format`) does not support streaming; remove `stream` or \
                 `response_format`",
            ));
        }
        let tools = match fields.get("tools").filter(|value| !value.is_null()) {
            Some(value) => parse_tool_definitions(value, "tools")?,
            None => Vec::new(),
        };
        let tool_choice = match fields.get("tool_choice").filter(|value| !value.is_null()) {
            Some(value) => parse_tool_choice(value, &tools, "tool_choice")?,
            None => Default::default(),
        };
        Ok(TextGenerationInput {
            prompt,
            stream,
            max_tokens,
            sampling,
            stop: Vec::new(),
            response_format,
            tools,
            tool_choice,
        })
    }
}

/// Parses `{type: "json_object"}` or `{type: "json_schema", json_schema: ...}`. The schema may
/// be given directly or, as OpenAI clients send it, under `json_schema.schema`.
pub fn parse_response_format(value: &Value, field: &str) -> Result<ResponseFormat, InferenceError> {
    let kind = value.get("type").and_then(Value::as_str);
    match kind {
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let Some(schema) = value.get("json_schema").filter(|schema| schema.is_object()) else {
                return Err(InferenceError::invalid_input(format!(
                    "`{field}.json_schema` must be a JSON Schema object"
                )));
            };
            let schema = match schema.get("schema") {
                None => schema,
                Some(inner @ Value::Object(_)) => inner,
                Some(other) => {
                    return Err(InferenceError::invalid_input(format!(
                        "`{field}.json_schema.schema` must be a JSON Schema object, got {}",
                        type_name(other)
                    )))
                }
            };
            Ok(ResponseFormat::JsonSchema(schema.clone()))
        }
        Some("text") => Err(InferenceError::invalid_input(format!(
            "`{field}.type` \"text\" is the default; omit `{field}` instead"
        ))),
        _ => Err(InferenceError::invalid_input(format!(
            "`{field}.type` must be \"json_object\" or \"json_schema\""
        ))),
    }
}

/// Folds the API's seed range (up to 10 digits) into llama.cpp's 32-bit seed.
pub fn fold_seed(seed: u64) -> u32 {
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

pub fn parse_messages(value: &Value) -> Result<Vec<ChatMessage>, InferenceError> {
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
        // An assistant message that only calls tools has no content.
        Some(Value::Null) if message.get("tool_calls").is_some_and(Value::is_array) => {
            String::new()
        }
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
    let tool_calls = match message.get("tool_calls") {
        None | Some(Value::Null) => None,
        Some(calls @ Value::Array(_)) => Some(calls.clone()),
        Some(other) => {
            return Err(InferenceError::invalid_input(format!(
                "`{}` must be an array, got {}",
                field("tool_calls"),
                type_name(other)
            )))
        }
    };
    let text_field = |name: &str| -> Result<Option<String>, InferenceError> {
        match message.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(InferenceError::invalid_input(format!(
                "`{}` must be a string, got {}",
                field(name),
                type_name(other)
            ))),
        }
    };
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id: text_field("tool_call_id")?,
        name: text_field("name")?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let error = parse(json!({"prompt": "a", "functions": []})).unwrap_err();
        assert!(error.message.contains("`functions`"), "{}", error.message);
    }

    #[test]
    fn equal_seeds_fold_equally() {
        let first = parse(json!({"prompt": "a", "seed": 9_999_999_999u64})).unwrap();
        let second = parse(json!({"prompt": "a", "seed": 9_999_999_999u64})).unwrap();
        assert_eq!(first.sampling.seed, second.sampling.seed);
    }

    #[test]
    fn json_mode_with_stream_is_rejected() {
        let error = parse(json!({"prompt": "a", "stream": true,
                                 "response_format": {"type": "json_object"}}))
        .unwrap_err();
        assert!(error.message.contains("streaming"), "{}", error.message);
    }

    #[test]
    fn openai_style_schema_is_unwrapped() {
        let input = parse(
            json!({"prompt": "a", "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
        )
        .unwrap();
        assert_eq!(
            input.response_format,
            Some(ResponseFormat::JsonSchema(json!({"type": "object"})))
        );
    }

    #[test]
    fn tool_call_message_may_lack_content() {
        let input = parse(json!({"messages": [
            {"role": "user", "content": "add"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "add", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"}
        ]}))
        .unwrap();
        let Prompt::Messages(messages) = input.prompt else {
            panic!("expected messages");
        };
        assert!(messages[1].tool_calls.is_some());
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("c1"));
    }
}
