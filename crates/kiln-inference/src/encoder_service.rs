//! Loading and running the models of every task except text generation: text embeddings,
//! text classification (zero-shot or trained checkpoints), image classification and custom
//! ONNX models. Each loaded model owns a batch worker thread (see [`crate::batching`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use kiln_models::{EngineKind, Manifest, ModelStore, Task};
use serde_json::Value;
use tokio::sync::RwLockReadGuard;

use crate::batching::BatchOptions;
use crate::classification::{self, ZeroShotClassifier, ZeroShotConfig};
use crate::custom::CustomModel;
use crate::embeddings::{self, EmbeddingsInput, TextEncoder};
use crate::engines::OnnxEngineOptions;
use crate::image_classification::{self, ImageClassifier};
use crate::loaded_models::{Lease, LoadReason, LoadedModels};
use crate::sequence_classification::SequenceClassifier;
use crate::service::Resident;
use crate::usage::EncoderCounts;
use crate::{ErrorKind, InferenceError};

#[derive(Clone)]
pub(crate) enum Loaded {
    Encoder(TextEncoder),
    ZeroShot(ZeroShotClassifier),
    Sequence(SequenceClassifier),
    Image(ImageClassifier),
    Custom(CustomModel),
}

/// A loaded model with the lease its caller holds, or the load's error.
type LoadResult = Result<(Loaded, Lease), InferenceError>;

/// The non-generation models of a node, loaded once on first use.
pub struct EncoderService {
    store: ModelStore,
    onnx: OnnxEngineOptions,
    batching: BatchOptions,
    /// The node's table of loaded models, shared with text generation.
    models: Arc<LoadedModels<Resident>>,
}

impl EncoderService {
    pub(crate) fn new(
        store: ModelStore,
        onnx: OnnxEngineOptions,
        batching: BatchOptions,
        models: Arc<LoadedModels<Resident>>,
    ) -> Self {
        Self {
            store,
            onnx,
            batching,
            models,
        }
    }

    /// Validates `input` for the model's task, loads the model if needed and runs it. Returns
    /// the result with the counts that usage accounting records, timed from after the load.
    /// `store_guard` is released once the model is loaded.
    pub(crate) async fn run(
        &self,
        manifest: &Manifest,
        input: Value,
        store_guard: RwLockReadGuard<'_, ()>,
    ) -> Result<(Value, EncoderCounts), InferenceError> {
        // Each `_lease` keeps the model marked in use until the run returns.
        let counts = |started: Instant, input_tokens: u64, images: u64| EncoderCounts {
            input_tokens,
            images,
            compute_seconds: started.elapsed().as_secs_f64(),
        };
        match manifest.task {
            Task::TextEmbeddings => {
                let input = EmbeddingsInput::parse(input)?;
                let (Loaded::Encoder(encoder), _lease) =
                    self.load(manifest, LoadReason::Request).await?
                else {
                    return Err(wrong_kind(manifest));
                };
                drop(store_guard);
                let started = Instant::now();
                let result = encoder.embed(&input.texts, input.pooling).await?;
                let output = embeddings::output(&result, encoder.dimensions, input.pooling);
                Ok((output, counts(started, result.tokens as u64, 0)))
            }
            Task::TextClassification => {
                let text = classification::parse_text(input)?;
                let (loaded, _lease) = self.load(manifest, LoadReason::Request).await?;
                drop(store_guard);
                let started = Instant::now();
                let result = match loaded {
                    Loaded::ZeroShot(classifier) => classifier.classify(text).await?,
                    Loaded::Sequence(classifier) => classifier.classify(text).await?,
                    _ => return Err(wrong_kind(manifest)),
                };
                // NOTE: text classification records no input tokens, because the classifiers do
                // not report how many tokens they encoded.
                Ok((result, counts(started, 0, 0)))
            }
            Task::ImageClassification => {
                let bytes = image_classification::parse_image(input)?;
                let (Loaded::Image(classifier), _lease) =
                    self.load(manifest, LoadReason::Request).await?
                else {
                    return Err(wrong_kind(manifest));
                };
                drop(store_guard);
                let started = Instant::now();
                let result = classifier.classify(bytes).await?;
                Ok((result, counts(started, 0, 1)))
            }
            Task::Custom => {
                let (Loaded::Custom(model), _lease) =
                    self.load(manifest, LoadReason::Request).await?
                else {
                    return Err(wrong_kind(manifest));
                };
                drop(store_guard);
                let started = Instant::now();
                let result = model.run(input).await?;
                Ok((result, counts(started, 0, 0)))
            }
            Task::TextGeneration => Err(InferenceError::internal(
                "text generation does not run on the encoder service",
            )),
        }
    }

