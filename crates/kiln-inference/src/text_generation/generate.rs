//! Running a generation: prompt rendering, constrained decoding, and the stream of results.

use std::collections::VecDeque;
use std::time::Instant;

use kiln_engine_llama::{
    grammar_from_json_schema, ChatMessage, EngineError, FinishReason, GenerateEvent,
    GenerateRequest, LlamaModelHandle,
};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::tools::{forced_call_schema, messages_with_tool_prompt, parse_tool_calls, tools_json};
use super::{Prompt, ResponseFormat, TextGenerationInput, Tool, ToolCall};
use crate::loaded_models::Lease;
use crate::usage::{UsageContext, UsageRecord};
use crate::{ErrorKind, InferenceError};

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// One step of a generation, in order: any number of `Text`, at most one `ToolCalls`, then
/// `Done`; or `Error` at any point.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Text(String),
    ToolCalls(Vec<ToolCall>),
    Done {
        usage: Usage,
        finish_reason: FinishReason,
    },
    Error(InferenceError),
}

/// A generation in progress. Dropping it cancels the generation.
pub struct TextStream {
    events: UnboundedReceiver<GenerateEvent>,
    pub prompt_tokens: u32,
    /// When tools are offered, text is held until the end, since only the whole reply shows
    /// whether it is a tool call.
    tools: Option<Vec<Tool>>,
    held_text: String,
    pending: VecDeque<StreamItem>,
    /// The installed model that runs the generation, for the node's metrics.
    model: String,
    /// When the request was submitted to the model.
    submitted: Instant,
    /// When the first token arrived.
    first_token: Option<Instant>,
    /// Sink and calling worker of the usage record sent when the generation finishes or is
    /// dropped.
    usage: UsageContext,
    /// Text events received so far, for the usage of a generation dropped before it finished.
    text_events: u64,
    /// Whether the usage was recorded, so that it is recorded once.
    usage_recorded: bool,
    /// Keeps the model marked in use until the stream is dropped, so the memory budget does
    /// not unload it under the generation.
    lease: Option<Lease>,
}

impl TextStream {
    /// Returns the next item, or `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<StreamItem> {
        if let Some(item) = self.pending.pop_front() {
            return Some(item);
        }
        loop {
            match self.events.recv().await? {
                GenerateEvent::Started { .. } => continue,
                GenerateEvent::Text(text) => {
                    self.text_events += 1;
                    self.observe_token();
                    if self.tools.is_some() {
                        self.held_text.push_str(&text);
                    } else {
                        return Some(StreamItem::Text(text));
                    }
                }
                GenerateEvent::Finished {
                    prompt_tokens,
                    completion_tokens,
                    reason,
                } => {
                    self.observe_finish(prompt_tokens, completion_tokens);
                    let done = StreamItem::Done {
                        usage: Usage {
                            prompt_tokens,
                            completion_tokens,
                        },
                        finish_reason: reason,
                    };
                    return Some(self.release_held(done));
                }
                GenerateEvent::Failed(error) => {
                    return Some(StreamItem::Error(engine_error(error)))
                }
            }
        }
    }

    /// Records the time to the first token.
    fn observe_token(&mut self) {
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            let seconds = now.duration_since(self.submitted).as_secs_f64();
            metrics::histogram!("kiln_time_to_first_token_seconds", "model" => self.model.clone())
                .record(seconds);
        }
    }

    /// Returns when the request was submitted to the model.
    pub(crate) fn submitted_at(&self) -> Instant {
        self.submitted
    }

    /// Makes the stream report its usage to `usage` when it finishes or is dropped.
    pub(crate) fn hold_lease(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    pub(crate) fn attach_usage(&mut self, usage: UsageContext) {
        self.usage = usage;
    }

    /// Records the token counts and the decode rate of a finished generation, in the metrics
    /// and in the usage record.
    fn observe_finish(&mut self, prompt_tokens: u32, completion_tokens: u32) {
        self.record_usage(u64::from(prompt_tokens), u64::from(completion_tokens));
        let labels = [("model", self.model.clone())];
        metrics::counter!("kiln_input_tokens_total", &labels).increment(u64::from(prompt_tokens));
        metrics::counter!("kiln_output_tokens_total", &labels)
            .increment(u64::from(completion_tokens));
        // The first token comes from the prefill, so the rate counts the tokens decoded after it.
        let decode = self.first_token.map(|first| first.elapsed().as_secs_f64());
        if let Some(seconds) = decode.filter(|seconds| *seconds > 0.0 && completion_tokens > 1) {
            let rate = f64::from(completion_tokens - 1) / seconds;
            metrics::histogram!("kiln_generation_tokens_per_second", &labels).record(rate);
        }
    }

    /// Sends the generation's usage record, once. Compute time runs from the submission to now.
    fn record_usage(&mut self, input_tokens: u64, output_tokens: u64) {
        if self.usage_recorded {
            return;
        }
        self.usage_recorded = true;
        self.usage.record(UsageRecord {
            model: self.model.clone(),
            worker: self.usage.worker.clone(),
            input_tokens,
            output_tokens,
            images: 0,
            compute_seconds: self.submitted.elapsed().as_secs_f64(),
        });
    }

    /// Turns held text into tool calls or text, queued before `done`.
    fn release_held(&mut self, done: StreamItem) -> StreamItem {
        let Some(tools) = &self.tools else {
            return done;
        };
        let held_text = std::mem::take(&mut self.held_text);
        let calls = parse_tool_calls(&held_text, tools);
        let first = if !calls.is_empty() {
            StreamItem::ToolCalls(calls)
        } else if !held_text.is_empty() {
            StreamItem::Text(held_text)
        } else {
            return done;
        };
        self.pending.push_back(done);
        first
    }
}

