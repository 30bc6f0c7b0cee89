//! The traits through which a worker reaches node services. The runtime contains no model
//! code, so the node passes an implementation in when it starts a worker.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

/// Result of `env.AI.run`.
pub enum AiOutput {
    /// A result whose content type is exactly `application/json`: the binding returns the
    /// parsed value.
    Json(Value),
    /// Any other result (server-sent events for `stream: true`, binary output): the binding
    /// returns a `ReadableStream` of these bytes.
    Stream(BoxStream<'static, Result<Bytes, String>>),
}

/// A failed model run, as the binding throws it: `err.name` is `name` and `err.message` is
/// `"<code>: <description>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiError {
    /// Error class name, e.g. `InvalidInput`.
    pub name: String,
    /// The hosted API's internal error code, e.g. 3010.
    pub code: u32,
    pub description: String,
}

/// The `[ai]` binding: runs a model in the node's inference service.
pub trait AiBinding: Send + Sync + 'static {
    /// Runs `model` on `inputs` for the worker request `request_id` (empty outside a request),
    /// which the node's log lines about the run carry. `options` is the third argument of
    /// `env.AI.run` (gateway, tags and similar per-call settings), or `null`.
    fn run(
        &self,
        request_id: String,
        model: String,
        inputs: Value,
        options: Value,
    ) -> BoxFuture<'static, Result<AiOutput, AiError>>;
}
