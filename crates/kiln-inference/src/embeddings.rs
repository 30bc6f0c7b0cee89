//! The Text Embeddings task: the hosted API's input schema (`text`, `pooling`), BERT-family
//! encoders loaded from safetensors (candle) or ONNX (ONNX Runtime), pooling as the
//! model's sentence-transformers configuration says, and the `{shape, data, pooling}` output.

use std::path::Path;
use std::sync::Arc;

use kiln_engine::{ElementType, Engine, Tensor, TensorData};
use kiln_models::{EngineKind, Manifest, ModelStore};
use serde_json::{json, Value};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::batching::{BatchHandle, BatchOptions, BatchRunner};
use crate::engines::{self, OnnxEngineOptions};
use crate::fields::{self, type_name};
use crate::InferenceError;

/// Most strings one request may embed, as in the hosted schema.
pub const MAX_TEXTS: usize = 100;
/// Token limit of an encoder whose files name none.
const DEFAULT_MAX_TOKENS: usize = 512;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average of the token vectors, padding excluded.
    Mean,
    /// The vector of the first token (`[CLS]`).
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// A validated text-embeddings input.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsInput {
    pub texts: Vec<String>,
    pub pooling: Pooling,
}

impl EmbeddingsInput {
    pub fn parse(input: Value) -> Result<Self, InferenceError> {
        let fields = fields::object(input)?;
        if fields.contains_key("requests") {
            return Err(InferenceError::invalid_input(
                "`requests` (the asynchronous batch form) is not supported by this node; send \
                 `text` as a string or an array of strings instead",
            ));
        }
        let texts = match fields.get("text") {
            None | Some(Value::Null) => {
                return Err(InferenceError::invalid_input(
                    "missing `text`: send a string or an array of up to 100 strings",
                ))
            }
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) => parse_text_array(items)?,
            Some(other) => {
                return Err(InferenceError::invalid_input(format!(
                    "`text` must be a string or an array of strings, got {}",
                    type_name(other)
                )))
            }
        };
        if let Some(index) = texts.iter().position(String::is_empty) {
            let field = if texts.len() == 1 {
                "`text`".to_string()
            } else {
                format!("`text[{index}]`")
            };
            return Err(InferenceError::invalid_input(format!(
                "{field} must not be empty"
            )));
        }
        let pooling = match fields::optional_string(&fields, "pooling")? {
            None | Some("mean") => Pooling::Mean,
            Some("cls") => Pooling::Cls,
            Some(other) => {
                return Err(InferenceError::invalid_input(format!(
                    "`pooling` must be \"mean\" or \"cls\", got {other:?}"
                )))
            }
        };
        Ok(Self { texts, pooling })
    }
}

