//! The Text Classification task: input `text`, output `[{label, score}]` sorted by score.
//!
//! This module has the input schema and the zero-shot classifier. Trained checkpoints with a
//! classification head run in [`crate::sequence_classification`].
//!
//! The zero-shot classifier has no trained classification head. It embeds the
//! text with a sentence encoder and compares it, by cosine similarity, with the mean embedding
//! of each label's describing sentences; a softmax over the scaled similarities gives the
//! scores. Its manifest's `extra.zero_shot` holds the encoder id, the scale and the labels.

use serde::Deserialize;
use serde_json::Value;

use crate::embeddings::{normalize, Pooling, TextEncoder};
use crate::fields::{self, type_name};
use crate::image_classification::{softmax, top_labels};
use crate::InferenceError;

/// Reads `text`: a non-empty string.
pub fn parse_text(input: Value) -> Result<String, InferenceError> {
    let fields = fields::object(input)?;
    match fields.get("text") {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::String(_)) => Err(InferenceError::invalid_input("`text` must not be empty")),
        None | Some(Value::Null) => Err(InferenceError::invalid_input(
            "missing `text`: send the text to classify as a string",
        )),
        Some(other) => Err(InferenceError::invalid_input(format!(
            "`text` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// `extra.zero_shot` of a zero-shot classifier's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ZeroShotConfig {
    /// Id of the installed text-embeddings model that embeds texts and descriptions.
    pub encoder: String,
    /// Factor on the cosine similarities before the softmax; larger gives sharper scores.
    pub scale: f32,
    pub labels: Vec<ZeroShotLabel>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ZeroShotLabel {
    pub label: String,
    /// Sentences that describe texts of this label.
    pub descriptions: Vec<String>,
}

impl ZeroShotConfig {
    /// Reads the config from a manifest's `extra`, if it has one.
    pub fn from_extra(extra: &serde_json::Map<String, Value>) -> Option<Result<Self, String>> {
        let value = extra.get("zero_shot")?;
        Some(
            serde_json::from_value::<ZeroShotConfig>(value.clone())
                .map_err(|error| format!("invalid extra.zero_shot in the manifest: {error}"))
                .and_then(|config| {
                    if config.labels.len() < 2
                        || config
                            .labels
                            .iter()
                            .any(|label| label.descriptions.is_empty())
                    {
                        Err(
                            "extra.zero_shot needs at least two labels, each with at least one \
                             description"
                                .to_string(),
                        )
                    } else {
                        Ok(config)
                    }
                }),
        )
    }
}

/// A zero-shot classifier: an encoder and one unit vector per label.
#[derive(Clone)]
pub struct ZeroShotClassifier {
    encoder: TextEncoder,
    labels: Vec<String>,
    centroids: Vec<Vec<f32>>,
    scale: f32,
}

impl ZeroShotClassifier {
    /// Embeds every label's descriptions and keeps their normalised mean per label.
    pub async fn new(
        config: ZeroShotConfig,
        encoder: TextEncoder,
    ) -> Result<ZeroShotClassifier, InferenceError> {
        let mut labels = Vec::new();
        let mut centroids = Vec::new();
        for label in config.labels {
            let embeddings = encoder.embed(&label.descriptions, Pooling::Mean).await?;
            let mut centroid = vec![0f32; encoder.dimensions];
            for vector in &embeddings.vectors {
                let mut vector = vector.clone();
                normalize(&mut vector);
                for (total, value) in centroid.iter_mut().zip(vector) {
                    *total += value;
                }
            }
            normalize(&mut centroid);
            labels.push(label.label);
            centroids.push(centroid);
        }
        Ok(ZeroShotClassifier {
            encoder,
            labels,
            centroids,
            scale: config.scale,
        })
    }

    pub async fn classify(&self, text: String) -> Result<Value, InferenceError> {
        let mut embeddings = self.encoder.embed(&[text], Pooling::Mean).await?;
        let mut vector = embeddings
            .vectors
            .pop()
            .ok_or_else(|| InferenceError::internal("the encoder returned no vector"))?;
        normalize(&mut vector);
        let mut scores: Vec<f32> = self
            .centroids
            .iter()
            .map(|centroid| {
                let cosine: f32 = centroid.iter().zip(&vector).map(|(a, b)| a * b).sum();
                cosine * self.scale
            })
            .collect();
        softmax(&mut scores);
        Ok(top_labels(&self.labels, &scores, self.labels.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_must_be_a_non_empty_string() {
        assert_eq!(parse_text(json!({"text": "good"})).unwrap(), "good");
        for input in [json!({}), json!({"text": ""}), json!({"text": 3})] {
            let error = parse_text(input.clone()).unwrap_err();
            assert!(
                error.message.contains("`text`"),
                "{input}: {}",
                error.message
            );
        }
    }

    #[test]
    fn zero_shot_config_needs_two_labels() {
        let extra = json!({"zero_shot": {"encoder": "e", "scale": 10.0, "labels": [
            {"label": "A", "descriptions": ["a"]}
        ]}});
        let result = ZeroShotConfig::from_extra(extra.as_object().unwrap()).unwrap();
        assert!(result.unwrap_err().contains("two labels"));
    }
}
