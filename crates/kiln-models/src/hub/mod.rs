//! Downloads models from a Hugging Face hub (or a server with the same HTTP API)
//! into a [`ModelStore`].
//!
//! The hub endpoints used are `GET /api/models/{repo}/revision/{revision}` (or
//! `GET /api/models/{repo}`) for the file list, and `HEAD`/`GET
//! /{repo}/resolve/{revision}/{file}` for each file. For files stored in Git LFS
//! the hub responds to `HEAD` with a redirect that carries `X-Linked-Size` and
//! `X-Linked-Etag`, the quoted SHA-256 of the contents. Other files carry a
//! plain `ETag` (the git blob id) and `Content-Length`.

mod client;

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::detect::{
    join_relative, task_from_config, COMPANION_FILES, ONNX_EXTERNAL_DATA, ONNX_GRAPH,
    SAFETENSORS_WEIGHTS,
};
use crate::error::IoContext;
use crate::id::validate_relative_path;
use crate::manifest::has_extension;
use crate::transfer::Transfer;
use crate::{validate_id, ImportOptions, Manifest, ModelStore, StoreError, Task};
use client::{remove_if_exists, HubClient};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REVISION: &str = "main";

/// Longest `.part` file name before the name falls back to a hash, below the
/// common 255-byte file name limit.
const MAX_PARTIAL_NAME: usize = 200;

/// Connection settings for the hub.
#[derive(Clone)]
pub struct HubOptions {
    /// Base URL of the hub, without a trailing slash.
    pub endpoint: String,
    /// Access token, sent as `Authorization: Bearer TOKEN` to the endpoint's host only.
    pub token: Option<String>,
    /// Branch, tag or commit to download.
    pub revision: String,
    /// Show a progress bar on stderr for each download and for the import.
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            revision: DEFAULT_REVISION.to_string(),
            progress: false,
        }
    }
}

impl HubOptions {
    /// Reads `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`.
    /// Empty values count as unset. The revision is `main` and progress is off.
    pub fn from_env() -> Self {
        let non_empty = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        HubOptions {
            endpoint: non_empty("HF_ENDPOINT")
                .map(|endpoint| endpoint.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: non_empty("HF_TOKEN"),
            ..HubOptions::default()
        }
    }
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("revision", &self.revision)
            .field("progress", &self.progress)
            .finish()
    }
}