    /// Loads a model ahead of its first request.
    pub async fn preload(&self, manifest: &Manifest) -> Result<(), InferenceError> {
        self.load(manifest, LoadReason::Preload).await.map(|_| ())
    }

    /// Loads a model once, as [`crate::InferenceService`] does for text generation, and
    /// returns it with a lease, so the memory budget does not unload it while the caller uses
    /// it.
    fn load<'a>(
        &'a self,
        manifest: &'a Manifest,
        reason: LoadReason,
    ) -> Pin<Box<dyn Future<Output = LoadResult> + Send + 'a>> {
        Box::pin(async move {
            let checkout =
                self.models
                    .checkout(&manifest.id, manifest.total_size(), Resident::is_alive)?;
            let model = checkout
                .slot
                .get_or_try_init(|| async {
                    let model = self.load_from_disk(manifest, reason).await?;
                    Ok::<_, InferenceError>(Resident::Encoder(model))
                })
                .await?;
            self.models.record_loaded(&manifest.id, &checkout.slot);
            match model {
                Resident::Encoder(loaded) => Ok((loaded.clone(), checkout.lease)),
                Resident::TextGeneration(_) => Err(wrong_kind(manifest)),
            }
        })
    }

    async fn load_from_disk(
        &self,
        manifest: &Manifest,
        reason: LoadReason,
    ) -> Result<Loaded, InferenceError> {
        let unavailable = |reason: String| {
            tracing::error!(model = %manifest.id, error = %reason, "model load failed");
            InferenceError::new(
                ErrorKind::ModelUnavailable,
                format!("model {} cannot be loaded: {reason}", manifest.id),
            )
        };
        tracing::info!(model = %manifest.id, task = %manifest.task, engine = %manifest.engine,
            reason = reason.as_str(), "loading model");
        let started = std::time::Instant::now();

        // A text classifier is zero-shot when its manifest has extra.zero_shot, and a trained
        // sequence-classification checkpoint otherwise.
        let zero_shot = match manifest.task {
            Task::TextClassification => ZeroShotConfig::from_extra(&manifest.extra),
            _ => None,
        };
        if let Some(config) = zero_shot {
            let config = config.map_err(unavailable)?;
            let encoder_manifest = self
                .store
                .get(&config.encoder)
                .map_err(InferenceError::internal)?
                .ok_or_else(|| {
                    unavailable(format!(
                        "its encoder {} is not installed; run scripts/install-models.sh",
                        config.encoder
                    ))
                })?;
            // NOTE: the classifier keeps its own copy of the encoder, so unloading the encoder
            // under the memory budget frees its memory only once the classifier is unloaded too.
            let (Loaded::Encoder(encoder), _lease) =
                self.load(&encoder_manifest, LoadReason::Dependency).await?
            else {
                return Err(unavailable(format!(
                    "its encoder {} is not a text-embeddings model",
                    config.encoder
                )));
            };
            let classifier = ZeroShotClassifier::new(config, encoder).await?;
            tracing::info!(model = %manifest.id, seconds = started.elapsed().as_secs_f64(),
                "model loaded");
            return Ok(Loaded::ZeroShot(classifier));
        }

        let store = self.store.clone();
        let owned = manifest.clone();
        let onnx = self.onnx.clone();
        let batching = self.batching.clone();
        let loaded = tokio::task::spawn_blocking(move || match owned.task {
            Task::TextEmbeddings => {
                TextEncoder::load(&store, &owned, &onnx, batching).map(Loaded::Encoder)
            }
            Task::TextClassification => {
                SequenceClassifier::load(&store, &owned, &onnx, batching).map(Loaded::Sequence)
            }
            Task::ImageClassification if owned.engine == EngineKind::Onnx => {
                ImageClassifier::load(&store, &owned, &onnx, batching).map(Loaded::Image)
            }
            Task::Custom if owned.engine == EngineKind::Onnx => {
                CustomModel::load(&store, &owned, &onnx, batching).map(Loaded::Custom)
            }
            task => Err(format!(
                "the {} engine cannot run {} models on this node",
                owned.engine,
                task.display_name()
            )),
        })
        .await
        .map_err(|error| unavailable(format!("the load task failed: {error}")))?
        .map_err(unavailable)?;
        tracing::info!(model = %manifest.id, seconds = started.elapsed().as_secs_f64(),
            "model loaded");
        Ok(loaded)
    }
}

fn wrong_kind(manifest: &Manifest) -> InferenceError {
    InferenceError::internal(format!(
        "model {} loaded as a different kind of model than its task {}",
        manifest.id, manifest.task
    ))
}
