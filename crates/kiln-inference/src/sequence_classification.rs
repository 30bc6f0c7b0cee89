//! Text classification with trained sequence-classification checkpoints (DistilBERT, BERT and
//! other models whose ONNX export takes token ids and returns `logits`).
//!
//! The model folder has `config.json` with `id2label`, `tokenizer.json`, and either
//! `model.safetensors` (candle) or an ONNX graph (ONNX Runtime). The output is the softmax of
//! the logits, one `{label, score}` per label, sorted by descending score.

use std::path::Path;
use std::sync::Arc;

use kiln_engine::{ElementType, Engine};
use kiln_models::{EngineKind, Manifest, ModelStore};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::batching::{BatchHandle, BatchOptions, BatchRunner};
use crate::embeddings::{load_tokenizer, max_tokens, padded_token_inputs, TokenIds};
use crate::engines::{self, OnnxEngineOptions};
use crate::image_classification::{softmax, top_labels};
use crate::InferenceError;

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const TOKEN_TYPE_IDS: &str = "token_type_ids";
const LOGITS: &str = "logits";

/// The classifier thread's side: pads a batch, runs the engine and turns logits into scores.
struct ClassifierRunner {
    engine: Box<dyn Engine>,
    /// Whether the engine declares a `token_type_ids` input (BERT does, DistilBERT does not).
    takes_token_types: bool,
    pad_id: i64,
    labels: usize,
}

impl BatchRunner for ClassifierRunner {
    type Item = TokenIds;
    /// Softmax scores in label-id order.
    type Output = Vec<f32>;

    fn tokens(&self, item: &TokenIds) -> usize {
        item.len()
    }

    // NOTE: int8 graphs from onnxruntime's quantize_dynamic pick one activation scale per
    // tensor, over the whole batch and its padding. So their scores can shift slightly with
    // the other texts that share a batch.
    fn run(&mut self, items: Vec<TokenIds>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let batch = items.len();
        let (inputs, _) = padded_token_inputs(items.iter(), self.pad_id, self.takes_token_types);
        let outputs = self.engine.run(inputs).map_err(engines::run_error)?;
        let logits = engines::output(&outputs, LOGITS)?;
        if logits.shape != [batch, self.labels] {
            return Err(InferenceError::internal(format!(
                "the classifier returned logits of shape {:?}, expected [{batch}, {}]",
                logits.shape, self.labels
            )));
        }
        let values = logits.as_f32().map_err(engines::run_error)?;
        Ok(values
            .chunks(self.labels)
            .map(|row| {
                let mut scores = row.to_vec();
                softmax(&mut scores);
                scores
            })
            .collect())
    }
}

/// A loaded sequence classifier: its tokenizer, labels and batch worker.
#[derive(Clone)]
pub struct SequenceClassifier {
    tokenizer: Arc<Tokenizer>,
    /// Label names by label id, from `id2label`.
    labels: Arc<[String]>,
    worker: BatchHandle<ClassifierRunner>,
}