/// Downloads a model from the hub and imports it into `store`.
///
/// `spec` is `ORG/REPO` or `ORG/REPO:FILE`. With a file, only that file is
/// downloaded, and it must be a `.gguf` or `.onnx` file. Without one, the repo's
/// only `.gguf` file is chosen (more than one is an error that lists them), or
/// else the files of a safetensors folder (`config.json` and `model.safetensors`)
/// or an ONNX folder (`onnx/model.onnx`) with their tokenizer and config files.
///
/// The model id defaults to the repo name in lower case. Downloads are staged
/// under `{root}/.partial` and resumed from there by a later pull after an
/// interruption. Each file is checked against the size and SHA-256 the hub
/// reports, where it reports a SHA-256.
pub fn pull(
    store: &ModelStore,
    spec: &str,
    id: Option<&str>,
    task: Option<Task>,
    options: &HubOptions,
) -> Result<Manifest, StoreError> {
    let spec = parse_spec(spec)?;
    let id = match id {
        Some(id) => id.to_string(),
        None => spec.name.to_ascii_lowercase(),
    };
    validate_id(&id)?;
    if store.model_dir(&id).exists() {
        return Err(StoreError::AlreadyExists { id });
    }

    tracing::info!(repo = spec.repo, revision = %options.revision, id = %id, "pulling model from the hub");
    let client = HubClient::new(options)?;
    let info = client.repo_info(&spec)?;
    let files = select_files(&spec, &info.files)?;
    let single_file = spec.file.is_some() || files.len() == 1 && has_extension(&files[0], "gguf");

    // Reject a missing task before the large weight files are downloaded. A
    // folder's task may come from its config.json, which is fetched first.
    let mut downloaded = Vec::new();
    if task.is_none() && single_file {
        let is_onnx = has_extension(&files[0], "onnx");
        if is_onnx && !id.starts_with("@custom/") {
            return Err(StoreError::TaskRequired {
                path: PathBuf::from(format!("hf:{}:{}", spec.repo, files[0])),
            });
        }
    } else if task.is_none() {
        downloaded = check_folder_task(store, &client, &spec, &files, &id, options)?;
    }

    let mut partials = Vec::with_capacity(files.len());
    for file in &files {
        let partial = partial_path(store, spec.repo, &options.revision, file);
        if !downloaded.contains(file) {
            client.download(&spec, file, &partial, options.progress)?;
        }
        partials.push((file.as_str(), partial));
    }

    let staging = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(store.root())
        .at(store.root())?;
    for (file, partial) in &partials {
        let relative = if single_file {
            file.rsplit('/').next().unwrap_or(file)
        } else {
            file
        };
        let staged = join_relative(staging.path(), relative);
        if let Some(parent) = staged.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        // A hard link keeps the finished download in .partial until the import
        // succeeds, so a failed import does not cost the download.
        if let Err(error) = std::fs::hard_link(partial, &staged) {
            tracing::debug!(partial = %partial.display(), %error, "hard link failed, moving the download instead");
            std::fs::rename(partial, &staged).at(partial)?;
        }
    }

    let source = if single_file {
        let (file, _) = partials[0];
        staging.path().join(file.rsplit('/').next().unwrap_or(file))
    } else {
        staging.path().to_path_buf()
    };
    let import_options = ImportOptions {
        id: id.clone(),
        task,
        source: Some(format!("hf:{}", spec.repo)),
        license: info.license,
        progress: options.progress,
        ..ImportOptions::default()
    };
    let manifest = store.import_with(&source, &import_options, Transfer::Move)?;

    for (_, partial) in &partials {
        remove_if_exists(partial)?;
    }
    let staging_path = staging.path().to_path_buf();
    staging.close().at(staging_path)?;
    tracing::info!(repo = spec.repo, id = %id, files = manifest.files.len(), "pulled model");
    Ok(manifest)
}

/// Returns the path of the staging file for one hub file: `{root}/.partial/NAME.part`,
/// where NAME is `{repo}@{revision}/{file}` with every byte outside
/// `A-Z a-z 0-9 . _ -` percent-encoded (or its SHA-256 when that is too long).
/// A pull that finds this file resumes the download from its end.
///
/// NOTE: two pulls of the same file at the same time write to the same `.part`
/// file. A corrupted result fails the SHA-256 check only for LFS files, which are
/// the only ones the hub reports a SHA-256 for.
pub fn partial_path(store: &ModelStore, repo: &str, revision: &str, file: &str) -> PathBuf {
    let key = format!("{repo}@{revision}/{file}");
    let mut name = String::with_capacity(key.len() + 16);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.len() > MAX_PARTIAL_NAME {
        name = hex::encode(Sha256::digest(key.as_bytes()));
    }
    store.partial_dir().join(format!("{name}.part"))
}

/// A parsed `ORG/REPO[:FILE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec<'a> {
    repo: &'a str,
    org: &'a str,
    name: &'a str,
    file: Option<&'a str>,
}

fn parse_spec(spec: &str) -> Result<Spec<'_>, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidSpec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (repo, file) = match spec.split_once(':') {
        Some((repo, file)) => (repo, Some(file)),
        None => (spec, None),
    };
    let (org, name) = repo
        .split_once('/')
        .ok_or_else(|| invalid("the repo must be ORG/REPO"))?;
    for part in [org, name] {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid("ORG and REPO must be non-empty names"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "ORG and REPO may contain only ASCII letters, digits and . _ -",
            ));
        }
    }
    if let Some(file) = file {
        validate_relative_path(file).map_err(|reason| invalid(&reason))?;
    }
    Ok(Spec {
        repo,
        org,
        name,
        file,
    })
}

