//! The Image Classification task: the image as an array of byte values, a base64 string or a
//! raw request body; decoding and the model's preprocessing; the top 5 `{label, score}`.

use base64::Engine as _;
use kiln_engine::{Engine, Tensor, TensorData};
use kiln_models::{Manifest, ModelStore};
use serde_json::{json, Value};

use crate::batching::{BatchHandle, BatchOptions, BatchRunner};
use crate::engines::{self, OnnxEngineOptions};
use crate::fields::{self, type_name};
use crate::image_preprocess::{self, RgbImage};
use crate::InferenceError;

/// Labels returned per request, as in the hosted API.
const TOP_LABELS: usize = 5;

/// Reads `image`: an array of byte values (0 to 255) or a base64 string of the file.
pub fn parse_image(input: Value) -> Result<Vec<u8>, InferenceError> {
    let fields = fields::object(input)?;
    match fields.get("image") {
        None | Some(Value::Null) => Err(InferenceError::invalid_input(
            "missing `image`: send the image file as an array of byte values, as a base64 \
             string, or as the raw request body with an image/* content type",
        )),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_u64()
                    .filter(|byte| *byte <= 255)
                    .map(|byte| byte as u8)
                    .ok_or_else(|| {
                        InferenceError::invalid_input(format!(
                            "`image[{index}]` must be a byte value from 0 to 255, got {item}"
                        ))
                    })
            })
            .collect(),
        Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|error| {
                InferenceError::invalid_input(format!(
                    "`image` is a string but not valid base64: {error}"
                ))
            }),
        Some(other) => Err(InferenceError::invalid_input(format!(
            "`image` must be an array of byte values or a base64 string, got {}",
            type_name(other)
        ))),
    }
}

/// How a model wants its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preprocessing {
    /// Yahoo's open_nsfw pipeline; see [`image_preprocess::open_nsfw_input`].
    OpenNsfw,
}

struct ImageRunner {
    engine: Box<dyn Engine>,
    input_name: String,
    input_shape: [usize; 3],
}

impl BatchRunner for ImageRunner {
    type Item = Vec<f32>;
    type Output = Vec<f32>;

    fn tokens(&self, _item: &Vec<f32>) -> usize {
        1
    }

