//! Model resolution, lazy loading and dispatch by task.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine_llama::{EngineOptions, LlamaModelHandle};
use kiln_models::{EngineKind, ImportOptions, Manifest, ModelStore, StoreError, Task};
use serde_json::Value;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::batching::BatchOptions;
use crate::encoder_service::{self, EncoderService};
use crate::engines::OnnxEngineOptions;
use crate::loaded_models::{Lease, LoadReason, LoadedModel, LoadedModels, UnloadReason};
use crate::text_generation::{self, TextGenerationInput, TextStream};
use crate::usage::{UsageContext, UsageRecord, UsageSink};
use crate::{catalog, request_log, ErrorKind, InferenceError};

/// Settings of the service, taken from the node configuration.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Alias → installed model id; wins over manifests' aliases and the hosted table.
    pub aliases: BTreeMap<String, String>,
    /// Task id (`text-generation`) → installed model id that hosted ids of that task run on.
    pub default_models: BTreeMap<String, String>,
    pub llama: EngineOptions,
    /// Cap on a request's `max_tokens`.
    pub max_generated_tokens: u32,
    /// ONNX Runtime settings, for ONNX models of every task.
    pub onnx: OnnxEngineOptions,
    /// Batch and queue limits of every embeddings, classification and custom model.
    pub batching: BatchOptions,
    /// Total size in bytes of the files of the models kept loaded at once; `None`: no limit.
    pub memory_budget: Option<u64>,
}

/// The result of one model run.
pub struct RunOutput {
    /// The installed model that ran, after alias resolution.
    pub model: String,
    pub output: Output,
    /// The run's usage, already sent to the usage sink. `None` for a streamed generation,
    /// whose usage is known only when the stream ends.
    pub usage: Option<UsageRecord>,
}

pub enum Output {
    /// A JSON result, sent with content type `application/json`.
    Json(Value),
    /// A text generation streamed as server-sent events.
    TextStream(TextStream),
}

/// A loaded model of any task, as the shared table of loaded models keeps it.
#[derive(Clone)]
pub(crate) enum Resident {
    TextGeneration(LlamaModelHandle),
    Encoder(encoder_service::Loaded),
}

impl Resident {
    /// Returns whether the model's worker thread still runs.
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Resident::TextGeneration(handle) => handle.is_alive(),
            Resident::Encoder(_) => true,
        }
    }
}

/// Runs models by id. Cheap to share behind an `Arc`.
pub struct InferenceService {
    store: ModelStore,
    options: ServiceOptions,
    /// Loaded models of every task, with the memory budget. The `kiln_model_memory_bytes`
    /// gauge of a model is the size of its files while it is loaded, an estimate of what its
    /// weights take in memory, and 0 after it is unloaded.
    models: Arc<LoadedModels<Resident>>,
    /// Orders requests against uploads and removals: a request holds it for reading from
    /// before it resolves a model id until the model is loaded, and a swap or removal of a
    /// model's files holds it for writing. A request thus never loads a manifest's files after
    /// they were replaced or deleted.
    /// NOTE: a swap waits for every load in progress, of any model, and requests that arrive
    /// meanwhile wait behind the swap.
    store_lock: Arc<RwLock<()>>,
    /// Models of every task except text generation.
    encoders: EncoderService,
    /// Receiver of a usage record per run, when the node keeps usage accounting.
    usage_sink: Option<Arc<dyn UsageSink>>,
}

impl InferenceService {
    pub fn new(store: ModelStore, options: ServiceOptions) -> Self {
        let models = Arc::new(LoadedModels::new(options.memory_budget));
        let encoders = EncoderService::new(
            store.clone(),
            options.onnx.clone(),
            options.batching.clone(),
            Arc::clone(&models),
        );
        Self {
            store,
            options,
            models,
            store_lock: Arc::new(RwLock::new(())),
            encoders,
            usage_sink: None,
        }
    }

    /// Sends a [`UsageRecord`] of every following run to `sink`.
    pub fn with_usage_sink(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.usage_sink = Some(sink);
        self
    }

