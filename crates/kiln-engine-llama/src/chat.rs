//! Chat prompts rendered with the Jinja chat template stored in a GGUF file's metadata.

use llama_cpp_2::model::LlamaModel;
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::EngineError;

/// One message of a conversation. `role` is usually `system`, `user`, `assistant` or `tool`.
/// The optional fields reach templates that render tool use (Hugging Face's conventions).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Calls an assistant message made, as `[{id, type: "function", function: {name,
    /// arguments}}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The id of the call that a `tool` message replies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

const TEMPLATE_NAME: &str = "chat";

pub(crate) struct ChatTemplate {
    environment: Environment<'static>,
    /// Whether the template renders a `tools` list and assistant `tool_calls` itself.
    pub renders_tools: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles the template once at load time, so a broken template fails the load.
    pub fn new(model: &LlamaModel, source: String) -> Result<Self, String> {
        let renders_tools = source.contains("tools") && source.contains("tool_calls");
        let mut environment = Environment::new();
        // Hugging Face templates call Python string methods such as `.strip()`.
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment
            .add_template_owned(TEMPLATE_NAME, source)
            .map_err(|err| format!("the GGUF chat template does not compile: {err}"))?;

        let vocab = model.vocab();
        let token_text = |token| {
            vocab
                .text(token)
                .map(|text| text.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Ok(Self {
            renders_tools,
            bos_token: token_text(vocab.bos()),
            eos_token: token_text(vocab.eos()),
            environment,
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        let template = self
            .environment
            .get_template(TEMPLATE_NAME)
            .map_err(|err| EngineError::ChatTemplate(err.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|err| EngineError::ChatTemplate(err.to_string()))
    }
}

/// Renders messages as `role: content` lines for a model without a chat template.
pub(crate) fn render_plain(messages: &[ChatMessage]) -> String {
    let mut prompt = String::new();
    for message in messages {
        prompt.push_str(&message.role);
        prompt.push_str(": ");
        prompt.push_str(&message.content);
        prompt.push('\n');
    }
    prompt.push_str("assistant:");
    prompt
}
