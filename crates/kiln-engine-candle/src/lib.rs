//! BERT-family models stored as Hugging Face safetensors folders (`config.json` and
//! `model.safetensors`), run on the CPU with candle.
//!
//! Each engine has the signature of the same model's Hugging Face ONNX export, so a task feeds
//! it exactly as it feeds the ONNX graph:
//!
//! - [`CandleBert`], a `BertModel` encoder: inputs `input_ids`, `attention_mask` and
//!   `token_type_ids` (int64, `[batch, tokens]`), output `last_hidden_state` (float32,
//!   `[batch, tokens, hidden]`).
//! - [`CandleSequenceClassifier`], a `DistilBertForSequenceClassification` or
//!   `BertForSequenceClassification`: the same inputs (DistilBERT has no `token_type_ids`),
//!   output `logits` (float32, `[batch, labels]`).

mod classifier;
mod distilbert;

use std::path::Path;

use candle_core::{DType, Device, Tensor as CandleTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use kiln_engine::{ElementType, Engine, EngineError, Tensor, TensorData, TensorSpec};

pub use classifier::{CandleSequenceClassifier, LOGITS};

pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";

/// A BERT encoder (`BertModel`, also MiniLM and other BERT-architecture checkpoints).
pub struct CandleBert {
    model: BertModel,
    hidden_size: usize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl CandleBert {
    /// Loads `config.json` and `model.safetensors` from a model folder.
    pub fn load(config_path: &Path, weights_path: &Path) -> Result<CandleBert, EngineError> {
        let (text, value) = read_config(config_path)?;
        let config: Config = serde_json::from_str(&text).map_err(|error| {
            EngineError::Load(format!(
                "{} is not a BERT config: {error}",
                config_path.display()
            ))
        })?;
        let hidden_size = value
            .get("hidden_size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                EngineError::Load(format!("{} has no hidden_size", config_path.display()))
            })? as usize;

        let weights = map_weights(weights_path)?;
        let model = BertModel::load(weights, &config).map_err(|error| {
            EngineError::Load(format!(
                "{} does not hold BERT weights: {error}",
                weights_path.display()
            ))
        })?;

        Ok(CandleBert {
            model,
            hidden_size,
            inputs: vec![
                token_input(INPUT_IDS),
                token_input(ATTENTION_MASK),
                token_input(TOKEN_TYPE_IDS),
            ],
            outputs: vec![TensorSpec {
                name: LAST_HIDDEN_STATE.to_string(),
                element_type: ElementType::F32,
                shape: vec![None, None, Some(hidden_size)],
            }],
        })
    }

    fn forward(&self, inputs: Vec<(String, Tensor)>) -> candle_core::Result<Tensor> {
        let TokenInputs {
            input_ids,
            attention_mask,
            token_type_ids,
        } = TokenInputs::read(inputs)?;
        let token_type_ids = match token_type_ids {
            Some(ids) => ids,
            None => input_ids.zeros_like()?,
        };
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, attention_mask.as_ref())?;
        debug_assert_eq!(hidden.dims().last(), Some(&self.hidden_size));
        f32_tensor(&hidden)
    }
}

impl Engine for CandleBert {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, EngineError> {
        let hidden = self
            .forward(inputs)
            .map_err(|error| EngineError::Run(error.to_string()))?;
        Ok(vec![(LAST_HIDDEN_STATE.to_string(), hidden)])
    }
}

/// Reads a `config.json` and returns its text and its parsed JSON.
fn read_config(path: &Path) -> Result<(String, serde_json::Value), EngineError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        EngineError::Load(format!("failed to read {}: {error}", path.display()))
    })?;
    let value = serde_json::from_str(&text).map_err(|error| {
        EngineError::Load(format!("{} is not valid JSON: {error}", path.display()))
    })?;
    Ok((text, value))
}

/// Memory-maps a `model.safetensors` file as float32 weights on the CPU.
fn map_weights(weights_path: &Path) -> Result<VarBuilder<'static>, EngineError> {
    // SAFETY: the store owns the file and never rewrites it in place while a model is
    // loaded, which is what memory-mapping requires.
    unsafe { VarBuilder::from_mmaped_safetensors(&[weights_path], DType::F32, &Device::Cpu) }
        .map_err(|error| {
            EngineError::Load(format!(
                "failed to read {}: {error}",
                weights_path.display()
            ))
        })
}

/// Copies a float32 candle tensor into an engine tensor of the same shape.
fn f32_tensor(tensor: &CandleTensor) -> candle_core::Result<Tensor> {
    let shape = tensor.dims().to_vec();
    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
    Ok(Tensor {
        shape,
        data: TensorData::F32(values),
    })
}

/// Returns the spec of an int64 `[batch, tokens]` input.
fn token_input(name: &str) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        element_type: ElementType::I64,
        shape: vec![None, None],
    }
}

/// The token inputs of one forward pass, as candle tensors.
struct TokenInputs {
    input_ids: CandleTensor,
    attention_mask: Option<CandleTensor>,
    token_type_ids: Option<CandleTensor>,
}

impl TokenInputs {
    /// Converts named int64 tensors, rejecting unknown names and a missing `input_ids`.
    fn read(inputs: Vec<(String, Tensor)>) -> candle_core::Result<TokenInputs> {
        let mut input_ids = None;
        let mut attention_mask = None;
        let mut token_type_ids = None;
        for (name, tensor) in inputs {
            let TensorData::I64(values) = tensor.data else {
                candle_core::bail!("input `{name}` must be int64");
            };
            let value = CandleTensor::from_vec(values, tensor.shape.as_slice(), &Device::Cpu)?;
            match name.as_str() {
                INPUT_IDS => input_ids = Some(value),
                ATTENTION_MASK => attention_mask = Some(value),
                TOKEN_TYPE_IDS => token_type_ids = Some(value),
                other => candle_core::bail!("the model has no input `{other}`"),
            }
        }
        let Some(input_ids) = input_ids else {
            candle_core::bail!("missing input `{INPUT_IDS}`");
        };
        Ok(TokenInputs {
            input_ids,
            attention_mask,
            token_type_ids,
        })
    }
}
