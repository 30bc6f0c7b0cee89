//! Custom ONNX models (`@custom/NAME`): plain tensors in, every output out.
//!
//! Input forms:
//! - `{"input": number[] | number[][]}` for a model with one input; a flat array is one row.
//! - `{"inputs": {NAME: {"shape"?: number[], "data": number[] | nested arrays}}}` for any
//!   model; without `shape`, the nesting of `data` gives it.
//!
//! Output: `{"prediction": ..., "outputs": {NAME: {"shape", "data"}}}`, where `prediction` is
//! the first output, flattened when it has one value per row.

use kiln_engine::{ElementType, Engine, Tensor, TensorData, TensorSpec};
use kiln_models::{Manifest, ModelStore};
use serde_json::{json, Map, Value};

use crate::batching::{BatchHandle, BatchOptions, BatchRunner};
use crate::engines::{self, OnnxEngineOptions};
use crate::fields::{self, type_name};
use crate::InferenceError;

type NamedTensors = Vec<(String, Tensor)>;

/// Runs each request in a forward pass of its own, since custom inputs vary in shape.
struct CustomRunner {
    engine: Box<dyn Engine>,
}

impl BatchRunner for CustomRunner {
    type Item = NamedTensors;
    type Output = NamedTensors;

    fn tokens(&self, _item: &NamedTensors) -> usize {
        1
    }

    fn run(&mut self, items: Vec<NamedTensors>) -> Result<Vec<NamedTensors>, InferenceError> {
        items
            .into_iter()
            .map(|inputs| self.engine.run(inputs).map_err(engines::run_error))
            .collect()
    }
}

/// A loaded custom model: its signature and its worker thread.
#[derive(Clone)]
pub struct CustomModel {
    inputs: Vec<TensorSpec>,
    worker: BatchHandle<CustomRunner>,
}

impl CustomModel {
    pub fn load(
        store: &ModelStore,
        manifest: &Manifest,
        engine_options: &OnnxEngineOptions,
        batch_options: BatchOptions,
    ) -> Result<CustomModel, String> {
        let engine = engines::load_onnx(store, manifest, engine_options)?;
        let inputs = engine.inputs().to_vec();
        let options = BatchOptions {
            max_batch_size: 1,
            ..batch_options
        };
        let worker = BatchHandle::spawn(&manifest.id, CustomRunner { engine }, options)
            .map_err(|e| e.message)?;
        Ok(CustomModel { inputs, worker })
    }

    pub async fn run(&self, input: Value) -> Result<Value, InferenceError> {
        let tensors = parse_inputs(input, &self.inputs)?;
        let outputs = self
            .worker
            .submit(vec![tensors])
            .await?
            .pop()
            .ok_or_else(|| InferenceError::internal("the model returned no outputs"))?;
        Ok(output_json(&outputs))
    }
}

/// Validates the input against the model's signature and builds its tensors.
fn parse_inputs(input: Value, specs: &[TensorSpec]) -> Result<NamedTensors, InferenceError> {
    let fields = fields::object(input)?;
    match (fields.get("input"), fields.get("inputs")) {
        (Some(_), Some(_)) => Err(InferenceError::invalid_input(
            "`input` and `inputs` are mutually exclusive; send one of them",
        )),
        (Some(data), None) => {
            let [spec] = specs else {
                let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
                return Err(InferenceError::invalid_input(format!(
                    "the model has {} inputs ({}); name them with `inputs`: \
                     {{NAME: {{\"shape\", \"data\"}}}}",
                    specs.len(),
                    names.join(", ")
                )));
            };
            let (mut shape, values) = flatten("input", data, spec)?;
            if shape.len() == 1 && spec.shape.len() == 2 {
                shape.insert(0, 1);
            }
            Ok(vec![(
                spec.name.clone(),
                build("input", spec, shape, values)?,
            )])
        }
        (None, Some(Value::Object(named))) => parse_named(named, specs),
        (None, Some(other)) => Err(InferenceError::invalid_input(format!(
            "`inputs` must be an object of {{NAME: {{\"shape\", \"data\"}}}}, got {}",
            type_name(other)
        ))),
        (None, None) => Err(InferenceError::invalid_input(
            "missing `input` (a number array) or `inputs` (named tensors)",
        )),
    }
}

