//! Loading models onto the ONNX Runtime and candle engines, and reading engine outputs.

use std::path::PathBuf;

use kiln_engine::{Engine, EngineError, Tensor};
use kiln_engine_onnx::{OnnxModel, OnnxOptions, OnnxRuntime};
use kiln_models::{Manifest, ModelStore};

use crate::{ErrorKind, InferenceError};

/// Settings of the non-llama engines, taken from the node configuration.
#[derive(Debug, Clone, Default)]
pub struct OnnxEngineOptions {
    /// ONNX Runtime's shared library (`libonnxruntime.so`).
    pub onnx_library: PathBuf,
    /// Threads of one ONNX forward pass; 0 lets ONNX Runtime choose.
    pub onnx_threads: usize,
}

/// Loads the model's ONNX graph into an ONNX Runtime session.
pub fn load_onnx(
    store: &ModelStore,
    manifest: &Manifest,
    options: &OnnxEngineOptions,
) -> Result<Box<dyn Engine>, String> {
    let file = manifest
        .primary_file()
        .ok_or("the manifest lists no .onnx file")?;
    let path = store.file_path(manifest, file);
    let runtime = OnnxRuntime::load(&options.onnx_library).map_err(|error| error.to_string())?;
    let model = OnnxModel::load(
        &runtime,
        &path,
        &OnnxOptions {
            threads: options.onnx_threads,
        },
    )
    .map_err(|error| error.to_string())?;
    Ok(Box::new(model))
}

/// Maps an engine failure during a forward pass: bad inputs are the client's error, anything
/// else is the node's.
pub fn run_error(error: EngineError) -> InferenceError {
    match error {
        EngineError::InvalidInput(message) => InferenceError::invalid_input(message),
        EngineError::Load(message) => InferenceError::new(ErrorKind::ModelUnavailable, message),
        EngineError::Run(message) => {
            InferenceError::internal(format!("the forward pass failed: {message}"))
        }
    }
}

/// Returns the output called `name`, else the first output.
pub fn output<'a>(
    outputs: &'a [(String, Tensor)],
    name: &str,
) -> Result<&'a Tensor, InferenceError> {
    outputs
        .iter()
        .find(|(output, _)| output == name)
        .or_else(|| outputs.first())
        .map(|(_, tensor)| tensor)
        .ok_or_else(|| InferenceError::internal("the model returned no outputs"))
}
