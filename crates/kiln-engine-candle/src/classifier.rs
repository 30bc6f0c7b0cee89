//! Sequence-classification checkpoints (`DistilBertForSequenceClassification`,
//! `BertForSequenceClassification`) stored as Hugging Face safetensors folders.

use std::path::Path;

use candle_core::Module;
use candle_nn::{linear, Linear};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use kiln_engine::{ElementType, Engine, EngineError, Tensor, TensorSpec};
use serde_json::Value;

use crate::distilbert::{first_token, DistilBert, DistilBertConfig};
use crate::{
    f32_tensor, map_weights, read_config, token_input, TokenInputs, ATTENTION_MASK, INPUT_IDS,
    TOKEN_TYPE_IDS,
};

/// Name of the classifier's output, as in Hugging Face ONNX exports.
pub const LOGITS: &str = "logits";

/// The encoder and head of one architecture.
enum Network {
    /// DistilBERT: the `[CLS]` vector, then `pre_classifier`, ReLU and `classifier`.
    DistilBert {
        encoder: DistilBert,
        pre_classifier: Linear,
        classifier: Linear,
    },
    /// BERT: the `[CLS]` vector, then the pooler (dense and tanh) and `classifier`.
    Bert {
        encoder: BertModel,
        pooler: Linear,
        classifier: Linear,
    },
}

/// A sequence classifier with the signature of its Hugging Face ONNX export: inputs
/// `input_ids`, `attention_mask` (and `token_type_ids` for BERT), int64 `[batch, tokens]`;
/// output `logits`, float32 `[batch, labels]`. Dropout layers are skipped, as in eval mode.
pub struct CandleSequenceClassifier {
    network: Network,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl CandleSequenceClassifier {
    /// Loads `config.json` and `model.safetensors`. The architecture comes from the config's
    /// `model_type` (`distilbert` or `bert`), the number of labels from its `id2label`.
    pub fn load(
        config_path: &Path,
        weights_path: &Path,
    ) -> Result<CandleSequenceClassifier, EngineError> {
        let (text, config) = read_config(config_path)?;
        let invalid =
            |reason: String| EngineError::Load(format!("{}: {reason}", config_path.display()));
        let labels = config
            .get("id2label")
            .and_then(Value::as_object)
            .map(|labels| labels.len())
            .filter(|&count| count > 0)
            .ok_or_else(|| invalid("config.json has no id2label labels".to_string()))?;
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default();

        let weights = map_weights(weights_path)?;
        let wrong_weights = |error: candle_core::Error| {
            EngineError::Load(format!(
                "{} does not contain {model_type} sequence-classification weights: {error}",
                weights_path.display()
            ))
        };

        let (network, token_types) = match model_type {
            "distilbert" => {
                let config: DistilBertConfig = serde_json::from_str(&text)
                    .map_err(|error| invalid(format!("not a DistilBERT config: {error}")))?;
                let encoder =
                    DistilBert::load(weights.pp("distilbert"), &config).map_err(wrong_weights)?;
                let pre_classifier = linear(config.dim, config.dim, weights.pp("pre_classifier"))
                    .map_err(wrong_weights)?;
                let classifier =
                    linear(config.dim, labels, weights.pp("classifier")).map_err(wrong_weights)?;
                let network = Network::DistilBert {
                    encoder,
                    pre_classifier,
                    classifier,
                };
                (network, false)
            }
            "bert" => {
                let config: BertConfig = serde_json::from_str(&text)
                    .map_err(|error| invalid(format!("not a BERT config: {error}")))?;
                // BertModel finds the `bert.` prefix itself through the config's model_type.
                let encoder = BertModel::load(weights.clone(), &config).map_err(wrong_weights)?;
                let hidden = config.hidden_size;
                let pooler = linear(hidden, hidden, weights.pp("bert").pp("pooler").pp("dense"))
                    .map_err(wrong_weights)?;
                let classifier =
                    linear(hidden, labels, weights.pp("classifier")).map_err(wrong_weights)?;
                let network = Network::Bert {
                    encoder,
                    pooler,
                    classifier,
                };
                (network, true)
            }
            other => {
                return Err(invalid(format!(
                    "model_type {other:?} is not supported for text classification on \
                     safetensors; expected distilbert or bert, or import the model's ONNX export"
                )))
            }
        };

        let mut inputs = vec![token_input(INPUT_IDS), token_input(ATTENTION_MASK)];
        if token_types {
            inputs.push(token_input(TOKEN_TYPE_IDS));
        }
        Ok(CandleSequenceClassifier {
            network,
            inputs,
            outputs: vec![TensorSpec {
                name: LOGITS.to_string(),
                element_type: ElementType::F32,
                shape: vec![None, Some(labels)],
            }],
        })
    }

    fn forward(&self, inputs: Vec<(String, Tensor)>) -> candle_core::Result<Tensor> {
        let TokenInputs {
            input_ids,
            attention_mask,
            token_type_ids,
        } = TokenInputs::read(inputs)?;
        let attention_mask = match attention_mask {
            Some(mask) => mask,
            None => input_ids.ones_like()?,
        };
        let logits = match &self.network {
            Network::DistilBert {
                encoder,
                pre_classifier,
                classifier,
            } => {
                if token_type_ids.is_some() {
                    candle_core::bail!("DistilBERT has no input `{TOKEN_TYPE_IDS}`");
                }
                let hidden = encoder.forward(&input_ids, &attention_mask)?;
                let pooled = pre_classifier.forward(&first_token(&hidden)?)?.relu()?;
                classifier.forward(&pooled)?
            }
            Network::Bert {
                encoder,
                pooler,
                classifier,
            } => {
                let token_type_ids = match token_type_ids {
                    Some(ids) => ids,
                    None => input_ids.zeros_like()?,
                };
                let hidden = encoder.forward(&input_ids, &token_type_ids, Some(&attention_mask))?;
                let pooled = pooler.forward(&first_token(&hidden)?)?.tanh()?;
                classifier.forward(&pooled)?
            }
        };
        f32_tensor(&logits)
    }
}

impl Engine for CandleSequenceClassifier {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, EngineError> {
        let logits = self
            .forward(inputs)
            .map_err(|error| EngineError::Run(error.to_string()))?;
        Ok(vec![(LOGITS.to_string(), logits)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, config: Value) -> std::path::PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    #[test]
    fn config_without_labels_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), serde_json::json!({"model_type": "bert"}));
        let error = CandleSequenceClassifier::load(&config, &dir.path().join("model.safetensors"))
            .err()
            .expect("a load error");
        assert!(error.to_string().contains("id2label"), "{error}");
    }

    #[test]
    fn unsupported_model_type_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        let tensors: std::collections::HashMap<String, candle_core::Tensor> =
            std::collections::HashMap::new();
        candle_core::safetensors::save(&tensors, &weights).unwrap();
        let config = write_config(
            dir.path(),
            serde_json::json!({"model_type": "roberta", "id2label": {"0": "A", "1": "B"}}),
        );
        let error = CandleSequenceClassifier::load(&config, &weights)
            .err()
            .expect("a load error");
        assert!(error.to_string().contains("roberta"), "{error}");
    }
}
