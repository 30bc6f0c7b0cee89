//! Recognizes the model formats that the importer accepts.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::manifest::has_extension;
use crate::{EngineKind, StoreError, Task};

/// Files copied from a Hugging Face style model folder when present, besides
/// the weights. Paths are relative to the folder, `/`-separated.
pub const COMPANION_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    "1_Pooling/config.json",
    "modules.json",
    "sentence_bert_config.json",
];

pub const SAFETENSORS_WEIGHTS: &str = "model.safetensors";
pub const ONNX_GRAPH: &str = "onnx/model.onnx";
/// External tensor data that large ONNX exports keep next to the graph.
pub const ONNX_EXTERNAL_DATA: &str = "onnx/model.onnx_data";
const POOLING_CONFIG: &str = "1_Pooling/config.json";

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Upper bound on a safetensors JSON header, so that a corrupt length field
/// cannot make the format check allocate gigabytes.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// The engine, task and files of one import.
#[derive(Debug)]
pub(crate) struct ImportPlan {
    pub engine: EngineKind,
    pub task: Task,
    /// Source path and destination path relative to the model folder.
    pub files: Vec<(PathBuf, String)>,
    pub single_file: bool,
}

/// Detects the format of `source` and lists what to store. `task` overrides
/// the detected task; `id` decides the default task of `@custom/` ONNX models.
pub(crate) fn plan_import(
    source: &Path,
    id: &str,
    task: Option<Task>,
) -> Result<ImportPlan, StoreError> {
    let metadata = std::fs::metadata(source).at(source)?;
    let plan = if metadata.is_file() {
        plan_file(source, id, task, metadata.len())?
    } else if metadata.is_dir() {
        plan_folder(source, id, task)?
    } else {
        return Err(StoreError::UnsupportedFormat {
            path: source.to_path_buf(),
        });
    };
    // Only llama.cpp generates text, so any other format would fail on its first request.
    if plan.task == Task::TextGeneration && plan.engine != EngineKind::Llama {
        return Err(StoreError::InvalidOptions(format!(
            "{} is a {} model, but text generation needs a GGUF file",
            source.display(),
            plan.engine
        )));
    }
    Ok(plan)
}

fn plan_file(
    source: &Path,
    id: &str,
    task: Option<Task>,
    size: u64,
) -> Result<ImportPlan, StoreError> {
    let name = source
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| StoreError::UnsupportedFormat {
            path: source.to_path_buf(),
        })?;

    let engine = if has_extension(name, "gguf") {
        check_gguf(source)?;
        EngineKind::Llama
    } else if has_extension(name, "onnx") {
        check_onnx(source, size)?;
        EngineKind::Onnx
    } else {
        return Err(StoreError::UnsupportedFormat {
            path: source.to_path_buf(),
        });
    };

    let task = match (task, engine) {
        (Some(task), _) => task,
        (None, EngineKind::Llama) => Task::TextGeneration,
        (None, _) => onnx_default_task(source, id)?,
    };
    Ok(ImportPlan {
        engine,
        task,
        files: vec![(source.to_path_buf(), name.to_string())],
        single_file: true,
    })
}

fn plan_folder(source: &Path, id: &str, task: Option<Task>) -> Result<ImportPlan, StoreError> {
    let has = |relative: &str| join_relative(source, relative).is_file();

    let (engine, weights): (EngineKind, &[&str]) = if has("config.json") && has(SAFETENSORS_WEIGHTS)
    {
        check_safetensors(&join_relative(source, SAFETENSORS_WEIGHTS))?;
        (EngineKind::Safetensors, &[SAFETENSORS_WEIGHTS])
    } else if has(ONNX_GRAPH) {
        let graph = join_relative(source, ONNX_GRAPH);
        let size = std::fs::metadata(&graph).at(&graph)?.len();
        check_onnx(&graph, size)?;
        (EngineKind::Onnx, &[ONNX_GRAPH, ONNX_EXTERNAL_DATA])
    } else {
        return Err(StoreError::UnsupportedFormat {
            path: source.to_path_buf(),
        });
    };

    let task = match task {
        Some(task) => task,
        None => match detect_folder_task(source)? {
            Some(task) => task,
            None if engine == EngineKind::Onnx => onnx_default_task(source, id)?,
            None => {
                return Err(StoreError::TaskRequired {
                    path: source.to_path_buf(),
                })
            }
        },
    };

    let files = weights
        .iter()
        .chain(COMPANION_FILES)
        .filter(|relative| has(relative))
        .map(|relative| (join_relative(source, relative), relative.to_string()))
        .collect();
    Ok(ImportPlan {
        engine,
        task,
        files,
        single_file: false,
    })
}

