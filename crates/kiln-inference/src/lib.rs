//! The inference service: one entry point, [`InferenceService::run`], behind both the REST API
//! and the worker binding. It resolves a model id (canonical, alias or hosted catalog id),
//! validates the input against the task's schema before any model loads, loads the model once
//! on first use, and runs it on the engine's own threads.

mod catalog;
mod error;
pub mod fields;
mod service;
pub mod text_generation;

pub use catalog::{catalog_entry, hosted_task};
pub use error::{ErrorKind, InferenceError};
pub use kiln_engine_llama::EngineOptions;
pub use service::{InferenceService, Output, RunOutput, ServiceOptions};
pub use text_generation::{sse_event, StreamItem, TextStream, SSE_DONE};
