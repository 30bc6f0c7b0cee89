//! Model manifests, the on-disk model store, local import and Hugging Face hub pull.
//!
//! A [`ModelStore`] is a folder with one subfolder per model. Each subfolder contains
//! the model's files and a `manifest.json` ([`Manifest`]) with the model's task,
//! engine, and the size and SHA-256 of every file. [`ModelStore::import`] adds a
//! local GGUF file, ONNX file, safetensors folder or ONNX folder, and [`hub::pull`]
//! downloads one from a Hugging Face hub first.

mod detect;
mod error;
pub mod hub;
mod id;
mod manifest;
mod store;
mod transfer;

pub use error::StoreError;
pub use id::{validate_id, MAX_ID_LEN};
pub use manifest::{EngineKind, Manifest, ModelFile, ParseTaskError, Quantization, Task};
pub use store::{sha256_file, ImportOptions, ModelStore};
