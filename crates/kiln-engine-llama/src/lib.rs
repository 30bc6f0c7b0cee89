//! Text generation for GGUF models through llama.cpp.
//!
//! Each loaded model owns one llama.cpp context on a dedicated thread. That context decodes
//! several sequences at once, so concurrent requests share every decode step instead of
//! queueing behind one another. Requests reach the thread through a bounded queue and results
//! come back as [`GenerateEvent`]s on a channel, so the async runtime never blocks on the model.

mod chat;
pub mod quantize;
mod scheduler;
mod stop;
mod utf8;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use tokio::sync::mpsc::UnboundedSender;

pub use chat::ChatMessage;

/// Settings of one loaded model. Defaults suit a small model on a 2-core machine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// CPU threads for prefill and decode.
    pub threads: u32,
    /// Context window of each sequence, in tokens (prompt plus generated tokens).
    pub context_tokens: u32,
    /// Sequences decoded together in one batch.
    pub parallel_sequences: u32,
    /// Maximum tokens in one decode call; longer prompts are prefilled in chunks of this size.
    pub batch_tokens: u32,
    /// Requests that may wait for a free sequence before [`LlamaModelHandle::submit`] returns
    /// [`EngineError::QueueFull`].
    pub queue_capacity: usize,
    /// Flash attention in llama.cpp where the model supports it, for faster decoding.
    pub flash_attention: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            context_tokens: 2048,
            parallel_sequences: 4,
            batch_tokens: 512,
            queue_capacity: 64,
            flash_attention: true,
        }
    }
}

/// Sampling settings of one request. `temperature == 0` selects greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub seed: u32,
    /// Multiplicative penalty on tokens already present (1.0 disables it).
    pub repetition_penalty: Option<f32>,
    /// Additive penalty per occurrence of a token (0.0 disables it).
    pub frequency_penalty: Option<f32>,
    /// Additive penalty on any token already present (0.0 disables it).
    pub presence_penalty: Option<f32>,
}

/// One generation request: a prompt already rendered with the chat template when one applies.
#[derive(Debug)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Keep generating past end-of-generation tokens until `max_tokens`, as benchmarks do.
    pub ignore_eos: bool,
    /// Strings that end generation; the matched string is not returned.
    pub stop: Vec<String>,
    /// A GBNF grammar (llama.cpp's format, root rule `root`) that every generated token must
    /// follow, for JSON output and forced tool calls.
    pub grammar: Option<String>,
    /// Start from the KV cache of an earlier request that shares a prompt prefix, when a free
    /// slot contains one. Benchmarks turn this off to time a full prefill.
    pub reuse_prefix: bool,
    /// Receives the events of this request. Dropping the receiver cancels the request.
    pub events: UnboundedSender<GenerateEvent>,
}

/// The reason generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
}

impl FinishReason {
    /// Returns the OpenAI-style name (`stop`, `length`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Progress of one request, in order: `Started`, any number of `Text`, then `Finished` or
/// `Failed`. `Failed` may also come first, when the prompt is rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    Started {
        prompt_tokens: u32,
        /// Leading prompt tokens whose KV cache an earlier request left in the slot, so they
        /// are not decoded again.
        cached_tokens: u32,
    },
    /// Generated text; pieces never split a UTF-8 character.
    Text(String),
    Finished {
        prompt_tokens: u32,
        completion_tokens: u32,
        reason: FinishReason,
    },
    Failed(EngineError),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("failed to load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "the prompt has {prompt_tokens} tokens but the model's context window is {context_tokens} \
         tokens; shorten the prompt or the conversation"
    )]
    PromptTooLong {
        prompt_tokens: u32,
        context_tokens: u32,
    },
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
    #[error(
        "the model's request queue is full ({capacity} requests waiting); retry later, or raise \
         llama.queue_capacity or llama.parallel_sequences in kiln.toml"
    )]
    QueueFull { capacity: usize },
    #[error("the model's worker thread has stopped")]
    WorkerStopped,
    #[error("invalid chat template or messages: {0}")]
    ChatTemplate(String),
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    #[error("invalid grammar: {0}")]
    Grammar(String),
}

/// Converts a JSON Schema into a GBNF grammar whose strings are exactly the JSON documents that
/// match the schema, using llama.cpp's converter.
pub fn grammar_from_json_schema(schema: &str) -> Result<String, EngineError> {
    llama_cpp_2::json_schema_to_grammar(schema)
        .map_err(|err| EngineError::Grammar(format!("unsupported JSON schema: {err}")))
}

/// Returns the process-wide llama.cpp backend, which may be initialised only once.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| {
        let mut backend = LlamaBackend::init().map_err(|err| err.to_string())?;
        // llama.cpp logs every tensor at load time on stderr; Kiln logs loads itself.
        backend.void_logs();
        Ok(backend)
    });
    backend.as_ref().map_err(|reason| EngineError::Load {
        path: PathBuf::new(),
        reason: format!("llama.cpp backend initialisation failed: {reason}"),
    })
}