impl Drop for TextStream {
    /// Records the usage of a generation that stopped before `Finished`: the client went away,
    /// or the model failed mid-stream.
    fn drop(&mut self) {
        // NOTE: the engine sends about one text event per token, but it may hold back or merge
        // pieces (stop strings, split UTF-8), so this output count is an estimate.
        let prompt_tokens = u64::from(self.prompt_tokens);
        self.record_usage(prompt_tokens, self.text_events);
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

/// Runs a generation to the end.
pub async fn collect(mut stream: TextStream) -> Result<Completion, InferenceError> {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Text(piece) => text.push_str(&piece),
            StreamItem::ToolCalls(calls) => tool_calls = calls,
            StreamItem::Done {
                usage,
                finish_reason,
            } => {
                return Ok(Completion {
                    text,
                    tool_calls,
                    usage,
                    finish_reason,
                })
            }
            StreamItem::Error(error) => return Err(error),
        }
    }
    Err(engine_error(EngineError::WorkerStopped))
}

/// Starts a generation and waits until the model accepted the prompt, so a rejected prompt
/// becomes an error before any response bytes are sent.
pub async fn start(
    model_id: &str,
    model: &LlamaModelHandle,
    input: &TextGenerationInput,
) -> Result<TextStream, InferenceError> {
    let prompt = render_prompt(model, input)?;
    let grammar = output_grammar(input)?;
    let submitted = Instant::now();

    let (sender, mut events) = unbounded_channel();
    model
        .submit(GenerateRequest {
            prompt,
            max_tokens: input.max_tokens,
            sampling: input.sampling.clone(),
            ignore_eos: false,
            stop: input.stop.clone(),
            grammar,
            reuse_prefix: true,
            events: sender,
        })
        .map_err(engine_error)?;
    match events.recv().await {
        Some(GenerateEvent::Started {
            prompt_tokens,
            cached_tokens,
        }) => {
            metrics::histogram!("kiln_inference_queue_wait_seconds", "model" => model_id.to_owned())
                .record(submitted.elapsed().as_secs_f64());
            metrics::counter!("kiln_prompt_cached_tokens_total", "model" => model_id.to_owned())
                .increment(u64::from(cached_tokens));
            Ok(TextStream {
                events,
                prompt_tokens,
                tools: input.tools_active().then(|| input.tools.clone()),
                held_text: String::new(),
                pending: VecDeque::new(),
                model: model_id.to_owned(),
                submitted,
                first_token: None,
                usage: UsageContext::default(),
                text_events: 0,
                usage_recorded: false,
                lease: None,
            })
        }
        Some(GenerateEvent::Failed(error)) => Err(engine_error(error)),
        Some(other) => Err(InferenceError::internal(format!(
            "the model sent {other:?} before accepting the prompt"
        ))),
        None => Err(engine_error(EngineError::WorkerStopped)),
    }
}

fn render_prompt(
    model: &LlamaModelHandle,
    input: &TextGenerationInput,
) -> Result<String, InferenceError> {
    let user_message;
    let messages: &[ChatMessage] = match &input.prompt {
        Prompt::Text { text, raw: true } => return Ok(text.clone()),
        Prompt::Text { text, raw: false } => {
            user_message = [ChatMessage::new("user", text.clone())];
            &user_message
        }
        Prompt::Messages(messages) => messages,
    };
    let rendered = if !input.tools_active() {
        model.render_chat(messages, None)
    } else if model.renders_tools() {
        model.render_chat(messages, Some(&tools_json(&input.tools)))
    } else {
        model.render_chat(&messages_with_tool_prompt(messages, &input.tools), None)
    };
    rendered.map_err(engine_error)
}

/// Returns the grammar for a forced tool call or JSON mode, if the request sets either.
fn output_grammar(input: &TextGenerationInput) -> Result<Option<String>, InferenceError> {
    let forced_call = input
        .tools_active()
        .then(|| forced_call_schema(&input.tools, &input.tool_choice))
        .flatten();
    let (schema, field) = match (forced_call, &input.response_format) {
        (Some(schema), _) => (schema, "tools"),
        (None, Some(ResponseFormat::JsonObject)) => (json!({"type": "object"}), "response_format"),
        (None, Some(ResponseFormat::JsonSchema(schema))) => {
            (schema.clone(), "response_format.json_schema")
        }
        (None, None) => return Ok(None),
    };
    grammar_from_json_schema(&schema.to_string())
        .map(Some)
        .map_err(|err| InferenceError::invalid_input(format!("`{field}`: {err}")))
}

pub(crate) fn engine_error(error: EngineError) -> InferenceError {
    let kind = match &error {
        EngineError::PromptTooLong { .. }
        | EngineError::EmptyPrompt
        | EngineError::ChatTemplate(_)
        | EngineError::Grammar(_) => ErrorKind::InvalidInput,
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