impl SequenceClassifier {
    /// Loads a classifier from the store: `config.json`, `tokenizer.json`, and
    /// `model.safetensors` (candle) or the manifest's ONNX graph (ONNX Runtime).
    pub fn load(
        store: &ModelStore,
        manifest: &Manifest,
        engine_options: &OnnxEngineOptions,
        batch_options: BatchOptions,
    ) -> Result<SequenceClassifier, String> {
        let path = |name: &str| {
            manifest
                .file(name)
                .map(|file| store.file_path(manifest, file))
        };
        let config_path = path("config.json").ok_or(
            "the model has no config.json, which must name the labels in id2label; re-import \
             the folder with it",
        )?;
        let tokenizer_path = path("tokenizer.json")
            .ok_or("the model has no tokenizer.json; re-import the folder with it")?;
        let labels = read_labels(&config_path)?;
        let (tokenizer, pad_id) =
            load_tokenizer(&tokenizer_path, max_tokens(None, Some(config_path.clone())))?;

        let engine: Box<dyn Engine> = match manifest.engine {
            EngineKind::Safetensors => {
                let weights =
                    path("model.safetensors").ok_or("the model has no model.safetensors")?;
                Box::new(
                    kiln_engine_candle::CandleSequenceClassifier::load(&config_path, &weights)
                        .map_err(|error| error.to_string())?,
                )
            }
            EngineKind::Onnx => engines::load_onnx(store, manifest, engine_options)?,
            EngineKind::Llama => return Err("a GGUF model cannot classify text".into()),
        };
        let takes_token_types = check_signature(engine.as_ref(), labels.len())?;
        let runner = ClassifierRunner {
            engine,
            takes_token_types,
            pad_id,
            labels: labels.len(),
        };
        let worker =
            BatchHandle::spawn(&manifest.id, runner, batch_options).map_err(|e| e.message)?;
        Ok(SequenceClassifier {
            tokenizer: Arc::new(tokenizer),
            labels: labels.into(),
            worker,
        })
    }

    /// Classifies one text through the batch worker and returns `[{label, score}]`, every
    /// label sorted by descending score. Texts longer than the model's positions are truncated.
    pub async fn classify(&self, text: String) -> Result<Value, InferenceError> {
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|error| {
                InferenceError::invalid_input(format!("`text` could not be tokenized: {error}"))
            })?;
        let scores = self
            .worker
            .submit(vec![TokenIds::from_encoding(&encoding)])
            .await?
            .pop()
            .ok_or_else(|| InferenceError::internal("the classifier returned no scores"))?;
        Ok(top_labels(&self.labels, &scores, self.labels.len()))
    }
}

/// Reads the label names from `config.json`'s `id2label`, whose keys must be the ids
/// 0 to n-1 (as decimal strings, the way transformers writes them).
fn read_labels(config_path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|error| format!("failed to read {}: {error}", config_path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|error| format!("{} is not valid JSON: {error}", config_path.display()))?;
    labels_from_config(&config).map_err(|reason| format!("{}: {reason}", config_path.display()))
}

fn labels_from_config(config: &Value) -> Result<Vec<String>, String> {
    let id2label = config
        .get("id2label")
        .and_then(Value::as_object)
        .filter(|labels| !labels.is_empty())
        .ok_or("config.json has no id2label, so the class labels are unknown")?;
    let mut labels = vec![None; id2label.len()];
    for (key, label) in id2label {
        let index = key
            .parse::<usize>()
            .ok()
            .filter(|&index| index < labels.len())
            .ok_or_else(|| {
                format!(
                    "id2label key {key:?} is not a label id from 0 to {}",
                    labels.len() - 1
                )
            })?;
        let label = label
            .as_str()
            .ok_or_else(|| format!("id2label[{key:?}] is not a string"))?;
        labels[index] = Some(label.to_string());
    }
    // Keys are distinct and in range, so every slot is filled unless one id appears twice
    // in different spellings, such as "1" and "01".
    labels
        .into_iter()
        .enumerate()
        .map(|(index, label)| label.ok_or_else(|| format!("id2label has no label id {index}")))
        .collect()
}

