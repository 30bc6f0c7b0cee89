use std::io;
use std::path::PathBuf;

/// Errors from the model store, the importer and the hub client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid model id {id:?}: {rule}")]
    InvalidId { id: String, rule: String },

    #[error("model {id} already exists; run `kiln models remove {id}` first")]
    AlreadyExists { id: String },

    #[error("model {id} not found")]
    NotFound { id: String },

    #[error("{name} {value} is already used by model {owner}; remove that model first or choose another name")]
    NameInUse {
        /// "id" or "alias", whichever of the new model's names collides.
        name: &'static str,
        value: String,
        owner: String,
    },

    #[error(
        "unsupported model format at {path}: expected a .gguf file, a .onnx file, \
         a folder with config.json and model.safetensors, or a folder with onnx/model.onnx \
         or onnx/model_quantized.onnx"
    )]
    UnsupportedFormat { path: PathBuf },

    #[error("invalid model file {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },

    #[error("cannot tell the task of {path}: pass --task (one of {valid})", valid = crate::Task::valid_values())]
    TaskRequired { path: PathBuf },

    #[error("invalid import options: {0}")]
    InvalidOptions(String),

    #[error("SHA-256 mismatch for {file}: expected {expected}, got {actual}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {file}: expected {expected} bytes, got {actual} bytes")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },

    #[error("file {file} of model {id} is missing from {path}")]
    MissingFile {
        id: String,
        file: String,
        path: PathBuf,
    },

    #[error("invalid manifest {path}: {reason}")]
    InvalidManifest { path: PathBuf, reason: String },

    #[error("invalid hub spec {spec:?}: {reason}; expected ORG/REPO or ORG/REPO:FILE")]
    InvalidSpec { spec: String, reason: String },

    #[error("invalid hub endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    #[error("{url} returned HTTP {status}: {hint}")]
    HubUnauthorized {
        url: String,
        status: u16,
        hint: &'static str,
    },

    #[error("{resource} not found on the hub ({url} returned HTTP 404)")]
    HubNotFound { resource: String, url: String },

    #[error("{repo} has no file {file}; its files are: {files}", files = files.join(", "))]
    HubFileNotListed {
        repo: String,
        file: String,
        files: Vec<String>,
    },

    #[error("{url} returned HTTP {status}")]
    HubStatus { url: String, status: u16 },

    #[error("request to {url} failed: {source}")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("invalid response from {url}: {reason}")]
    HubResponse { url: String, reason: String },

    #[error(
        "{repo} has {count} .gguf files; pick one with {repo}:FILE, for example {repo}:{example}. Files: {files}",
        count = files.len(),
        example = files.first().map(String::as_str).unwrap_or("FILE"),
        files = files.join(", ")
    )]
    AmbiguousGguf { repo: String, files: Vec<String> },

    #[error(
        "{repo} has no model files that kiln can import (a .gguf file, config.json with model.safetensors, \
         or onnx/model.onnx). Files: {files}",
        files = files.join(", ")
    )]
    NoModelFiles { repo: String, files: Vec<String> },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an `io::Result`'s error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::io(path, source))
    }
}