fn onnx_default_task(source: &Path, id: &str) -> Result<Task, StoreError> {
    if id.starts_with("@custom/") {
        Ok(Task::Custom)
    } else {
        Err(StoreError::TaskRequired {
            path: source.to_path_buf(),
        })
    }
}

/// Detects the task of a Hugging Face style folder: a sentence-transformers
/// pooling config means text embeddings, and `config.json` architectures ending
/// in `ForSequenceClassification` or `ForImageClassification` mean classification.
pub(crate) fn detect_folder_task(folder: &Path) -> Result<Option<Task>, StoreError> {
    if join_relative(folder, POOLING_CONFIG).is_file() {
        return Ok(Some(Task::TextEmbeddings));
    }
    let config_path = folder.join("config.json");
    if !config_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config_path).at(&config_path)?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| StoreError::InvalidModel {
            path: config_path.clone(),
            reason: format!("config.json is not valid JSON: {error}"),
        })?;
    Ok(task_from_config(&config))
}

pub(crate) fn task_from_config(config: &serde_json::Value) -> Option<Task> {
    let architectures = config.get("architectures")?.as_array()?;
    architectures
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find_map(|architecture| {
            if architecture.ends_with("ForSequenceClassification") {
                Some(Task::TextClassification)
            } else if architecture.ends_with("ForImageClassification") {
                Some(Task::ImageClassification)
            } else {
                None
            }
        })
}

fn check_gguf(path: &Path) -> Result<(), StoreError> {
    let mut magic = [0u8; 4];
    let read = read_prefix(path, &mut magic)?;
    if read < magic.len() || &magic != GGUF_MAGIC {
        return Err(StoreError::InvalidModel {
            path: path.to_path_buf(),
            reason: format!(
                "not a GGUF file: the first 4 bytes are {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(&magic[..read])
            ),
        });
    }
    Ok(())
}

/// ONNX files are protobuf without a magic number, so only emptiness is checked.
fn check_onnx(path: &Path, size: u64) -> Result<(), StoreError> {
    if size == 0 {
        return Err(StoreError::InvalidModel {
            path: path.to_path_buf(),
            reason: "the ONNX file is empty".to_string(),
        });
    }
    Ok(())
}

/// Checks the safetensors layout: an 8-byte little-endian header length,
/// then that many bytes of JSON object.
fn check_safetensors(path: &Path) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    };

    let mut file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let mut length_bytes = [0u8; 8];
    if size < 8 {
        return Err(invalid(format!(
            "not a safetensors file: {size} bytes is shorter than the 8-byte header length"
        )));
    }
    file.read_exact(&mut length_bytes).at(path)?;
    let header_len = u64::from_le_bytes(length_bytes);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > size - 8 {
        return Err(invalid(format!(
            "not a safetensors file: header length {header_len} exceeds the file size {size} \
             or the {MAX_SAFETENSORS_HEADER}-byte limit"
        )));
    }
    // The bound check above keeps this within usize on every supported target.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).at(path)?;
    match serde_json::from_slice::<serde_json::Value>(&header) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(invalid(
            "not a safetensors file: the header is not a JSON object".to_string(),
        )),
        Err(error) => Err(invalid(format!(
            "not a safetensors file: the header is not valid JSON: {error}"
        ))),
    }
}

fn read_prefix(path: &Path, buffer: &mut [u8]) -> Result<usize, StoreError> {
    let mut file = File::open(path).at(path)?;
    let mut filled = 0;
    while filled < buffer.len() {
        let read = file.read(&mut buffer[filled..]).at(path)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// Joins a `/`-separated relative path onto `base` with the platform separator.
pub(crate) fn join_relative(base: &Path, relative: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(relative.split('/'));
    path
}