/// Chooses which files of the repo to download.
fn select_files(spec: &Spec<'_>, files: &[String]) -> Result<Vec<String>, StoreError> {
    if let Some(file) = spec.file {
        if !files.iter().any(|listed| listed == file) {
            return Err(StoreError::HubFileNotListed {
                repo: spec.repo.to_string(),
                file: file.to_string(),
                files: files.to_vec(),
            });
        }
        if !has_extension(file, "gguf") && !has_extension(file, "onnx") {
            return Err(StoreError::InvalidSpec {
                spec: format!("{}:{file}", spec.repo),
                reason: "FILE must be a .gguf or .onnx file; pull a safetensors or ONNX folder \
                         by naming only the repo"
                    .to_string(),
            });
        }
        return Ok(vec![file.to_string()]);
    }

    let has = |name: &str| files.iter().any(|listed| listed == name);
    let gguf: Vec<String> = files
        .iter()
        .filter(|name| has_extension(name, "gguf"))
        .cloned()
        .collect();
    if gguf.len() == 1 {
        return Ok(gguf);
    }
    if gguf.len() > 1 {
        return Err(StoreError::AmbiguousGguf {
            repo: spec.repo.to_string(),
            files: gguf,
        });
    }

    let weights: &[&str] = if has("config.json") && has(SAFETENSORS_WEIGHTS) {
        &[SAFETENSORS_WEIGHTS]
    } else if has(ONNX_GRAPH) {
        &[ONNX_GRAPH, ONNX_EXTERNAL_DATA]
    } else {
        return Err(StoreError::NoModelFiles {
            repo: spec.repo.to_string(),
            files: files.to_vec(),
        });
    };
    // config.json goes first so that its task can be checked before the weights download.
    let mut selected: Vec<String> = COMPANION_FILES
        .iter()
        .chain(weights)
        .filter(|name| has(name))
        .map(|name| name.to_string())
        .collect();
    selected.sort_by_key(|name| name != "config.json");
    Ok(selected)
}

