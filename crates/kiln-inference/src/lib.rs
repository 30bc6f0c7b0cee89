//! The inference service: one entry point, [`InferenceService::run`], behind both the REST API
//! and the worker binding. It resolves a model id (canonical, alias or hosted catalog id),
//! validates the input against the task's schema before any model loads, loads the model once
//! on first use, and runs it on the engine's own threads.

pub mod batching;
mod catalog;
pub mod classification;
pub mod custom;
mod deadline;
pub mod embeddings;
mod encoder_service;
pub mod engines;
mod error;
pub mod fields;
pub mod image_classification;
pub mod image_preprocess;
mod loaded_models;
pub mod request_log;
pub mod sequence_classification;
mod service;
pub mod text_generation;
mod usage;

pub use batching::BatchOptions;
pub use catalog::{catalog_entry, hosted_task};
pub use deadline::Deadline;
pub use engines::OnnxEngineOptions;
pub use error::{ErrorKind, InferenceError};
pub use kiln_engine_llama::EngineOptions;
pub use loaded_models::{LoadedModel, UnloadReason};
pub use service::{InferenceService, Output, RunOutput, ServiceOptions};
pub use text_generation::{sse_event, StreamItem, TextGenerationInput, TextStream, SSE_DONE};
pub use usage::{UsageRecord, UsageSink};
