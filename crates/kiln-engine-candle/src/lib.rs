//! BERT-family encoders stored as Hugging Face safetensors folders (`config.json` and
//! `model.safetensors`), run on the CPU with candle.
//!
//! [`CandleBert`] has the signature of a Hugging Face ONNX export of `BertModel`: inputs
//! `input_ids`, `attention_mask` and `token_type_ids` (int64, `[batch, tokens]`), output
//! `last_hidden_state` (float32, `[batch, tokens, hidden]`). So a task feeds it exactly as it
//! feeds the same model exported to ONNX.

use std::path::Path;

use candle_core::{DType, Device, Tensor as CandleTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use kiln_engine::{ElementType, Engine, EngineError, Tensor, TensorData, TensorSpec};

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
        let text = std::fs::read_to_string(config_path).map_err(|error| {
            EngineError::Load(format!("failed to read {}: {error}", config_path.display()))
        })?;
        let config: Config = serde_json::from_str(&text).map_err(|error| {
            EngineError::Load(format!(
                "{} is not a BERT config: {error}",
                config_path.display()
            ))
        })?;
        let hidden_size = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value.get("hidden_size")?.as_u64())
            .ok_or_else(|| {
                EngineError::Load(format!("{} has no hidden_size", config_path.display()))
            })? as usize;

        // SAFETY: the store owns the file and never rewrites it in place while a model is
        // loaded, which is what memory-mapping requires.
        let weights = unsafe {
            VarBuilder::from_mmaped_safetensors(&[weights_path], DType::F32, &Device::Cpu)
        }
        .map_err(|error| {
            EngineError::Load(format!(
                "failed to read {}: {error}",
                weights_path.display()
            ))
        })?;
        let model = BertModel::load(weights, &config).map_err(|error| {
            EngineError::Load(format!(
                "{} does not hold BERT weights: {error}",
                weights_path.display()
            ))
        })?;

        let token_input = |name: &str| TensorSpec {
            name: name.to_string(),
            element_type: ElementType::I64,
            shape: vec![None, None],
        };
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
        let token_type_ids = match token_type_ids {
            Some(ids) => ids,
            None => input_ids.zeros_like()?,
        };
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, attention_mask.as_ref())?;
        let shape = hidden.dims().to_vec();
        let values = hidden.flatten_all()?.to_vec1::<f32>()?;
        debug_assert_eq!(shape.last(), Some(&self.hidden_size));
        Ok(Tensor {
            shape,
            data: TensorData::F32(values),
        })
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