    fn usage_context(&self, worker: Option<&str>) -> UsageContext {
        UsageContext {
            sink: self.usage_sink.clone(),
            worker: worker.map(str::to_owned),
        }
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Finds the installed model for an id: an installed id, then a configured alias, then a
    /// manifest's alias, then a hosted catalog id mapped to an installed model of its task.
    pub fn resolve(&self, model: &str) -> Result<Manifest, InferenceError> {
        let store_error = |err: kiln_models::StoreError| InferenceError::internal(err);
        if let Some(manifest) = self.store.get(model).map_err(store_error)? {
            return Ok(manifest);
        }
        if let Some(target) = self.options.aliases.get(model) {
            return self.store.get(target).map_err(store_error)?.ok_or_else(|| {
                InferenceError::new(
                    ErrorKind::NoSuchModel,
                    format!(
                        "No such model {model} or task: the alias points to {target}, which \
                             is not installed. Install it or fix the [aliases] table of kiln.toml"
                    ),
                )
            });
        }
        let installed = self.store.list().map_err(store_error)?;
        if let Some(manifest) = installed
            .iter()
            .find(|manifest| manifest.aliases.iter().any(|alias| alias == model))
        {
            return Ok(manifest.clone());
        }
        if let Some(task) = catalog::hosted_task(model) {
            let task_key = serde_json::to_value(task)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default();
            let chosen = match self.options.default_models.get(&task_key) {
                Some(id) => installed.into_iter().find(|manifest| &manifest.id == id),
                None => installed.into_iter().find(|manifest| manifest.task == task),
            };
            if let Some(manifest) = chosen {
                return Ok(manifest);
            }
        }
        Err(InferenceError::no_such_model(model))
    }

    /// Validates `input` for the model's task, loads the model if needed and runs it.
    pub async fn run(&self, model: &str, input: Value) -> Result<RunOutput, InferenceError> {
        self.run_for_worker(None, model, input).await
    }

    /// Runs a model like [`InferenceService::run`], attributing its usage to `worker` (the
    /// worker whose `env.AI.run` call made the request), or to no worker when `None`.
    pub async fn run_for_worker(
        &self,
        worker: Option<&str>,
        model: &str,
        input: Value,
    ) -> Result<RunOutput, InferenceError> {
        let model_requested = model;
        let store_guard = self.store_lock.read().await;
        let manifest = self.resolve(model)?;
        let started = std::time::Instant::now();
        let result = self
            .run_resolved(&manifest, input, self.usage_context(worker), store_guard)
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.name(),
        };
        let model = manifest.id.clone();
        metrics::counter!("kiln_inference_requests_total", "model" => model.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("kiln_inference_duration_seconds", "model" => model.clone())
            .record(elapsed);
        let usage = result.as_ref().ok().and_then(|(_, usage)| usage.as_ref());
        request_log::record(request_log::ModelRun {
            requested: model_requested.to_owned(),
            model,
            outcome: outcome.to_owned(),
            ms: elapsed * 1000.0,
            input_tokens: usage.map(|usage| usage.input_tokens),
            output_tokens: usage.map(|usage| usage.output_tokens),
            cache: None,
        });
        result.map(|(output, usage)| RunOutput {
            model: manifest.id,
            output,
            usage,
        })
    }

    /// Runs a resolved model: the part of [`InferenceService::run`] that the metrics time.
    /// Sends the usage of a run that succeeded to the sink, and returns it unless the output
    /// is a stream (which records its own usage when it ends). `store_guard` is released once
    /// the model is loaded.
    async fn run_resolved(
        &self,
        manifest: &Manifest,
        input: Value,
        usage: UsageContext,
        store_guard: RwLockReadGuard<'_, ()>,
    ) -> Result<(Output, Option<UsageRecord>), InferenceError> {
        match manifest.task {
            Task::TextGeneration => {
                let input = TextGenerationInput::parse(input, self.options.max_generated_tokens)?;
                let mut stream = self.start_generation(manifest, &input, store_guard).await?;
                stream.attach_usage(usage.clone());
                let submitted = stream.submitted_at();
                if input.stream {
                    return Ok((Output::TextStream(stream), None));
                }
                let completion = text_generation::collect(stream).await?;
                let json_mode = input.response_format.is_some();
                let output = Output::Json(text_generation::native_result(&completion, json_mode)?);
                // The stream sent its record to the sink when it finished; this copy is for the
                // caller.
                let record = UsageRecord {
                    model: manifest.id.clone(),
                    worker: usage.worker,
                    input_tokens: u64::from(completion.usage.prompt_tokens),
                    output_tokens: u64::from(completion.usage.completion_tokens),
                    images: 0,
                    compute_seconds: submitted.elapsed().as_secs_f64(),
                };
                Ok((output, Some(record)))
            }
            Task::TextEmbeddings
            | Task::TextClassification
            | Task::ImageClassification
            | Task::Custom => {
                let (result, counts) = self.encoders.run(manifest, input, store_guard).await?;
                let record = UsageRecord {
                    model: manifest.id.clone(),
                    worker: usage.worker.clone(),
                    input_tokens: counts.input_tokens,
                    output_tokens: 0,
                    images: counts.images,
                    compute_seconds: counts.compute_seconds,
                };
                usage.record(record.clone());
                Ok((Output::Json(result), Some(record)))
            }
        }
    }

    /// Starts a text generation from an input that the caller built and validated (the
    /// OpenAI-compatible endpoints do). Returns the id of the model that runs it.
    pub async fn generate(
        &self,
        model: &str,
        input: &TextGenerationInput,
    ) -> Result<(String, TextStream), InferenceError> {
        let store_guard = self.store_lock.read().await;
        let manifest = self.resolve(model)?;
        if manifest.task != Task::TextGeneration {
            return Err(InferenceError::invalid_input(format!(
                "model {} is a {} model, not a text-generation model",
                manifest.id,
                manifest.task.display_name()
            )));
        }
        if input.max_tokens > self.options.max_generated_tokens {
            return Err(InferenceError::invalid_input(format!(
                "`max_tokens` must be at most {}, got {}",
                self.options.max_generated_tokens, input.max_tokens
            )));
        }
        let mut stream = self.start_generation(&manifest, input, store_guard).await?;
        stream.attach_usage(self.usage_context(None));
        Ok((manifest.id, stream))
    }

    async fn start_generation(
        &self,
        manifest: &Manifest,
        input: &TextGenerationInput,
        store_guard: RwLockReadGuard<'_, ()>,
    ) -> Result<TextStream, InferenceError> {
        let (handle, lease) = self.load(manifest, LoadReason::Request).await?;
        drop(store_guard);
        let mut stream = text_generation::start(&manifest.id, &handle, input).await?;
        stream.hold_lease(lease);
        Ok(stream)
    }

    /// Returns the node's cap on `max_tokens`.
    pub fn max_generated_tokens(&self) -> u32 {
        self.options.max_generated_tokens
    }

    /// Loads a model into memory ahead of its first request.
    pub async fn preload(&self, model: &str) -> Result<(), InferenceError> {
        let _store_guard = self.store_lock.read().await;
        let manifest = self.resolve(model)?;
        if manifest.task != Task::TextGeneration {
            return self.encoders.preload(&manifest).await;
        }
        self.load(&manifest, LoadReason::Preload).await.map(|_| ())
    }

    /// The context window of a loaded model, for the catalog; `None` until the model is loaded.
    pub fn loaded_context_tokens(&self, id: &str) -> Option<u32> {
        match self.models.peek(id)? {
            Resident::TextGeneration(handle) => Some(handle.info().context_tokens),
            Resident::Encoder(_) => None,
        }
    }

    /// Returns the memory budget in bytes, `None` when the node has none.
    pub fn memory_budget(&self) -> Option<u64> {
        self.options.memory_budget
    }

    /// Lists the models loaded now, with their sizes and whether requests use them.
    pub fn loaded_models(&self) -> Vec<LoadedModel> {
        self.models.list()
    }

    /// Installs a model file or folder as `options.id`, replacing an installed model of that
    /// id. Requests that already loaded the old model finish on it, and later ones load the
    /// new files.
    pub async fn install(
        &self,
        source: PathBuf,
        options: ImportOptions,
    ) -> Result<Manifest, StoreError> {
        let store = self.store.clone();
        let store_lock = Arc::clone(&self.store_lock);
        let models = Arc::clone(&self.models);
        let folder = self.store.model_dir(&options.id);
        let install = move || {
            let (manifest, replaced, guard) =
                store.import_or_replace(&source, &options, || store_lock.blocking_write())?;
            if replaced {
                models.unload(&manifest.id, UnloadReason::Replaced);
            }
            drop(guard);
            Ok(manifest)
        };
        tokio::task::spawn_blocking(install)
            .await
            .map_err(|error| task_failed(folder, error))?
    }

    /// Deletes an installed model and its files and unloads it. Requests that already loaded
    /// it finish on their copy.
    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let _store_guard = self.store_lock.write().await;
        let store = self.store.clone();
        let owned_id = id.to_owned();
        tokio::task::spawn_blocking(move || store.remove(&owned_id))
            .await
            .map_err(|error| task_failed(self.store.model_dir(id), error))??;
        self.models.unload(id, UnloadReason::Removed);
        Ok(())
    }