fn parse_named(
    named: &Map<String, Value>,
    specs: &[TensorSpec],
) -> Result<NamedTensors, InferenceError> {
    if let Some(unknown) = named
        .keys()
        .find(|name| !specs.iter().any(|spec| &spec.name == *name))
    {
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        return Err(InferenceError::invalid_input(format!(
            "`inputs.{unknown}` is not an input of the model; its inputs are {}",
            names.join(", ")
        )));
    }
    specs
        .iter()
        .map(|spec| {
            let field = format!("inputs.{}", spec.name);
            let Some(Value::Object(tensor)) = named.get(&spec.name) else {
                return Err(InferenceError::invalid_input(format!(
                    "missing `{field}`: send {{\"shape\": {}, \"data\": [...]}}",
                    spec.shape_text()
                )));
            };
            let data = tensor
                .get("data")
                .ok_or_else(|| InferenceError::invalid_input(format!("missing `{field}.data`")))?;
            let (nested_shape, values) = flatten(&format!("{field}.data"), data, spec)?;
            let shape = match tensor.get("shape") {
                None | Some(Value::Null) => nested_shape,
                Some(Value::Array(dims)) => dims
                    .iter()
                    .map(|dim| dim.as_u64().map(|dim| dim as usize))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| {
                        InferenceError::invalid_input(format!(
                            "`{field}.shape` must be an array of non-negative integers"
                        ))
                    })?,
                Some(other) => {
                    return Err(InferenceError::invalid_input(format!(
                        "`{field}.shape` must be an array, got {}",
                        type_name(other)
                    )))
                }
            };
            Ok((spec.name.clone(), build(&field, spec, shape, values)?))
        })
        .collect()
}

/// Flattens a number or nested number arrays, returning the shape the nesting gives. Errors
/// name the shape and element type of `spec`, the model input that `data` is for.
fn flatten(
    field: &str,
    data: &Value,
    spec: &TensorSpec,
) -> Result<(Vec<usize>, Vec<f64>), InferenceError> {
    fn walk(
        value: &Value,
        depth: usize,
        shape: &mut Vec<usize>,
        out: &mut Vec<f64>,
    ) -> Result<(), String> {
        match value {
            Value::Number(number) => {
                if depth != shape.len() {
                    return Err("the nested arrays are ragged".into());
                }
                out.push(number.as_f64().unwrap_or(f64::NAN));
                Ok(())
            }
            Value::Array(items) => {
                if depth == shape.len() {
                    if !out.is_empty() {
                        return Err("the nested arrays are ragged".into());
                    }
                    shape.push(items.len());
                } else if shape.get(depth) != Some(&items.len()) {
                    return Err("the nested arrays are ragged".into());
                }
                items
                    .iter()
                    .try_for_each(|item| walk(item, depth + 1, shape, out))
            }
            other => Err(format!(
                "found {} where a number was expected",
                type_name(other)
            )),
        }
    }
    let mut shape = Vec::new();
    let mut values = Vec::new();
    walk(data, 0, &mut shape, &mut values).map_err(|reason| {
        InferenceError::invalid_input(format!(
            "`{field}`: {reason}; the model's input `{}` expects {} numbers of shape {} \
             (? is any size)",
            spec.name,
            spec.element_type,
            spec.shape_text()
        ))
    })?;
    Ok((shape, values))
}

