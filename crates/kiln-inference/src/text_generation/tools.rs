//! Tool use: definitions in the hosted and OpenAI forms, how they reach the model, the grammar
//! that forces a call, and parsing calls out of the generated text.

use kiln_engine_llama::ChatMessage;
use serde_json::{json, Value};

use super::{Tool, ToolCall, ToolChoice};
use crate::fields::type_name;
use crate::InferenceError;

/// Parses a `tools` array. Each item is the OpenAI form `{type: "function", function: {name,
/// description, parameters}}` or the hosted API's legacy form `{name, description, parameters}`.
pub fn parse_tool_definitions(value: &Value, field: &str) -> Result<Vec<Tool>, InferenceError> {
    let Value::Array(items) = value else {
        return Err(InferenceError::invalid_input(format!(
            "`{field}` must be an array of function definitions, got {}",
            type_name(value)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let item_field = format!("{field}[{index}]");
            let definition = match item.get("type").and_then(Value::as_str) {
                Some("function") => item.get("function").ok_or_else(|| {
                    InferenceError::invalid_input(format!("missing `{item_field}.function`"))
                })?,
                Some(other) => {
                    return Err(InferenceError::invalid_input(format!(
                        "`{item_field}.type` must be \"function\", got {other:?}"
                    )))
                }
                None => item,
            };
            parse_tool(definition, &item_field)
        })
        .collect()
}

fn parse_tool(definition: &Value, field: &str) -> Result<Tool, InferenceError> {
    let name = definition.get("name").and_then(Value::as_str).unwrap_or("");
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(InferenceError::invalid_input(format!(
            "`{field}` needs a `name` of 1 to 64 letters, digits, `_` or `-`"
        )));
    }
    let parameters = match definition.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(parameters @ Value::Object(_)) => parameters.clone(),
        Some(other) => {
            return Err(InferenceError::invalid_input(format!(
                "`{field}.parameters` must be a JSON Schema object, got {}",
                type_name(other)
            )))
        }
    };
    Ok(Tool {
        name: name.to_string(),
        description: definition
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        parameters,
    })
}

/// Parses `tool_choice`: `"auto"`, `"none"`, `"required"` or `{type: "function", function:
/// {name}}` naming one of `tools`.
pub fn parse_tool_choice(
    value: &Value,
    tools: &[Tool],
    field: &str,
) -> Result<ToolChoice, InferenceError> {
    let choice = match value {
        Value::String(text) if text == "auto" => ToolChoice::Auto,
        Value::String(text) if text == "none" => ToolChoice::None,
        Value::String(text) if text == "required" || text == "any" => ToolChoice::Required,
        Value::Object(_) => {
            let name = value
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    InferenceError::invalid_input(format!(
                        "`{field}` must be \"auto\", \"none\", \"required\" or \
                         {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    ))
                })?;
            if !tools.iter().any(|tool| tool.name == name) {
                return Err(InferenceError::invalid_input(format!(
                    "`{field}` names the function {name:?}, which is not in `tools`"
                )));
            }
            ToolChoice::Function(name.to_string())
        }
        _ => {
            return Err(InferenceError::invalid_input(format!(
                "`{field}` must be \"auto\", \"none\", \"required\" or a function object"
            )))
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(InferenceError::invalid_input(format!(
            "`{field}` requires a tool call but `tools` is empty"
        )));
    }
    Ok(choice)
}

/// Returns the tools in the OpenAI form that chat templates expect.
pub fn tools_json(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                }})
            })
            .collect(),
    )
}

/// Prepares messages for a chat template that does not render tools itself: the tool list
/// and the calling convention go into the system message, and earlier assistant calls become
/// the JSON text the model is asked to write.
pub fn messages_with_tool_prompt(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let instruction = format!(
        "You can call these functions:\n{}\nTo call a function, reply with only a JSON object of \
         the form {{\"name\": \"<function name>\", \"arguments\": {{...}}}} and nothing else. \
         Otherwise answer normally.",
        tools_json(tools)
    );
    let mut prepared: Vec<ChatMessage> = messages
        .iter()
        .map(|message| match &message.tool_calls {
            Some(calls) if message.content.is_empty() => {
                ChatMessage::new(message.role.clone(), calls_as_text(calls))
            }
            _ => ChatMessage::new(message.role.clone(), message.content.clone()),
        })
        .collect();
    match prepared.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{instruction}", first.content);
        }
        _ => prepared.insert(0, ChatMessage::new("system", instruction)),
    }
    prepared
}

/// Renders OpenAI-style `tool_calls` as the `{"name", "arguments"}` objects of the prompt.
fn calls_as_text(calls: &Value) -> String {
    let objects: Vec<Value> = calls
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| {
            let function = call.get("function").unwrap_or(call);
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(json!({})),
                Some(other) => other.clone(),
                None => json!({}),
            };
            json!({"name": function.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments})
        })
        .collect();
    match objects.as_slice() {
        [single] => single.to_string(),
        _ => Value::Array(objects).to_string(),
    }
}

