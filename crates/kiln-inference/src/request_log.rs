//! The model runs of one HTTP request, collected for its log line. The server wraps a request
//! in [`collect`]; [`InferenceService::run`](crate::InferenceService::run) and the inference
//! cache add a [`ModelRun`] for each model they run or serve. Outside [`collect`] nothing is
//! recorded.

use std::cell::RefCell;
use std::future::Future;

use serde::Serialize;

tokio::task_local! {
    static RUNS: RefCell<Vec<ModelRun>>;
}

/// One model run of a request, as its log line shows it. Inputs and outputs are never kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelRun {
    /// The model id in the request (a hosted id or an alias).
    pub requested: String,
    /// The installed model that ran.
    pub model: String,
    /// `ok` or the error class.
    pub outcome: String,
    /// Milliseconds of the run; for a stream, until it started.
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// `HIT` or `MISS` when the request asked for the inference cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
}

/// Runs `request` and returns its output with the model runs recorded while it ran.
pub async fn collect<F: Future>(request: F) -> (F::Output, Vec<ModelRun>) {
    RUNS.scope(RefCell::new(Vec::new()), async move {
        let output = request.await;
        let runs = RUNS.with(|runs| runs.take());
        (output, runs)
    })
    .await
}

/// Adds a run to the current request's list.
pub fn record(run: ModelRun) {
    let _ = RUNS.try_with(|runs| runs.borrow_mut().push(run));
}

/// Sets the cache status of the current request's last run.
pub fn mark_cache(status: &'static str) {
    let _ = RUNS.try_with(|runs| {
        if let Some(run) = runs.borrow_mut().last_mut() {
            run.cache = Some(status);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_belong_to_their_request() {
        let (value, runs) = collect(async {
            record(ModelRun {
                model: "a".into(),
                ..ModelRun::default()
            });
            mark_cache("MISS");
            7
        })
        .await;
        assert_eq!(value, 7);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].model, "a");
        assert_eq!(runs[0].cache, Some("MISS"));
        // Outside a request nothing is kept and nothing fails.
        record(ModelRun::default());
        let ((), runs) = collect(async {}).await;
        assert!(runs.is_empty());
    }
}