fn parse_text_array(items: &[Value]) -> Result<Vec<String>, InferenceError> {
    if items.is_empty() {
        return Err(InferenceError::invalid_input(
            "`text` must not be an empty array; send 1 to 100 strings",
        ));
    }
    if items.len() > MAX_TEXTS {
        return Err(InferenceError::invalid_input(format!(
            "`text` has {} strings, more than the maximum of {MAX_TEXTS}; split the request",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(text) => Ok(text.clone()),
            other => Err(InferenceError::invalid_input(format!(
                "`text[{index}]` must be a string, got {}",
                type_name(other)
            ))),
        })
        .collect()
}

/// The token ids and token type ids of one tokenized text, widened to int64 for the engines.
pub struct TokenIds {
    ids: Vec<i64>,
    type_ids: Vec<i64>,
}

impl TokenIds {
    pub(crate) fn from_encoding(encoding: &Encoding) -> TokenIds {
        TokenIds {
            ids: encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            type_ids: encoding
                .get_type_ids()
                .iter()
                .map(|&id| i64::from(id))
                .collect(),
        }
    }

    /// Tokens in the text, special tokens included.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Pads a batch of texts to its longest one and builds the engine inputs `input_ids` (padded
/// with `pad_id`), `attention_mask`, and `token_type_ids` when `takes_token_types` is set, each
/// int64 `[batch, width]`. Returns the inputs and `width`.
pub(crate) fn padded_token_inputs<'a>(
    texts: impl ExactSizeIterator<Item = &'a TokenIds> + Clone,
    pad_id: i64,
    takes_token_types: bool,
) -> (Vec<(String, Tensor)>, usize) {
    let batch = texts.len();
    let width = texts.clone().map(TokenIds::len).max().unwrap_or(0);
    let mut ids = vec![pad_id; batch * width];
    let mut mask = vec![0i64; batch * width];
    let mut type_ids = vec![0i64; batch * width];
    for (row, text) in texts.enumerate() {
        let start = row * width;
        ids[start..start + text.ids.len()].copy_from_slice(&text.ids);
        mask[start..start + text.ids.len()].fill(1);
        type_ids[start..start + text.type_ids.len()].copy_from_slice(&text.type_ids);
    }
    let shape = [batch, width];
    let mut inputs = vec![
        ("input_ids".to_string(), int64_tensor(&shape, ids)),
        ("attention_mask".to_string(), int64_tensor(&shape, mask)),
    ];
    if takes_token_types {
        inputs.push(("token_type_ids".to_string(), int64_tensor(&shape, type_ids)));
    }
    (inputs, width)
}

fn int64_tensor(shape: &[usize], values: Vec<i64>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data: TensorData::I64(values),
    }
}

/// One tokenized text on its way to the encoder thread.
pub struct EncodeItem {
    tokens: TokenIds,
    pooling: Pooling,
}

/// The encoder thread's side: pads a batch, runs the engine and pools.
struct EncoderRunner {
    engine: Box<dyn Engine>,
    /// Whether the engine declares a `token_type_ids` input.
    takes_token_types: bool,
    pad_id: i64,
    normalize: bool,
}

impl BatchRunner for EncoderRunner {
    type Item = EncodeItem;
    type Output = Vec<f32>;

    fn tokens(&self, item: &EncodeItem) -> usize {
        item.tokens.len()
    }

    fn run(&mut self, items: Vec<EncodeItem>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let batch = items.len();
        let (inputs, width) = padded_token_inputs(
            items.iter().map(|item| &item.tokens),
            self.pad_id,
            self.takes_token_types,
        );
        let outputs = self.engine.run(inputs).map_err(engines::run_error)?;
        let hidden = engines::output(&outputs, "last_hidden_state")?;
        let values = hidden.as_f32().map_err(engines::run_error)?;
        let [_, _, dim] = hidden.shape[..] else {
            return Err(InferenceError::internal(format!(
                "the encoder returned a tensor of shape {:?}, expected [batch, tokens, hidden]",
                hidden.shape
            )));
        };

        let mut vectors = Vec::with_capacity(batch);
        for (row, item) in items.iter().enumerate() {
            let token_vector = |token: usize| {
                let start = (row * width + token) * dim;
                &values[start..start + dim]
            };
            let mut vector = match item.pooling {
                Pooling::Cls => token_vector(0).to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; dim];
                    for token in 0..item.tokens.len() {
                        for (total, value) in sum.iter_mut().zip(token_vector(token)) {
                            *total += value;
                        }
                    }
                    let count = item.tokens.len().max(1) as f32;
                    sum.iter_mut().for_each(|value| *value /= count);
                    sum
                }
            };
            if self.normalize {
                normalize(&mut vector);
            }
            vectors.push(vector);
        }
        Ok(vectors)
    }
}

/// Scales a vector to unit length, as sentence-transformers' `Normalize` module does (it
/// divides by the norm clamped to at least 1e-12).
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|value| *value /= norm);
}

/// A loaded text encoder: its tokenizer and its batch worker.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Arc<Tokenizer>,
    worker: BatchHandle<EncoderRunner>,
    pub dimensions: usize,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_tokens: usize,
}

/// Vectors of one request, in input order.
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Whether each text was cut to the model's token limit.
    pub truncated: Vec<bool>,
    /// Tokens encoded over all texts, special tokens included, after truncation.
    pub tokens: usize,
}

impl TextEncoder {
    /// Loads an encoder from the store: `tokenizer.json`, plus `config.json` and
    /// `model.safetensors` (candle) or an ONNX graph (ONNX Runtime).
    pub fn load(
        store: &ModelStore,
        manifest: &Manifest,
        engine_options: &OnnxEngineOptions,
        batch_options: BatchOptions,
    ) -> Result<TextEncoder, String> {
        let path = |name: &str| {
            manifest
                .file(name)
                .map(|file| store.file_path(manifest, file))
        };
        let tokenizer_path = path("tokenizer.json")
            .ok_or_else(|| "the model has no tokenizer.json; re-import it with one".to_string())?;
        let max_tokens = max_tokens(path("sentence_bert_config.json"), path("config.json"));
        let normalize = path("modules.json").is_some_and(|modules| has_normalize(&modules));
        let (tokenizer, pad_id) = load_tokenizer(&tokenizer_path, max_tokens)?;

        let engine: Box<dyn Engine> = match manifest.engine {
            EngineKind::Safetensors => {
                let config = path("config.json").ok_or("the model has no config.json")?;
                let weights =
                    path("model.safetensors").ok_or("the model has no model.safetensors")?;
                Box::new(
                    kiln_engine_candle::CandleBert::load(&config, &weights)
                        .map_err(|error| error.to_string())?,
                )
            }
            EngineKind::Onnx => engines::load_onnx(store, manifest, engine_options)?,
            EngineKind::Llama => return Err("a GGUF model cannot serve text embeddings".into()),
        };
        let hidden = engine
            .outputs()
            .first()
            .ok_or("the encoder declares no outputs")?;
        if hidden.element_type != ElementType::F32 {
            return Err(format!(
                "the encoder's output `{}` is {}, expected float32",
                hidden.name, hidden.element_type
            ));
        }
        let dimensions = hidden.shape.last().copied().flatten().ok_or_else(|| {
            format!(
                "the encoder's output `{}` has shape {}, expected [batch, tokens, hidden]",
                hidden.name,
                hidden.shape_text()
            )
        })?;
        let takes_token_types = engine
            .inputs()
            .iter()
            .any(|input| input.name == "token_type_ids");
        let runner = EncoderRunner {
            engine,
            takes_token_types,
            pad_id,
            normalize,
        };
        let worker =
            BatchHandle::spawn(&manifest.id, runner, batch_options).map_err(|e| e.message)?;
        Ok(TextEncoder {
            tokenizer: Arc::new(tokenizer),
            worker,
            dimensions,
            max_tokens,
        })
    }