/// Fails with [`StoreError::TaskRequired`] when a folder pull has no `--task`
/// and neither the file list nor config.json determines the task. Returns the
/// files it downloaded for the check.
fn check_folder_task(
    store: &ModelStore,
    client: &HubClient,
    spec: &Spec<'_>,
    files: &[String],
    id: &str,
    options: &HubOptions,
) -> Result<Vec<String>, StoreError> {
    if files.iter().any(|file| file == "1_Pooling/config.json") {
        return Ok(Vec::new());
    }
    let is_onnx = files.iter().any(|file| file == ONNX_GRAPH);
    if is_onnx && id.starts_with("@custom/") {
        return Ok(Vec::new());
    }
    if files.iter().any(|file| file == "config.json") {
        let partial = partial_path(store, spec.repo, &options.revision, "config.json");
        client.download(spec, "config.json", &partial, false)?;
        let text = std::fs::read_to_string(&partial).at(&partial)?;
        // An invalid config.json is reported by the importer with its path.
        let config = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if task_from_config(&config).is_some() {
            return Ok(vec!["config.json".to_string()]);
        }
    }
    Err(StoreError::TaskRequired {
        path: PathBuf::from(format!("hf:{}", spec.repo)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn spec_parsing() {
        let spec = parse_spec("Org/Repo-GGUF:sub/model.Q4.gguf").unwrap();
        assert_eq!(spec.repo, "Org/Repo-GGUF");
        assert_eq!(spec.org, "Org");
        assert_eq!(spec.name, "Repo-GGUF");
        assert_eq!(spec.file, Some("sub/model.Q4.gguf"));

        let plain = parse_spec("Org/Repo").unwrap();
        assert_eq!(plain.file, None);

        for bad in [
            "repo",
            "/repo",
            "org/",
            "a/b/c",
            "org/re po",
            "org/repo:",
            "org/repo:../x",
        ] {
            let error = parse_spec(bad).unwrap_err().to_string();
            assert!(error.contains("ORG/REPO"), "{bad}: {error}");
        }
    }

    #[test]
    fn select_single_gguf() {
        let spec = parse_spec("o/r").unwrap();
        let selected =
            select_files(&spec, &files(&["README.md", "m.Q8_0.gguf", "config.json"])).unwrap();
        assert_eq!(selected, ["m.Q8_0.gguf"]);
    }

    #[test]
    fn select_rejects_several_gguf() {
        let spec = parse_spec("o/r").unwrap();
        let error = select_files(&spec, &files(&["a.gguf", "b.gguf"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a.gguf"), "{error}");
        assert!(error.contains("b.gguf"), "{error}");
        assert!(error.contains("o/r:FILE"), "{error}");
    }

    #[test]
    fn select_safetensors_layout() {
        let spec = parse_spec("o/r").unwrap();
        let listing = files(&[
            ".gitattributes",
            "README.md",
            "model.safetensors",
            "tokenizer.json",
            "config.json",
            "1_Pooling/config.json",
            "onnx/model.onnx",
            "pytorch_model.bin",
        ]);
        let selected = select_files(&spec, &listing).unwrap();
        assert_eq!(
            selected,
            [
                "config.json",
                "tokenizer.json",
                "1_Pooling/config.json",
                "model.safetensors"
            ]
        );
    }

    #[test]
    fn select_onnx_layout() {
        let spec = parse_spec("o/r").unwrap();
        let listing = files(&[
            "onnx/model.onnx",
            "onnx/model.onnx_data",
            "tokenizer.json",
            "README.md",
        ]);
        let selected = select_files(&spec, &listing).unwrap();
        assert_eq!(
            selected,
            ["tokenizer.json", "onnx/model.onnx", "onnx/model.onnx_data"]
        );
    }

    #[test]
    fn select_named_file() {
        let spec = parse_spec("o/r:b.gguf").unwrap();
        let selected = select_files(&spec, &files(&["a.gguf", "b.gguf"])).unwrap();
        assert_eq!(selected, ["b.gguf"]);

        let missing = parse_spec("o/r:c.gguf").unwrap();
        let error = select_files(&missing, &files(&["a.gguf"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("c.gguf"), "{error}");

        let weights = parse_spec("o/r:model.safetensors").unwrap();
        let error = select_files(&weights, &files(&["model.safetensors"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains(".gguf or .onnx"), "{error}");
    }

    #[test]
    fn select_reports_repo_without_model() {
        let spec = parse_spec("o/r").unwrap();
        let error = select_files(&spec, &files(&["README.md", "pytorch_model.bin"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("pytorch_model.bin"), "{error}");
    }

    #[test]
    fn options_debug_hides_token() {
        let options = HubOptions {
            token: Some("hf_secret_value".to_string()),
            ..HubOptions::default()
        };
        let debug = format!("{options:?}");
        assert!(!debug.contains("hf_secret_value"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn partial_names_are_flat_and_distinct() {
        let root = tempfile::tempdir().unwrap();
        let store = ModelStore::open(root.path()).unwrap();
        let first = partial_path(&store, "o/r", "main", "a/b.gguf");
        let second = partial_path(&store, "o/r", "main", "a%2Fb.gguf");
        assert_ne!(first, second);
        assert_eq!(first.parent().unwrap(), store.root().join(".partial"));
        let name = first.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "o%2Fr%40main%2Fa%2Fb.gguf.part");

        let long = partial_path(&store, "o/r", "main", &"x".repeat(300));
        let long_name = long.file_name().unwrap().to_str().unwrap();
        assert_eq!(long_name.len(), 64 + ".part".len());
    }
}
