//! Recognizes the model formats that the importer accepts.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::id::validate_relative_path;
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
/// The int8 graph that Hugging Face repositories often publish beside `onnx/model.onnx`.
pub const ONNX_QUANTIZED_GRAPH: &str = "onnx/model_quantized.onnx";
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
/// `weights` names the weights file of a folder import, relative to the folder.
pub(crate) fn plan_import(
    source: &Path,
    id: &str,
    task: Option<Task>,
    weights: Option<&str>,
) -> Result<ImportPlan, StoreError> {
    let metadata = std::fs::metadata(source).at(source)?;
    let plan = if metadata.is_file() {
        if let Some(weights) = weights {
            return Err(StoreError::InvalidOptions(format!(
                "--weights {weights} applies only to folder imports, and {} is a file",
                source.display()
            )));
        }
        plan_file(source, id, task, metadata.len())?
    } else if metadata.is_dir() {
        plan_folder(source, id, task, weights)?
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

fn plan_folder(
    source: &Path,
    id: &str,
    task: Option<Task>,
    weights: Option<&str>,
) -> Result<ImportPlan, StoreError> {
    let has = |relative: &str| join_relative(source, relative).is_file();

    // The task is read first because it decides which weights a folder prefers.
    let detected = match task {
        Some(task) => Some(task),
        None => detect_folder_task(source)?,
    };
    let (engine, weights) = match weights {
        Some(weights) => requested_weights(source, weights)?,
        None => default_weights(source, detected)?,
    };
    let task = match detected {
        Some(task) => task,
        None if engine == EngineKind::Onnx => onnx_default_task(source, id)?,
        None => {
            return Err(StoreError::TaskRequired {
                path: source.to_path_buf(),
            })
        }
    };

    // Large ONNX exports keep their tensors in `{graph}_data` beside the graph.
    let external_data = format!("{weights}_data");
    let mut relatives = vec![weights.clone()];
    if engine == EngineKind::Onnx && has(&external_data) {
        relatives.push(external_data);
    }
    relatives.extend(
        COMPANION_FILES
            .iter()
            .filter(|relative| has(relative))
            .map(|relative| relative.to_string()),
    );
    let files = relatives
        .into_iter()
        .map(|relative| (join_relative(source, &relative), relative))
        .collect();
    Ok(ImportPlan {
        engine,
        task,
        files,
        single_file: false,
    })
}

/// Chooses the weights of a folder import without `--weights`. Text classifiers prefer an ONNX
/// graph (full precision, then int8) over `model.safetensors`, because ONNX Runtime runs any
/// architecture whose export takes token ids, while candle runs only DistilBERT and BERT
/// classifiers. Other tasks prefer `model.safetensors`. Safetensors weights count only with a
/// `config.json` beside them.
fn default_weights(source: &Path, task: Option<Task>) -> Result<(EngineKind, String), StoreError> {
    let has = |relative: &str| join_relative(source, relative).is_file();
    let safetensors = has("config.json") && has(SAFETENSORS_WEIGHTS);
    let candidates: [&str; 3] = if task == Some(Task::TextClassification) {
        [ONNX_GRAPH, ONNX_QUANTIZED_GRAPH, SAFETENSORS_WEIGHTS]
    } else {
        [SAFETENSORS_WEIGHTS, ONNX_GRAPH, ONNX_QUANTIZED_GRAPH]
    };
    let chosen = candidates.into_iter().find(|&relative| {
        if relative == SAFETENSORS_WEIGHTS {
            safetensors
        } else {
            has(relative)
        }
    });
    let Some(relative) = chosen else {
        return Err(StoreError::UnsupportedFormat {
            path: source.to_path_buf(),
        });
    };
    check_weights(source, relative)
}

/// Checks the weights file that `--weights` names, relative to the folder.
fn requested_weights(source: &Path, relative: &str) -> Result<(EngineKind, String), StoreError> {
    let relative = relative.trim_start_matches("./");
    validate_relative_path(relative).map_err(|reason| {
        StoreError::InvalidOptions(format!("invalid --weights {relative:?}: {reason}"))
    })?;
    if !join_relative(source, relative).is_file() {
        return Err(StoreError::InvalidOptions(format!(
            "--weights {relative} is not a file in {}",
            source.display()
        )));
    }
    if relative == SAFETENSORS_WEIGHTS && !join_relative(source, "config.json").is_file() {
        return Err(StoreError::InvalidOptions(format!(
            "{} has no config.json, which safetensors weights need",
            source.display()
        )));
    }
    if relative != SAFETENSORS_WEIGHTS && !has_extension(relative, "onnx") {
        return Err(StoreError::InvalidOptions(format!(
            "--weights {relative} is neither {SAFETENSORS_WEIGHTS} nor an .onnx file"
        )));
    }
    check_weights(source, relative)
}

/// Checks the format of a folder's weights file and returns its engine.
fn check_weights(source: &Path, relative: &str) -> Result<(EngineKind, String), StoreError> {
    let path = join_relative(source, relative);
    if relative == SAFETENSORS_WEIGHTS {
        check_safetensors(&path)?;
        return Ok((EngineKind::Safetensors, relative.to_string()));
    }
    let size = std::fs::metadata(&path).at(&path)?.len();
    check_onnx(&path, size)?;
    Ok((EngineKind::Onnx, relative.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIFIER_CONFIG: &str =
        r#"{"architectures": ["DistilBertForSequenceClassification"], "id2label": {"0": "A"}}"#;

    fn write(folder: &Path, relative: &str, contents: &[u8]) {
        let path = join_relative(folder, relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// Returns the smallest valid safetensors file: an 8-byte header length and an empty JSON object.
    fn safetensors_bytes() -> Vec<u8> {
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        bytes
    }

    /// Writes a model folder with `config` and the named weights files.
    fn folder(config: &str, weights: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.json", config.as_bytes());
        write(dir.path(), "tokenizer.json", b"{}");
        for relative in weights {
            if *relative == SAFETENSORS_WEIGHTS {
                write(dir.path(), relative, &safetensors_bytes());
            } else {
                write(dir.path(), relative, b"onnx graph");
            }
        }
        dir
    }

    fn stored_paths(plan: &ImportPlan) -> Vec<&str> {
        let mut paths: Vec<&str> = plan.files.iter().map(|(_, path)| path.as_str()).collect();
        paths.sort();
        paths
    }

    #[test]
    fn classifier_prefers_onnx_graphs() {
        let cases: [(&[&str], EngineKind, &str); 3] = [
            (
                &[SAFETENSORS_WEIGHTS, ONNX_GRAPH, ONNX_QUANTIZED_GRAPH],
                EngineKind::Onnx,
                ONNX_GRAPH,
            ),
            (
                &[SAFETENSORS_WEIGHTS, ONNX_QUANTIZED_GRAPH],
                EngineKind::Onnx,
                ONNX_QUANTIZED_GRAPH,
            ),
            (
                &[SAFETENSORS_WEIGHTS],
                EngineKind::Safetensors,
                SAFETENSORS_WEIGHTS,
            ),
        ];
        for (weights, engine, chosen) in cases {
            let dir = folder(CLASSIFIER_CONFIG, weights);
            let plan = plan_import(dir.path(), "classifier", None, None).unwrap();
            assert_eq!(plan.task, Task::TextClassification, "{weights:?}");
            assert_eq!(plan.engine, engine, "{weights:?}");
            let mut expected = vec!["config.json", chosen, "tokenizer.json"];
            expected.sort();
            assert_eq!(stored_paths(&plan), expected, "{weights:?}");
        }
    }

    #[test]
    fn embeddings_still_prefer_safetensors() {
        let dir = folder(
            r#"{"architectures": ["BertModel"]}"#,
            &[SAFETENSORS_WEIGHTS, ONNX_GRAPH],
        );
        write(dir.path(), "1_Pooling/config.json", b"{}");
        let plan = plan_import(dir.path(), "encoder", None, None).unwrap();
        assert_eq!(plan.task, Task::TextEmbeddings);
        assert_eq!(plan.engine, EngineKind::Safetensors);
        assert!(!stored_paths(&plan).contains(&ONNX_GRAPH));
    }

    #[test]
    fn weights_option_picks_the_file() {
        let dir = folder(
            CLASSIFIER_CONFIG,
            &[SAFETENSORS_WEIGHTS, ONNX_GRAPH, ONNX_QUANTIZED_GRAPH],
        );
        write(dir.path(), "onnx/model_quantized.onnx_data", b"tensors");
        let cases = [
            (ONNX_QUANTIZED_GRAPH, EngineKind::Onnx),
            ("./onnx/model_quantized.onnx", EngineKind::Onnx),
            (SAFETENSORS_WEIGHTS, EngineKind::Safetensors),
        ];
        for (weights, engine) in cases {
            let plan = plan_import(dir.path(), "classifier", None, Some(weights)).unwrap();
            assert_eq!(plan.engine, engine, "{weights}");
            let paths = stored_paths(&plan);
            let relative = weights.trim_start_matches("./");
            assert!(paths.contains(&relative), "{weights}: {paths:?}");
            let weights_files = paths
                .iter()
                .filter(|path| path.ends_with(".onnx") || path.ends_with(".safetensors"))
                .count();
            assert_eq!(weights_files, 1, "{weights}: {paths:?}");
        }
        let plan = plan_import(dir.path(), "classifier", None, Some(ONNX_QUANTIZED_GRAPH)).unwrap();
        assert!(stored_paths(&plan).contains(&"onnx/model_quantized.onnx_data"));
    }

    #[test]
    fn weights_option_rejects_bad_paths() {
        let dir = folder(CLASSIFIER_CONFIG, &[SAFETENSORS_WEIGHTS, ONNX_GRAPH]);
        let cases = [
            ("onnx/model_quantized.onnx", "not a file"),
            ("tokenizer.json", "neither"),
            ("../model.onnx", "invalid --weights"),
            ("/etc/model.onnx", "invalid --weights"),
        ];
        for (weights, expected) in cases {
            let error = plan_import(dir.path(), "classifier", None, Some(weights)).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidOptions(_)),
                "{weights}: {error}"
            );
            assert!(error.to_string().contains(expected), "{weights}: {error}");
        }

        let file = dir
            .path()
            .join(ONNX_GRAPH.replace('/', std::path::MAIN_SEPARATOR_STR));
        let error = plan_import(&file, "@custom/m", None, Some(ONNX_GRAPH)).unwrap_err();
        assert!(error.to_string().contains("folder imports"), "{error}");
    }

    #[test]
    fn safetensors_weights_need_config() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), SAFETENSORS_WEIGHTS, &safetensors_bytes());
        let error = plan_import(
            dir.path(),
            "classifier",
            Some(Task::TextClassification),
            Some(SAFETENSORS_WEIGHTS),
        )
        .unwrap_err();
        assert!(error.to_string().contains("no config.json"), "{error}");
    }
}
