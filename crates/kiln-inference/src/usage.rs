//! Usage records: what one model run cost, for per-worker and per-model accounting.
//!
//! The service builds one [`UsageRecord`] per run from the same numbers that feed the node's
//! metrics, and hands it to the [`UsageSink`] that the node installed (see
//! [`crate::InferenceService::with_usage_sink`]).

use std::sync::Arc;

/// The cost of one model run.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// The installed model that ran, after alias resolution.
    pub model: String,
    /// The worker whose `env.AI.run` call caused the run; `None` for the REST and
    /// OpenAI-compatible routes.
    pub worker: Option<String>,
    /// Prompt tokens of a generation, or tokens of the texts an embeddings model encoded
    /// (special tokens included). Zero for the other tasks.
    pub input_tokens: u64,
    /// Tokens a generation produced.
    pub output_tokens: u64,
    /// Images an image classification model classified.
    pub images: u64,
    /// Seconds the model spent on the request. A generation counts from its submission to the
    /// model to its last token. The other tasks count the request's wall time once the model is
    /// loaded: input preprocessing, the wait for a batch and the whole batch's forward passes.
    pub compute_seconds: f64,
}

/// Receives a usage record per model run. `record` runs on the request's task, so it must not
/// block.
pub trait UsageSink: Send + Sync {
    fn record(&self, record: UsageRecord);
}

/// The sink and the calling worker, carried by a run until its usage is known.
#[derive(Clone, Default)]
pub(crate) struct UsageContext {
    pub sink: Option<Arc<dyn UsageSink>>,
    pub worker: Option<String>,
}

impl UsageContext {
    pub fn record(&self, record: UsageRecord) {
        if let Some(sink) = &self.sink {
            sink.record(record);
        }
    }
}

/// Counts of one encoder run, before its caller is added.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EncoderCounts {
    pub input_tokens: u64,
    pub images: u64,
    /// Wall time of the run after the model was loaded, preprocessing and batch wait included.
    pub compute_seconds: f64,
}