/// Checks that the engine takes only token inputs and returns float32 logits with one value
/// per label. Returns whether it takes `token_type_ids`.
fn check_signature(engine: &dyn Engine, labels: usize) -> Result<bool, String> {
    let mut takes_token_types = false;
    for input in engine.inputs() {
        match input.name.as_str() {
            INPUT_IDS | ATTENTION_MASK => {}
            TOKEN_TYPE_IDS => takes_token_types = true,
            other => {
                return Err(format!(
                    "the model has an input `{other}`, but a text classifier can feed only \
                     input_ids, attention_mask and token_type_ids"
                ))
            }
        }
        if input.element_type != ElementType::I64 {
            return Err(format!(
                "the model's input `{}` is {}, expected int64",
                input.name, input.element_type
            ));
        }
    }
    if !engine.inputs().iter().any(|input| input.name == INPUT_IDS) {
        return Err("the model has no `input_ids` input".to_string());
    }
    let output = engine
        .outputs()
        .iter()
        .find(|output| output.name == LOGITS)
        .or_else(|| engine.outputs().first())
        .ok_or("the model declares no outputs")?;
    if output.element_type != ElementType::F32 {
        return Err(format!(
            "the model's output `{}` is {}, expected float32 logits",
            output.name, output.element_type
        ));
    }
    match output.shape.as_slice() {
        [_, Some(size)] if *size != labels => Err(format!(
            "the model's output `{}` has {size} logits per text, but id2label names {labels} \
             labels",
            output.name
        )),
        [_, _] => Ok(takes_token_types),
        _ => Err(format!(
            "the model's output `{}` has shape {}, expected [batch, labels]",
            output.name,
            output.shape_text()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::{EngineError, Tensor, TensorSpec};
    use serde_json::json;

    #[test]
    fn labels_follow_ids() {
        let config = json!({"id2label": {"1": "POSITIVE", "0": "NEGATIVE"}});
        assert_eq!(
            labels_from_config(&config).unwrap(),
            vec!["NEGATIVE", "POSITIVE"]
        );
    }

    #[test]
    fn labels_reject_bad_id2label() {
        let cases = [
            (json!({}), "no id2label"),
            (json!({"id2label": {}}), "no id2label"),
            (json!({"id2label": {"0": "A", "2": "B"}}), "\"2\""),
            (json!({"id2label": {"0": "A", "x": "B"}}), "\"x\""),
            (json!({"id2label": {"0": "A", "1": 3}}), "not a string"),
            (json!({"id2label": {"0": "A", "00": "B"}}), "label id 1"),
        ];
        for (config, expected) in cases {
            let error = labels_from_config(&config).unwrap_err();
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    struct FakeSignature {
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    }

    impl Engine for FakeSignature {
        fn inputs(&self) -> &[TensorSpec] {
            &self.inputs
        }
        fn outputs(&self) -> &[TensorSpec] {
            &self.outputs
        }
        fn run(&mut self, _: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, EngineError> {
            Err(EngineError::Run("signature only".into()))
        }
    }

    fn spec(name: &str, element_type: ElementType, shape: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            element_type,
            shape,
        }
    }

    fn engine(inputs: &[&str], logits: Vec<Option<usize>>) -> FakeSignature {
        FakeSignature {
            inputs: inputs
                .iter()
                .map(|name| spec(name, ElementType::I64, vec![None, None]))
                .collect(),
            outputs: vec![spec(LOGITS, ElementType::F32, logits)],
        }
    }

    #[test]
    fn signature_detects_token_types() {
        let bert = engine(
            &[INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS],
            vec![None, Some(3)],
        );
        assert_eq!(check_signature(&bert, 3), Ok(true));
        let distilbert = engine(&[INPUT_IDS, ATTENTION_MASK], vec![None, Some(3)]);
        assert_eq!(check_signature(&distilbert, 3), Ok(false));
    }

    #[test]
    fn signature_rejects_mismatches() {
        let cases = [
            (
                engine(&[INPUT_IDS, "pixel_values"], vec![None, Some(3)]),
                "pixel_values",
            ),
            (
                engine(&[ATTENTION_MASK], vec![None, Some(3)]),
                "no `input_ids`",
            ),
            (
                engine(&[INPUT_IDS], vec![None, Some(2)]),
                "id2label names 3",
            ),
            (
                engine(&[INPUT_IDS], vec![None, None, Some(3)]),
                "[batch, labels]",
            ),
        ];
        for (engine, expected) in cases {
            let error = check_signature(&engine, 3).unwrap_err();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