    fn run(&mut self, items: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let batch = items.len();
        let [height, width, channels] = self.input_shape;
        let tensor = Tensor {
            shape: vec![batch, height, width, channels],
            data: TensorData::F32(items.concat()),
        };
        let outputs = self
            .engine
            .run(vec![(self.input_name.clone(), tensor)])
            .map_err(engines::run_error)?;
        let scores = outputs
            .first()
            .map(|(_, tensor)| tensor)
            .ok_or_else(|| InferenceError::internal("the model returned no outputs"))?;
        let values = scores.as_f32().map_err(engines::run_error)?;
        let classes = values.len() / batch.max(1);
        Ok(values.chunks(classes.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// A loaded image classifier: its labels, preprocessing and batch worker.
#[derive(Clone)]
pub struct ImageClassifier {
    labels: Vec<String>,
    preprocessing: Preprocessing,
    /// Whether the model outputs logits that still need a softmax.
    softmax: bool,
    worker: BatchHandle<ImageRunner>,
}

impl ImageClassifier {
    /// Loads an ONNX image classifier. The manifest's `extra` names the labels (`labels`, in
    /// output order), the preprocessing (`preprocessing`: `open-nsfw`) and whether the output
    /// is logits (`softmax`: true, the default) or already probabilities.
    pub fn load(
        store: &ModelStore,
        manifest: &Manifest,
        engine_options: &OnnxEngineOptions,
        batch_options: BatchOptions,
    ) -> Result<ImageClassifier, String> {
        let labels: Vec<String> = manifest
            .extra
            .get("labels")
            .and_then(Value::as_array)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|label| label.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or("the manifest's extra.labels (an array of class names) is missing")?;
        let preprocessing = match manifest.extra.get("preprocessing").and_then(Value::as_str) {
            Some("open-nsfw") => Preprocessing::OpenNsfw,
            // NOTE: Hugging Face image classifiers (preprocessor_config.json: resize, crop,
            // rescale, normalise, NCHW) are not wired up yet; only open_nsfw's pipeline is.
            other => {
                return Err(format!(
                    "unsupported extra.preprocessing {other:?} in the manifest; this node \
                     supports \"open-nsfw\""
                ))
            }
        };
        let softmax = manifest
            .extra
            .get("softmax")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let engine = engines::load_onnx(store, manifest, engine_options)?;
        let input = engine
            .inputs()
            .first()
            .ok_or("the model declares no inputs")?;
        let input_shape = match input.shape[..] {
            [_, Some(height), Some(width), Some(channels)] => [height, width, channels],
            _ => {
                return Err(format!(
                    "the model's input `{}` has shape {}, expected [batch, height, width, \
                     channels]",
                    input.name,
                    input.shape_text()
                ))
            }
        };
        let runner = ImageRunner {
            input_name: input.name.clone(),
            input_shape,
            engine,
        };
        let worker =
            BatchHandle::spawn(&manifest.id, runner, batch_options).map_err(|e| e.message)?;
        Ok(ImageClassifier {
            labels,
            preprocessing,
            softmax,
            worker,
        })
    }

    /// Decodes and preprocesses `bytes` on a blocking thread, runs the model and returns the
    /// top 5 `{label, score}` by score.
    pub async fn classify(&self, bytes: Vec<u8>) -> Result<Value, InferenceError> {
        let preprocessing = self.preprocessing;
        let pixels = tokio::task::spawn_blocking(move || {
            let image: RgbImage =
                image_preprocess::decode(&bytes).map_err(InferenceError::invalid_input)?;
            match preprocessing {
                Preprocessing::OpenNsfw => {
                    image_preprocess::open_nsfw_input(&image).map_err(InferenceError::internal)
                }
            }
        })
        .await
        .map_err(|error| {
            InferenceError::internal(format!("image preprocessing failed: {error}"))
        })??;

        let mut scores = self
            .worker
            .submit(vec![pixels])
            .await?
            .pop()
            .ok_or_else(|| InferenceError::internal("the model returned no scores"))?;
        if self.softmax {
            softmax(&mut scores);
        }
        if scores.len() != self.labels.len() {
            return Err(InferenceError::internal(format!(
                "the model returned {} scores but its manifest names {} labels",
                scores.len(),
                self.labels.len()
            )));
        }
        Ok(top_labels(&self.labels, &scores, TOP_LABELS))
    }
}

/// Replaces logits with their softmax probabilities.
pub fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for value in values.iter_mut() {
        *value = (*value - max).exp();
        total += *value;
    }
    values.iter_mut().for_each(|value| *value /= total);
}

/// Returns `[{label, score}]` sorted by descending score, at most `count` entries.
pub fn top_labels(labels: &[String], scores: &[f32], count: usize) -> Value {
    let mut ranked: Vec<(&String, f32)> = labels.iter().zip(scores.iter().copied()).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(count);
    Value::Array(
        ranked
            .into_iter()
            .map(|(label, score)| json!({"label": label, "score": score}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_accepts_bytes_and_base64() {
        assert_eq!(
            parse_image(json!({"image": [1, 2, 255]})).unwrap(),
            vec![1, 2, 255]
        );
        assert_eq!(
            parse_image(json!({"image": "AQL/"})).unwrap(),
            vec![1, 2, 255]
        );
    }

    #[test]
    fn image_errors_name_the_field() {
        let cases = [
            (json!({}), "`image`"),
            (json!({"image": [1, 256]}), "`image[1]`"),
            (json!({"image": [1, -1]}), "`image[1]`"),
            (json!({"image": "***"}), "base64"),
            (json!({"image": 5}), "`image`"),
        ];
        for (input, expected) in cases {
            let error = parse_image(input.clone()).unwrap_err();
            assert_eq!(error.status(), 400);
            assert!(
                error.message.contains(expected),
                "{input}: {}",
                error.message
            );
        }
    }

    #[test]
    fn top_labels_sorts_and_cuts() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let top = top_labels(&labels, &[0.1, 0.7, 0.2], 2);
        assert_eq!(top[0]["label"], "b");
        assert_eq!(top[1]["label"], "c");
        assert_eq!(top.as_array().unwrap().len(), 2);
    }
}
