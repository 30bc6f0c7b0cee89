use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The inference task a model serves, named as in the hosted Workers AI catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    TextGeneration,
    TextEmbeddings,
    TextClassification,
    ImageClassification,
    /// A model with a task the catalog does not define, such as a tabular regressor.
    Custom,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::TextGeneration,
        Task::TextEmbeddings,
        Task::TextClassification,
        Task::ImageClassification,
        Task::Custom,
    ];

    /// Returns the kebab-case id used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::TextGeneration => "text-generation",
            Task::TextEmbeddings => "text-embeddings",
            Task::TextClassification => "text-classification",
            Task::ImageClassification => "image-classification",
            Task::Custom => "custom",
        }
    }

    /// Returns the task name that the hosted catalog shows, such as "Text Generation".
    pub fn display_name(self) -> &'static str {
        match self {
            Task::TextGeneration => "Text Generation",
            Task::TextEmbeddings => "Text Embeddings",
            Task::TextClassification => "Text Classification",
            Task::ImageClassification => "Image Classification",
            Task::Custom => "Custom",
        }
    }

    /// Returns the hosted catalog's stable task UUID. The catalog has no custom task, so
    /// `Custom` has a fixed UUID that only Kiln uses.
    pub fn catalog_id(self) -> &'static str {
        match self {
            Task::TextGeneration => "c329a1f9-323d-4e91-b2aa-582dd4188d34",
            Task::TextEmbeddings => "0137cdcf-162a-4108-94f2-1ca59e8c65ee",
            Task::TextClassification => "19606750-23ed-4371-aab2-c20349b53a60",
            Task::ImageClassification => "00cd182b-bf30-4fc4-8481-84a3ab349657",
            Task::Custom => "56de5b14-e0d8-421a-9f4e-8b017e8b9992",
        }
    }

    /// Returns the accepted kebab-case ids, comma-separated, for error messages.
    pub fn valid_values() -> String {
        Task::ALL.map(Task::as_str).join(", ")
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing a [`Task`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task {input:?}: expected one of {valid}", valid = Task::valid_values())]
pub struct ParseTaskError {
    pub input: String,
}

impl FromStr for Task {
    type Err = ParseTaskError;

    /// Parses the kebab-case id ("text-generation") or the catalog's display
    /// name ("Text Generation"), both case-insensitively.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        Task::ALL
            .into_iter()
            .find(|task| {
                task.as_str().eq_ignore_ascii_case(trimmed)
                    || task.display_name().eq_ignore_ascii_case(trimmed)
            })
            .ok_or_else(|| ParseTaskError {
                input: input.to_string(),
            })
    }
}

/// The engine that loads a model's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// llama.cpp, for GGUF files.
    Llama,
    /// ONNX Runtime, for `.onnx` graphs.
    Onnx,
    /// A Hugging Face style folder with `config.json` and `model.safetensors`.
    Safetensors,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Llama => "llama",
            EngineKind::Onnx => "onnx",
            EngineKind::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of a stored model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Path relative to the model's folder, with `/` as the separator.
    pub path: String,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The description of a stored model, kept as `manifest.json` in the model's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub task: Task,
    pub engine: EngineKind,
    pub files: Vec<ModelFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Origin of the model, such as `hf:ORG/REPO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Other ids that name this model, such as a hosted catalog id.
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Engine-specific settings, such as class labels.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Conversion record of a model imported with `kiln models import --quantize`: the source
    /// file and the agreement report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// The conversion of a GGUF model to another quantization type, and how closely the converted
/// model's next-token distributions match the original's on Kiln's fixed prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// Quantization type of the source file, as llama.cpp names it (`Q4_1`), or `unknown`.
    pub from: String,
    /// SHA-256 of the source file, lowercase hex.
    pub from_sha256: String,
    /// Quantization type of the stored file (`q8_0`, `q4_0`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Share of prompt positions where both models rank the same next token first, in [0, 1].
    pub top1_agreement: f64,
    /// Mean KL divergence KL(original ‖ converted) of the next-token distributions, in nats.
    pub mean_kl: f64,
    /// Prompts compared.
    pub prompts: u32,
    /// Prompt positions compared, over all prompts.
    pub positions: u32,
}

impl Manifest {
    /// Returns the file the engine loads: the `.gguf` for llama, the `.onnx`
    /// graph for onnx (preferring `onnx/model.onnx`), or `model.safetensors`.
    pub fn primary_file(&self) -> Option<&ModelFile> {
        match self.engine {
            EngineKind::Llama => self
                .files
                .iter()
                .find(|file| has_extension(&file.path, "gguf")),
            EngineKind::Onnx => self
                .files
                .iter()
                .find(|file| file.path == "onnx/model.onnx")
                .or_else(|| {
                    self.files
                        .iter()
                        .find(|file| has_extension(&file.path, "onnx"))
                }),
            EngineKind::Safetensors => self
                .files
                .iter()
                .find(|file| file.path == "model.safetensors"),
        }
    }

    /// Returns the file at `path` (relative, `/`-separated), if the model has one.
    pub fn file(&self, path: &str) -> Option<&ModelFile> {
        self.files.iter().find(|file| file.path == path)
    }

    /// Total size of all files in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

pub(crate) fn has_extension(path: &str, extension: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && ext.eq_ignore_ascii_case(extension))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_serde_uses_kebab_ids() {
        for task in Task::ALL {
            let json = serde_json::to_string(&task).unwrap();
            assert_eq!(json, format!("\"{}\"", task.as_str()));
            let back: Task = serde_json::from_str(&json).unwrap();
            assert_eq!(back, task);
        }
    }

    #[test]
    fn task_parses_id_and_display_name() {
        for task in Task::ALL {
            assert_eq!(task.as_str().parse::<Task>(), Ok(task));
            assert_eq!(task.display_name().parse::<Task>(), Ok(task));
            assert_eq!(task.display_name().to_lowercase().parse::<Task>(), Ok(task));
            assert_eq!(task.display_name().to_uppercase().parse::<Task>(), Ok(task));
        }
    }

    #[test]
    fn task_parse_error_lists_valid_values() {
        let error = "summarization".parse::<Task>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("summarization"), "{message}");
        for task in Task::ALL {
            assert!(message.contains(task.as_str()), "{message}");
        }
    }

    #[test]
    fn task_catalog_ids_are_distinct_uuids() {
        let ids: Vec<&str> = Task::ALL.map(Task::catalog_id).to_vec();
        for (index, id) in ids.iter().enumerate() {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(!ids[index + 1..].contains(id), "duplicate catalog id {id}");
        }
    }

    #[test]
    fn engine_serde_uses_lowercase() {
        let engines = [
            (EngineKind::Llama, "\"llama\""),
            (EngineKind::Onnx, "\"onnx\""),
            (EngineKind::Safetensors, "\"safetensors\""),
        ];
        for (engine, expected) in engines {
            assert_eq!(serde_json::to_string(&engine).unwrap(), expected);
        }
    }

    fn file(path: &str) -> ModelFile {
        ModelFile {
            path: path.to_string(),
            sha256: "0".repeat(64),
            size: 1,
        }
    }

    fn manifest(engine: EngineKind, paths: &[&str]) -> Manifest {
        Manifest {
            id: "m".to_string(),
            task: Task::Custom,
            engine,
            files: paths.iter().map(|path| file(path)).collect(),
            license: None,
            source: None,
            aliases: Vec::new(),
            description: None,
            extra: serde_json::Map::new(),
            quantization: None,
        }
    }

    #[test]
    fn primary_file_per_engine() {
        let llama = manifest(EngineKind::Llama, &["README.md", "model-q8_0.GGUF"]);
        assert_eq!(llama.primary_file().unwrap().path, "model-q8_0.GGUF");

        let onnx = manifest(
            EngineKind::Onnx,
            &[
                "config.json",
                "onnx/model_quantized.onnx",
                "onnx/model.onnx",
            ],
        );
        assert_eq!(onnx.primary_file().unwrap().path, "onnx/model.onnx");

        let safetensors = manifest(
            EngineKind::Safetensors,
            &["config.json", "model.safetensors", "tokenizer.json"],
        );
        assert_eq!(
            safetensors.primary_file().unwrap().path,
            "model.safetensors"
        );

        let empty = manifest(EngineKind::Safetensors, &["config.json"]);
        assert!(empty.primary_file().is_none());
    }

    #[test]
    fn manifest_optional_fields_default() {
        let json = r#"{"id":"m","task":"custom","engine":"onnx","files":[]}"#;
        let parsed: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, manifest(EngineKind::Onnx, &[]));
    }
}
