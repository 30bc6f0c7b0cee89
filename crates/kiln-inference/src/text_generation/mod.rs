//! The Text Generation task: the input schema with the hosted API's defaults and ranges, chat
//! rendering with tools, constrained output (JSON mode, forced tool calls), and results in the
//! native shape. The OpenAI-compatible endpoints build the same [`TextGenerationInput`] and read
//! the same [`TextStream`].

mod generate;
mod input;
mod native;
mod tools;

use kiln_engine_llama::ChatMessage;
use serde_json::Value;

pub use generate::{collect, start, Completion, StreamItem, TextStream, Usage};
pub use input::{
    fold_seed, parse_messages, parse_response_format, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE,
};
pub use kiln_engine_llama::{FinishReason, SamplingParams};
pub use native::{native_result, sse_event, usage_json, SSE_DONE};
pub use tools::{parse_tool_choice, parse_tool_definitions};

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A bare prompt. Unless `raw` is set, it is sent as one user message.
    Text {
        text: String,
        raw: bool,
    },
    Messages(Vec<ChatMessage>),
}

/// A constraint on the output's form.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this JSON Schema.
    JsonSchema(Value),
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolChoice {
    /// The model decides; a reply that is a tool call becomes `tool_calls`.
    #[default]
    Auto,
    /// Tools are not offered to the model.
    None,
    /// The model must call one of the tools (constrained decoding guarantees the form).
    Required,
    /// The model must call this tool.
    Function(String),
}

/// A tool call parsed from the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object.
    pub arguments: Value,
}

/// A validated text-generation input.
#[derive(Debug, Clone, PartialEq)]
pub struct TextGenerationInput {
    pub prompt: Prompt,
    pub stream: bool,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Strings that end generation; the matched string is not returned.
    pub stop: Vec<String>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
}

impl TextGenerationInput {
    /// Returns whether tools are offered to the model for this request.
    pub fn tools_active(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}