    /// Loads a model once: concurrent first requests wait for the same load, and a failed
    /// load is retried by the next request. Returns the model with a lease, so the memory
    /// budget does not unload it while the caller uses it.
    async fn load(
        &self,
        manifest: &Manifest,
        reason: LoadReason,
    ) -> Result<(LlamaModelHandle, Lease), InferenceError> {
        let checkout =
            self.models
                .checkout(&manifest.id, manifest.total_size(), Resident::is_alive)?;
        let model = checkout
            .slot
            .get_or_try_init(|| async {
                let model = self.load_from_disk(manifest.clone(), reason).await?;
                Ok::<_, InferenceError>(Resident::TextGeneration(model))
            })
            .await?;
        self.models.record_loaded(&manifest.id, &checkout.slot);
        match model {
            Resident::TextGeneration(handle) => Ok((handle.clone(), checkout.lease)),
            Resident::Encoder(_) => Err(InferenceError::internal(format!(
                "model {} is loaded as an encoder, not a text-generation model",
                manifest.id
            ))),
        }
    }

    async fn load_from_disk(
        &self,
        manifest: Manifest,
        reason: LoadReason,
    ) -> Result<LlamaModelHandle, InferenceError> {
        let unavailable = |reason: String| {
            InferenceError::new(
                ErrorKind::ModelUnavailable,
                format!("model {} cannot be loaded: {reason}", manifest.id),
            )
        };
        let Some(file) = manifest.primary_file() else {
            return Err(unavailable("its manifest lists no model file".into()));
        };
        let path = self.store.file_path(&manifest, file);
        if manifest.engine != EngineKind::Llama {
            return Err(unavailable(format!(
                "the {:?} engine is not available on this node",
                manifest.engine
            )));
        }

        let options = self.options.llama.clone();
        let id = manifest.id.clone();
        tracing::info!(model = %id, path = %path.display(), reason = reason.as_str(), "loading model");
        let started = std::time::Instant::now();
        let handle = tokio::task::spawn_blocking(move || LlamaModelHandle::load(&path, options))
            .await
            .map_err(|err| unavailable(format!("the load task failed: {err}")))?
            .map_err(|err| {
                tracing::error!(model = %id, error = %err, "model load failed");
                unavailable(err.to_string())
            })?;
        tracing::info!(
            model = %id,
            seconds = started.elapsed().as_secs_f64(),
            context_tokens = handle.info().context_tokens,
            parameters = handle.info().parameters,
            "model loaded"
        );
        Ok(handle)
    }
}

/// Reports a blocking store task that panicked or was cancelled as an I/O error on `folder`.
fn task_failed(folder: PathBuf, error: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: folder,
        source: std::io::Error::other(format!("the model store task failed: {error}")),
    }
}