/// Facts about a loaded model that callers show or check before submitting.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub context_tokens: u32,
    pub trained_context_tokens: u32,
    pub parameters: u64,
    pub size_bytes: u64,
    pub has_chat_template: bool,
}

/// A loaded GGUF model and its generation thread. Cloning shares the same model.
#[derive(Clone)]
pub struct LlamaModelHandle {
    inner: Arc<Inner>,
}

struct Inner {
    model: Arc<LlamaModel>,
    template: Option<chat::ChatTemplate>,
    queue: SyncSender<GenerateRequest>,
    /// Cleared when the generation thread exits, including by a panic.
    alive: Arc<AtomicBool>,
    options: EngineOptions,
    info: ModelInfo,
}

impl LlamaModelHandle {
    /// Loads a GGUF file and starts its generation thread. Blocks for the load time (the file
    /// is memory-mapped, so this is mostly page-in of the weights).
    pub fn load(path: &Path, options: EngineOptions) -> Result<Self, EngineError> {
        let backend = backend()?;
        let load_error = |reason: String| EngineError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|err| load_error(err.to_string()))?;
        let model = Arc::new(model);

        let template = match model.meta_val_str("tokenizer.chat_template") {
            Ok(source) => Some(chat::ChatTemplate::new(&model, source).map_err(load_error)?),
            Err(_) => None,
        };
        let info = ModelInfo {
            context_tokens: options.context_tokens.min(model.n_ctx_train().max(1)),
            trained_context_tokens: model.n_ctx_train(),
            parameters: model.n_params(),
            size_bytes: model.size(),
            has_chat_template: template.is_some(),
        };

        let (queue, requests) = mpsc::sync_channel(options.queue_capacity);
        let (ready_sender, ready) = mpsc::channel();
        let thread_model = Arc::clone(&model);
        let thread_options = EngineOptions {
            context_tokens: info.context_tokens,
            ..options.clone()
        };
        let alive = Arc::new(AtomicBool::new(true));
        let exit_flag = AliveFlag(Arc::clone(&alive));
        thread::Builder::new()
            .name("kiln-llama".into())
            .spawn(move || {
                let _exit_flag = exit_flag;
                scheduler::run(
                    backend,
                    &thread_model,
                    &thread_options,
                    requests,
                    ready_sender,
                )
            })
            .map_err(|err| load_error(format!("failed to start the model thread: {err}")))?;
        ready
            .recv()
            .map_err(|_| load_error("the model thread stopped during start-up".into()))?
            .map_err(load_error)?;

        Ok(Self {
            inner: Arc::new(Inner {
                model,
                template,
                queue,
                alive,
                options,
                info,
            }),
        })
    }

    /// Returns whether the generation thread still runs. A thread that panicked is gone for
    /// good, and the model has to be loaded again.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Renders chat messages with the chat template stored in the GGUF file, ending with the
    /// assistant's turn so the model replies next. `tools` (OpenAI function definitions) is
    /// passed to templates that render tools; see [`renders_tools`](Self::renders_tools).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        match &self.inner.template {
            Some(template) => template.render(messages, tools),
            None => Ok(chat::render_plain(messages)),
        }
    }

    /// Returns whether the model's chat template renders tool definitions and tool calls itself.
    pub fn renders_tools(&self) -> bool {
        self.inner
            .template
            .as_ref()
            .is_some_and(|template| template.renders_tools)
    }

    /// Counts the tokens of `text` as [`submit`](Self::submit) will see it.
    pub fn count_tokens(&self, text: &str) -> u32 {
        tokenize(&self.inner.model, text).len() as u32
    }

    /// Queues a request. Events arrive on `request.events`; the first is `Started` or `Failed`.
    pub fn submit(&self, request: GenerateRequest) -> Result<(), EngineError> {
        self.inner.queue.try_send(request).map_err(|err| match err {
            TrySendError::Full(_) => EngineError::QueueFull {
                capacity: self.inner.options.queue_capacity,
            },
            TrySendError::Disconnected(_) => EngineError::WorkerStopped,
        })
    }
}

/// Clears the flag when dropped, which happens when the thread ends or unwinds.
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
        if thread::panicking() {
            tracing::error!("the llama.cpp generation thread panicked; the model will be reloaded");
        }
    }
}

fn tokenize(model: &LlamaModel, text: &str) -> Vec<llama_cpp_2::token::LlamaToken> {
    // `add_special` adds BOS where the model requests it. Special tokens written in the text
    // (such as `<|im_start|>` from a chat template) become tokens, as in llama.cpp's server.
    model.vocab().tokenize(text.as_bytes(), true, true)
}

fn context_size(options: &EngineOptions) -> Option<NonZeroU32> {
    NonZeroU32::new(options.context_tokens * options.parallel_sequences.max(1))
}