/// The JSON Schema that a forced tool call must match, or `None` when no call is forced.
pub fn forced_call_schema(tools: &[Tool], choice: &ToolChoice) -> Option<Value> {
    let call_schema = |tool: &Tool| {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": tool.parameters,
            },
            "required": ["name", "arguments"],
        })
    };
    match choice {
        ToolChoice::Required => {
            Some(json!({"anyOf": tools.iter().map(call_schema).collect::<Vec<_>>()}))
        }
        ToolChoice::Function(name) => tools
            .iter()
            .find(|tool| &tool.name == name)
            .map(call_schema),
        ToolChoice::Auto | ToolChoice::None => None,
    }
}

/// Finds tool calls in generated text: a JSON object `{"name", "arguments"}` or an array of
/// them, optionally inside a Markdown code fence or `<tool_call>` tags. Returns an empty list
/// when the text is not a call of one of `tools`.
pub fn parse_tool_calls(text: &str, tools: &[Tool]) -> Vec<ToolCall> {
    let mut body = text.trim();
    for (open, close) in [
        ("<tool_call>", "</tool_call>"),
        ("```json", "```"),
        ("```", "```"),
    ] {
        if let Some(inner) = body.strip_prefix(open) {
            body = inner.strip_suffix(close).unwrap_or(inner).trim();
        }
    }
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let candidates = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Vec::new(),
    };
    let mut calls = Vec::new();
    for candidate in candidates {
        let Some(name) = candidate.get("name").and_then(Value::as_str) else {
            return Vec::new();
        };
        if !tools.iter().any(|tool| tool.name == name) {
            return Vec::new();
        }
        let arguments = match candidate
            .get("arguments")
            .or_else(|| candidate.get("parameters"))
        {
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
            Some(value) => value.clone(),
            None => json!({}),
        };
        if !arguments.is_object() {
            return Vec::new();
        }
        calls.push(ToolCall {
            id: format!("call_{}", uuid::Uuid::new_v4().simple()),
            name: name.to_string(),
            arguments,
        });
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_tool() -> Vec<Tool> {
        parse_tool_definitions(
            &json!([{"type": "function", "function": {"name": "add", "parameters":
                {"type": "object", "properties": {"a": {"type": "number"}}}}}]),
            "tools",
        )
        .unwrap()
    }

    #[test]
    fn legacy_and_openai_forms_parse_alike() {
        let legacy = parse_tool_definitions(&json!([{"name": "add"}]), "tools").unwrap();
        let openai = parse_tool_definitions(
            &json!([{"type": "function", "function": {"name": "add"}}]),
            "tools",
        )
        .unwrap();
        assert_eq!(legacy, openai);
    }

    #[test]
    fn bad_tool_name_is_rejected() {
        let error = parse_tool_definitions(&json!([{"name": "has space"}]), "tools").unwrap_err();
        assert!(error.message.contains("tools[0]"), "{}", error.message);
    }

    #[test]
    fn choice_must_name_known_tool() {
        let error = parse_tool_choice(
            &json!({"type": "function", "function": {"name": "mul"}}),
            &add_tool(),
            "tool_choice",
        )
        .unwrap_err();
        assert!(error.message.contains("\"mul\""), "{}", error.message);
    }

    #[test]
    fn call_is_parsed_from_plain_and_tagged_text() {
        for text in [
            r#"{"name": "add", "arguments": {"a": 1}}"#,
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>",
            "```json\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}\n```",
        ] {
            let calls = parse_tool_calls(text, &add_tool());
            assert_eq!(calls.len(), 1, "{text}");
            assert_eq!(calls[0].name, "add");
            assert_eq!(calls[0].arguments, json!({"a": 1}));
        }
    }

    #[test]
    fn prose_and_unknown_tools_are_not_calls() {
        assert!(parse_tool_calls("The answer is 3.", &add_tool()).is_empty());
        assert!(parse_tool_calls(r#"{"name": "mul", "arguments": {}}"#, &add_tool()).is_empty());
    }

    #[test]
    fn tool_prompt_goes_into_system_message() {
        let messages = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "1+2?"),
        ];
        let prepared = messages_with_tool_prompt(&messages, &add_tool());
        assert_eq!(prepared.len(), 2);
        assert!(prepared[0].content.starts_with("Be brief."));
        assert!(prepared[0].content.contains("\"add\""));
    }

    #[test]
    fn forced_call_schema_pins_the_name() {
        let schema = forced_call_schema(&add_tool(), &ToolChoice::Function("add".into())).unwrap();
        assert_eq!(schema["properties"]["name"]["const"], "add");
        assert!(forced_call_schema(&add_tool(), &ToolChoice::Auto).is_none());
    }
}
