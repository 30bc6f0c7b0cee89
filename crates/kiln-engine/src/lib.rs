//! The interface between Kiln's tasks and its model engines.
//!
//! A task (embeddings, classification, a custom model) prepares named input tensors and reads
//! named output tensors; an [`Engine`] runs one forward pass over them. ONNX Runtime and candle
//! both implement it, so a task never knows which engine runs its model. Engines are driven
//! from one dedicated thread each, never from the async runtime, so `run` may block.

use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F64,
    I32,
    I64,
    Bool,
    /// A type that Kiln cannot pass in or read out, such as strings or float16.
    Other,
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::Bool => "bool",
            ElementType::Other => "unsupported",
        })
    }
}

/// Row-major tensor contents.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn element_type(&self) -> ElementType {
        match self {
            TensorData::F32(_) => ElementType::F32,
            TensorData::F64(_) => ElementType::F64,
            TensorData::I32(_) => ElementType::I32,
            TensorData::I64(_) => ElementType::I64,
            TensorData::Bool(_) => ElementType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(values) => values.len(),
            TensorData::F64(values) => values.len(),
            TensorData::I32(values) => values.len(),
            TensorData::I64(values) => values.len(),
            TensorData::Bool(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts the values to `f64`, with `true` as 1 and `false` as 0.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::F32(values) => values.iter().map(|&v| f64::from(v)).collect(),
            TensorData::F64(values) => values.clone(),
            TensorData::I32(values) => values.iter().map(|&v| f64::from(v)).collect(),
            TensorData::I64(values) => values.iter().map(|&v| v as f64).collect(),
            TensorData::Bool(values) => values.iter().map(|&v| f64::from(u8::from(v))).collect(),
        }
    }
}

/// A dense tensor: a shape and row-major data whose length is the product of the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly as many values as `shape` needs.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, EngineError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(EngineError::InvalidInput(format!(
                "shape {shape:?} needs {expected} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// Returns the `f32` values, or an error naming the actual element type.
    pub fn as_f32(&self) -> Result<&[f32], EngineError> {
        match &self.data {
            TensorData::F32(values) => Ok(values),
            other => Err(EngineError::Run(format!(
                "expected a float32 tensor, got {}",
                other.element_type()
            ))),
        }
    }
}

/// Name, element type and shape of a model input or output. `None` marks a dynamic
/// dimension, such as the batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Option<usize>>,
}

impl TensorSpec {
    /// Formats the shape with `?` for dynamic dimensions, as in `[?, 6]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|dim| dim.map_or_else(|| "?".to_string(), |size| size.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The model files could not be read or the engine rejected them.
    #[error("failed to load the model: {0}")]
    Load(String),
    /// The inputs do not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// The forward pass failed.
    #[error("the forward pass failed: {0}")]
    Run(String),
}

/// One loaded model that runs forward passes over named tensors.
pub trait Engine: Send {
    /// The model's inputs, in the order the graph declares them.
    fn inputs(&self) -> &[TensorSpec];
    /// The model's outputs, in the order the graph declares them.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs one forward pass and returns every output in [`Engine::outputs`] order. Blocks the
    /// calling thread for the whole pass.
    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_rejects_wrong_length() {
        let error = Tensor::new(vec![2, 3], TensorData::F32(vec![0.0; 5])).unwrap_err();
        assert!(error.to_string().contains("needs 6 values"), "{error}");
    }

    #[test]
    fn spec_shape_marks_dynamic_dims() {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![None, Some(6)],
        };
        assert_eq!(spec.shape_text(), "[?, 6]");
    }
}