    /// Embeds `texts` through the batch worker.
    pub async fn embed(
        &self,
        texts: &[String],
        pooling: Pooling,
    ) -> Result<Embeddings, InferenceError> {
        let mut items = Vec::with_capacity(texts.len());
        let mut truncated = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let encoding = self
                .tokenizer
                .encode(text.as_str(), true)
                .map_err(|error| {
                    InferenceError::invalid_input(format!(
                        "`text[{index}]` could not be tokenized: {error}"
                    ))
                })?;
            truncated.push(!encoding.get_overflowing().is_empty());
            items.push(EncodeItem {
                tokens: TokenIds::from_encoding(&encoding),
                pooling,
            });
        }
        let tokens = items.iter().map(|item| item.tokens.len()).sum();
        let vectors = self.worker.submit(items).await?;
        Ok(Embeddings {
            vectors,
            truncated,
            tokens,
        })
    }
}

/// Loads `tokenizer.json` without its padding (batches are padded to their longest text) and
/// with truncation at `max_tokens`, and returns it with its pad token id (0 when it has none).
/// Bundled tokenizers often pad every text to a fixed 128 tokens, which would waste compute.
pub(crate) fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<(Tokenizer, i64), String> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|error| format!("failed to read {}: {error}", path.display()))?;
    let pad_id = tokenizer
        .get_padding()
        .map_or(0, |padding| i64::from(padding.pad_id));
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|error| format!("invalid truncation for {}: {error}", path.display()))?;
    Ok((tokenizer, pad_id))
}

/// The token limit: sentence-transformers' `max_seq_length`, else the model's
/// `max_position_embeddings`, else 512.
pub(crate) fn max_tokens(
    sentence_config: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
) -> usize {
    let read = |path: Option<std::path::PathBuf>, key: &str| {
        let text = std::fs::read_to_string(path?).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        value.get(key)?.as_u64().map(|limit| limit as usize)
    };
    read(sentence_config, "max_seq_length")
        .or_else(|| read(config, "max_position_embeddings"))
        .unwrap_or(DEFAULT_MAX_TOKENS)
}

/// Whether sentence-transformers' `modules.json` ends the pipeline with `Normalize`.
fn has_normalize(modules: &Path) -> bool {
    std::fs::read_to_string(modules)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|value| {
            value.as_array().map(|modules| {
                modules.iter().any(|module| {
                    module
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|kind| kind.ends_with("Normalize"))
                })
            })
        })
        .unwrap_or(false)
}

/// The hosted API's output: `{shape, data, pooling}`, plus which texts were truncated.
pub fn output(embeddings: &Embeddings, dimensions: usize, pooling: Pooling) -> Value {
    json!({
        "shape": [embeddings.vectors.len(), dimensions],
        "data": embeddings.vectors,
        "pooling": pooling.as_str(),
        "truncated": embeddings.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_accepts_string_and_array() {
        let single = EmbeddingsInput::parse(json!({"text": "a"})).unwrap();
        assert_eq!(single.texts, vec!["a"]);
        assert_eq!(single.pooling, Pooling::Mean);
        let many = EmbeddingsInput::parse(json!({"text": ["a", "b"], "pooling": "cls"})).unwrap();
        assert_eq!(many.texts.len(), 2);
        assert_eq!(many.pooling, Pooling::Cls);
    }

    #[test]
    fn invalid_inputs_name_the_field() {
        let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let cases = [
            (json!({}), "`text`"),
            (json!({"text": ""}), "`text`"),
            (json!({"text": []}), "`text`"),
            (json!({"text": too_many}), "maximum of 100"),
            (json!({"text": ["a", ""]}), "`text[1]`"),
            (json!({"text": ["a", 3]}), "`text[1]`"),
            (json!({"text": "a", "pooling": "max"}), "`pooling`"),
        ];
        for (input, expected) in cases {
            let error = EmbeddingsInput::parse(input.clone()).unwrap_err();
            assert_eq!(error.status(), 400, "{input}");
            assert!(
                error.message.contains(expected),
                "{input}: {}",
                error.message
            );
        }
    }

    #[test]
    fn normalize_gives_unit_length() {
        let mut vector = vec![3.0, 4.0];
        normalize(&mut vector);
        assert!((vector[0] - 0.6).abs() < 1e-6);
        assert!((vector[1] - 0.8).abs() < 1e-6);
    }
}
