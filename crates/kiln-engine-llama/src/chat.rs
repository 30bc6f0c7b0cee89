//! Chat prompts rendered with the Jinja chat template stored in a GGUF file's metadata.

use llama_cpp_2::model::LlamaModel;
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::EngineError;

/// One message of a conversation. `role` is usually `system`, `user`, `assistant` or `tool`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

const TEMPLATE_NAME: &str = "chat";

pub(crate) struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles the template once at load time, so a broken template fails the load.
    pub fn new(model: &LlamaModel, source: String) -> Result<Self, String> {
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
            bos_token: token_text(vocab.bos()),
            eos_token: token_text(vocab.eos()),
            environment,
        })
    }

    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let template = self
            .environment
            .get_template(TEMPLATE_NAME)
            .map_err(|err| EngineError::ChatTemplate(err.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
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