/// Checks shape and element type against the model's input and builds the tensor.
fn build(
    field: &str,
    spec: &TensorSpec,
    shape: Vec<usize>,
    values: Vec<f64>,
) -> Result<Tensor, InferenceError> {
    let mismatch = || {
        InferenceError::invalid_input(format!(
            "`{field}` has shape {shape:?}, but the model's input `{}` expects shape {} \
             (? is any size)",
            spec.name,
            spec.shape_text()
        ))
    };
    if !spec.shape.is_empty()
        && (shape.len() != spec.shape.len()
            || shape
                .iter()
                .zip(&spec.shape)
                .any(|(given, expected)| expected.is_some_and(|size| size != *given)))
    {
        return Err(mismatch());
    }
    let count: usize = shape.iter().product();
    if count != values.len() {
        return Err(InferenceError::invalid_input(format!(
            "`{field}` has {} values, but shape {shape:?} needs {count}",
            values.len()
        )));
    }
    let integer = |values: &[f64]| -> Result<Vec<i64>, InferenceError> {
        values
            .iter()
            .map(|&value| {
                (value.fract() == 0.0 && value.is_finite())
                    .then_some(value as i64)
                    .ok_or_else(|| {
                        InferenceError::invalid_input(format!(
                            "`{field}` must hold integers, since the model's input `{}` is {}, \
                             got {value}",
                            spec.name, spec.element_type
                        ))
                    })
            })
            .collect()
    };
    let data = match spec.element_type {
        ElementType::F32 => TensorData::F32(values.iter().map(|&v| v as f32).collect()),
        ElementType::F64 => TensorData::F64(values),
        ElementType::I64 => TensorData::I64(integer(&values)?),
        ElementType::I32 => {
            TensorData::I32(integer(&values)?.into_iter().map(|v| v as i32).collect())
        }
        ElementType::Bool => TensorData::Bool(values.iter().map(|&v| v != 0.0).collect()),
        ElementType::Other => {
            return Err(InferenceError::invalid_input(format!(
                "the model's input `{}` has an element type this node cannot fill",
                spec.name
            )))
        }
    };
    Tensor::new(shape, data).map_err(engines::run_error)
}

fn tensor_json(tensor: &Tensor) -> Value {
    json!({"shape": tensor.shape, "data": tensor.data.to_f64()})
}

fn output_json(outputs: &NamedTensors) -> Value {
    let prediction = outputs.first().map_or(Value::Null, |(_, tensor)| {
        let values = tensor.data.to_f64();
        match tensor.shape[..] {
            [_, 1] | [_] | [] => json!(values),
            [_, width, ..] if width > 0 => {
                let row = values.len() / tensor.shape[0].max(1);
                json!(values.chunks(row.max(1)).collect::<Vec<_>>())
            }
            _ => json!(values),
        }
    });
    let named: Map<String, Value> = outputs
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor_json(tensor)))
        .collect();
    json!({"prediction": prediction, "outputs": named})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec {
            name: "features".into(),
            element_type: ElementType::F32,
            shape,
        }
    }

    #[test]
    fn flat_input_becomes_one_row() {
        let tensors =
            parse_inputs(json!({"input": [1, 2, 3]}), &[spec(vec![None, Some(3)])]).unwrap();
        assert_eq!(tensors[0].1.shape, vec![1, 3]);
    }

    #[test]
    fn shape_mismatch_gives_expected_shape() {
        let error =
            parse_inputs(json!({"input": [[1, 2]]}), &[spec(vec![None, Some(3)])]).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.message.contains("[?, 3]"), "{}", error.message);
    }

    #[test]
    fn named_inputs_use_given_shape() {
        let input = json!({"inputs": {"features": {"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}}});
        let tensors = parse_inputs(input, &[spec(vec![None, Some(3)])]).unwrap();
        assert_eq!(tensors[0].1.shape, vec![2, 3]);
    }

    #[test]
    fn ragged_and_unknown_inputs_are_rejected() {
        let specs = [spec(vec![None, Some(2)])];
        assert!(parse_inputs(json!({"input": [[1, 2], [3]]}), &specs).is_err());
        let error = parse_inputs(json!({"inputs": {"other": {"data": [1]}}}), &specs).unwrap_err();
        assert!(error.message.contains("inputs.other"), "{}", error.message);
    }

    #[test]
    fn type_errors_give_expected_shape() {
        let specs = [spec(vec![None, Some(3)])];
        for input in [
            json!({"input": "1, 2, 3"}),
            json!({"input": [[1, "2", 3]]}),
            json!({"input": [1, true, 3]}),
            json!({"inputs": {"features": {"data": [[1, null, 3]]}}}),
        ] {
            let error = parse_inputs(input.clone(), &specs).unwrap_err();
            assert_eq!(error.status(), 400, "{input}");
            assert!(
                error.message.contains("[?, 3]"),
                "{input}: {}",
                error.message
            );
            assert!(
                error.message.contains("float32"),
                "{input}: {}",
                error.message
            );
        }
    }
}
