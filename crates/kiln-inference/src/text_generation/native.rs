//! Results in the hosted API's native shape: `{response, tool_calls, usage}`, or server-sent
//! events of `{"response": "<piece>"}` ending with `data: [DONE]`.

use serde_json::{json, Value};

use super::{Completion, StreamItem, ToolCall, Usage};
use crate::InferenceError;

/// The event that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// Builds the JSON result. In JSON mode `response` is the parsed object, as the hosted API
/// returns it. Output that does not parse, because `max_tokens` cut it off, is an error.
pub fn native_result(completion: &Completion, json_mode: bool) -> Result<Value, InferenceError> {
    let response = if json_mode {
        serde_json::from_str::<Value>(&completion.text).map_err(|_| {
            InferenceError::invalid_input(format!(
                "JSON Mode couldn't be met: the output stopped after {} tokens before the JSON \
                 was complete; raise `max_tokens`",
                completion.usage.completion_tokens
            ))
        })?
    } else {
        Value::String(completion.text.clone())
    };
    let mut result = json!({ "response": response, "usage": usage_json(&completion.usage) });
    if !completion.tool_calls.is_empty() {
        result["tool_calls"] = native_tool_calls(&completion.tool_calls);
    }
    Ok(result)
}

/// Tool calls in the hosted API's form: `[{name, arguments: {...}}]`.
fn native_tool_calls(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|call| json!({"name": call.name, "arguments": call.arguments}))
            .collect(),
    )
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
    })
}

/// Formats a stream item as one server-sent event of the hosted API.
pub fn sse_event(item: &StreamItem) -> String {
    let data = match item {
        StreamItem::Text(text) => json!({ "response": text }),
        StreamItem::ToolCalls(calls) => {
            json!({ "response": "", "tool_calls": native_tool_calls(calls) })
        }
        StreamItem::Done { usage, .. } => json!({ "response": "", "usage": usage_json(usage) }),
        StreamItem::Error(error) => json!({
            "error": { "code": error.code(), "message": error.message },
        }),
    };
    format!("data: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine_llama::FinishReason;

    fn completion(text: &str) -> Completion {
        Completion {
            text: text.into(),
            tool_calls: Vec::new(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            finish_reason: FinishReason::Stop,
        }
    }

    #[test]
    fn sse_events_have_hosted_shape() {
        assert_eq!(
            sse_event(&StreamItem::Text("hi".into())),
            "data: {\"response\":\"hi\"}\n\n"
        );
        let done = sse_event(&StreamItem::Done {
            usage: completion("").usage,
            finish_reason: FinishReason::Stop,
        });
        assert!(done.contains("\"total_tokens\":5"), "{done}");
    }

    #[test]
    fn json_mode_returns_parsed_object() {
        let result = native_result(&completion("{\"a\": 1}"), true).unwrap();
        assert_eq!(result["response"], json!({"a": 1}));
    }

    #[test]
    fn cut_off_json_is_an_error() {
        let error = native_result(&completion("{\"a\": "), true).unwrap_err();
        assert!(
            error.message.contains("JSON Mode couldn't be met"),
            "{}",
            error.message
        );
    }
}
