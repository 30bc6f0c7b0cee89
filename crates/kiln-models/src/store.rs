use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::detect::{join_relative, plan_import};
use crate::error::IoContext;
use crate::id::{decode_dir_name, encode_dir_name, validate_id, validate_relative_path};
use crate::transfer::{self, hash_file, place_file, progress_bar, Transfer};
use crate::{Manifest, ModelFile, Quantization, StoreError, Task};

const MANIFEST_FILE: &str = "manifest.json";
/// Staging folder for hub downloads, inside the store root.
pub(crate) const PARTIAL_DIR: &str = ".partial";

/// Options for [`ModelStore::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Id of the new model. [`crate::validate_id`] lists the rules.
    pub id: String,
    /// Task of the model. The importer detects it where it can and rejects the
    /// import with [`StoreError::TaskRequired`] where it cannot.
    pub task: Option<Task>,
    /// Hard-link the source files (or symlink them when a hard link fails)
    /// instead of copying them. The stored model then changes when the source does.
    pub link: bool,
    pub license: Option<String>,
    pub source: Option<String>,
    pub aliases: Vec<String>,
    pub description: Option<String>,
    /// Weights file of a folder import, relative to the folder: `model.safetensors` or an
    /// `.onnx` graph such as `onnx/model_quantized.onnx`. `None` lets the importer choose
    /// (see [`ModelStore::import`]). Rejected for single-file imports.
    pub weights: Option<String>,
    /// Expected SHA-256 (hex) of a single-file import; rejected for folders.
    pub expected_sha256: Option<String>,
    /// Show a progress bar on stderr while hashing and copying.
    pub progress: bool,
}

impl ImportOptions {
    pub fn new(id: impl Into<String>) -> Self {
        ImportOptions {
            id: id.into(),
            ..ImportOptions::default()
        }
    }
}

/// A folder of models, one subfolder each, named after the model id with `/`
/// percent-encoded and holding a `manifest.json` beside the model's files.
///
/// Imports are staged in a dot-named folder inside the root and renamed into
/// place once `manifest.json` is written, so a crash leaves either the whole
/// model or none of it.
///
/// NOTE: staging folders left by a crash (`.import-*`, `.remove-*`, `.pull-*`, and
/// `.quantize-*` of `kiln models import --quantize`)
/// are skipped by `list` but never deleted automatically, because another
/// process may still be using them.
///
/// NOTE: on case-insensitive filesystems (the macOS and Windows defaults) ids
/// that differ only in case map to the same folder, and the second import fails
/// as a duplicate.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// Opens the store at `root`, creating the folder if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).at(&root)?;
        let root = root.canonicalize().at(&root)?;
        Ok(ModelStore { root })
    }

    /// Absolute path of the store folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns all models with a readable manifest, sorted by id. Folders with a
    /// missing or broken manifest are logged with a warning and skipped.
    pub fn list(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut manifests = Vec::new();
        for entry in std::fs::read_dir(&self.root).at(&self.root)? {
            let entry = entry.at(&self.root)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            // Dot folders are the store's own staging folders.
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let Some(id) = decode_dir_name(name).filter(|id| validate_id(id).is_ok()) else {
                tracing::warn!(
                    folder = %entry.path().display(),
                    "skipping folder whose name is not an encoded model id"
                );
                continue;
            };
            match self.load_manifest(&id) {
                Ok(manifest) => manifests.push(manifest),
                Err(error) => {
                    tracing::warn!(id = %id, %error, "skipping model with a broken manifest")
                }
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }

    /// Returns the model with this id, or `None` if there is none. An invalid id
    /// returns `None` too, because no stored model can have one, so callers can
    /// look up names from requests directly. A broken manifest is an error.
    pub fn get(&self, id: &str) -> Result<Option<Manifest>, StoreError> {
        if validate_id(id).is_err() || !self.model_dir(id).is_dir() {
            return Ok(None);
        }
        self.load_manifest(id).map(Some)
    }

    /// Absolute path of the folder that contains this model's files.
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.root.join(encode_dir_name(id))
    }

    /// Absolute path of one of a model's files.
    pub fn file_path(&self, manifest: &Manifest, file: &ModelFile) -> PathBuf {
        join_relative(&self.model_dir(&manifest.id), &file.path)
    }

    /// Imports a model file or folder under `options.id` and returns its manifest.
    /// The accepted formats are a `.gguf` file, a `.onnx` file, a folder with
    /// `config.json` and `model.safetensors`, and a folder with `onnx/model.onnx` or
    /// `onnx/model_quantized.onnx`.
    ///
    /// A folder import stores one weights file: `options.weights` when set, else the first
    /// present of `onnx/model.onnx`, `onnx/model_quantized.onnx` and `model.safetensors` for
    /// text classifiers, and of `model.safetensors`, `onnx/model.onnx` and
    /// `onnx/model_quantized.onnx` for other tasks.
    pub fn import(&self, source: &Path, options: &ImportOptions) -> Result<Manifest, StoreError> {
        let transfer = if options.link {
            Transfer::Link
        } else {
            Transfer::Copy
        };
        self.import_with(source, options, transfer)
    }

    /// Imports a GGUF file that `kiln models import --quantize` converted, as
    /// [`import`](Self::import) does, and records `quantization` in its manifest. The file is
    /// moved into the store (copied across filesystems), because it is a temporary file:
    /// `options.link` and `options.expected_sha256` are ignored.
    pub fn import_quantized(
        &self,
        source: &Path,
        options: &ImportOptions,
        quantization: Quantization,
    ) -> Result<Manifest, StoreError> {
        let options = ImportOptions {
            link: false,
            expected_sha256: None,
            ..options.clone()
        };
        self.import_inner(source, &options, Transfer::Move, Some(quantization))
    }

    pub(crate) fn import_with(
        &self,
        source: &Path,
        options: &ImportOptions,
        transfer: Transfer,
    ) -> Result<Manifest, StoreError> {
        self.import_inner(source, options, transfer, None)
    }

    fn import_inner(
        &self,
        source: &Path,
        options: &ImportOptions,
        transfer: Transfer,
        quantization: Option<Quantization>,
    ) -> Result<Manifest, StoreError> {
        let id = options.id.as_str();
        validate_id(id)?;
        let destination = self.model_dir(id);
        if destination.exists() {
            return Err(StoreError::AlreadyExists { id: id.to_string() });
        }
        let (staging, manifest) =
            self.stage_import(source, options, transfer, false, quantization)?;
        let staging_path = staging.keep();
        if let Err(error) = std::fs::rename(&staging_path, &destination) {
            if let Err(cleanup) = std::fs::remove_dir_all(&staging_path) {
                tracing::warn!(path = %staging_path.display(), error = %cleanup, "could not delete the import staging folder");
            }
            if destination.exists() {
                return Err(StoreError::AlreadyExists { id: id.to_string() });
            }
            return Err(StoreError::io(&destination, error));
        }
        transfer::sync_dir(&self.root);
        log_imported(&manifest);
        Ok(manifest)
    }

    /// Imports a single file or folder like [`ModelStore::import`], but replaces an installed
    /// model of the same id instead of failing. The files are hashed and copied first, then
    /// `lock` runs and the old folder is swapped for the new one while its guard lives.
    /// Returns the manifest, whether a model was replaced, and the guard, so the caller can
    /// finish its own part of the swap before other users of the store see the new model.
    ///
    /// The swap is two renames (old folder out, new folder in), so a reader that does not
    /// take the same lock can briefly find no model under the id.
    pub fn import_or_replace<G>(
        &self,
        source: &Path,
        options: &ImportOptions,
        lock: impl FnOnce() -> G,
    ) -> Result<(Manifest, bool, G), StoreError> {
        let id = options.id.as_str();
        validate_id(id)?;
        let transfer = if options.link {
            Transfer::Link
        } else {
            Transfer::Copy
        };
        let (staging, manifest) = self.stage_import(source, options, transfer, true, None)?;
        let destination = self.model_dir(id);

        let guard = lock();
        let trash = tempfile::Builder::new()
            .prefix(".remove-")
            .tempdir_in(&self.root)
            .at(&self.root)?;
        let old = trash.path().join("model");
        let replaced = match std::fs::rename(&destination, &old) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => return Err(StoreError::io(&destination, error)),
        };
        let staging_path = staging.keep();
        if let Err(error) = std::fs::rename(&staging_path, &destination) {
            if let Err(cleanup) = std::fs::remove_dir_all(&staging_path) {
                tracing::warn!(path = %staging_path.display(), error = %cleanup, "could not delete the import staging folder");
            }
            if replaced {
                if let Err(restore) = std::fs::rename(&old, &destination) {
                    // Keeping the trash folder keeps the old files for a manual restore.
                    let kept = trash.keep();
                    tracing::error!(id, error = %restore, path = %kept.display(),
                        "could not move the replaced model back after a failed swap");
                }
            }
            return Err(StoreError::io(&destination, error));
        }
        transfer::sync_dir(&self.root);
        let trash_path = trash.path().to_path_buf();
        if let Err(error) = trash.close() {
            tracing::warn!(path = %trash_path.display(), %error, "could not delete the replaced model's files");
        }
        log_imported(&manifest);
        if replaced {
            tracing::info!(id, "replaced model");
        }
        Ok((manifest, replaced, guard))
    }

    /// Hashes and copies (or links) the files of an import into a staging folder inside the
    /// root and writes the manifest there, with `quantization` for a converted model.
    /// `replacing` lets the id belong to an installed model, whose aliases then do not count as
    /// taken.
    fn stage_import(
        &self,
        source: &Path,
        options: &ImportOptions,
        transfer: Transfer,
        replacing: bool,
        quantization: Option<Quantization>,
    ) -> Result<(tempfile::TempDir, Manifest), StoreError> {
        let id = options.id.as_str();
        let aliases = normalize_aliases(id, &options.aliases)?;
        let expected_sha256 = options
            .expected_sha256
            .as_deref()
            .map(normalize_sha256)
            .transpose()?;
        let replaced_id = replacing.then_some(id);
        self.check_names_free(id, &aliases, replaced_id)?;

        tracing::info!(id, source = %source.display(), "importing model");
        let plan = plan_import(source, id, options.task, options.weights.as_deref())?;
        if expected_sha256.is_some() && !plan.single_file {
            return Err(StoreError::InvalidOptions(format!(
                "an expected SHA-256 applies only to single-file imports, and {} is a folder",
                source.display()
            )));
        }

        let staging = tempfile::Builder::new()
            .prefix(".import-")
            .tempdir_in(&self.root)
            .at(&self.root)?;
        let mut total = 0;
        for (file_source, _) in &plan.files {
            total += std::fs::metadata(file_source).at(file_source)?.len();
        }
        let progress = progress_bar(total, format!("importing {id}"), options.progress);

        let mut files = Vec::with_capacity(plan.files.len());
        for (file_source, relative) in &plan.files {
            let file_destination = join_relative(staging.path(), relative);
            if let Some(parent) = file_destination.parent() {
                std::fs::create_dir_all(parent).at(parent)?;
            }
            let (sha256, size) = place_file(file_source, &file_destination, transfer, &progress)?;
            if let Some(expected) = &expected_sha256 {
                if *expected != sha256 {
                    progress.abandon();
                    return Err(StoreError::HashMismatch {
                        file: file_source.display().to_string(),
                        expected: expected.clone(),
                        actual: sha256,
                    });
                }
            }
            files.push(ModelFile {
                path: relative.clone(),
                sha256,
                size,
            });
        }
        progress.finish_and_clear();

        let manifest = Manifest {
            id: id.to_string(),
            task: plan.task,
            engine: plan.engine,
            files,
            license: options.license.clone(),
            source: options.source.clone(),
            aliases,
            description: options.description.clone(),
            extra: serde_json::Map::new(),
            quantization,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes to JSON");
        transfer::write_atomic(&staging.path().join(MANIFEST_FILE), &json)?;
        transfer::sync_dir(staging.path());
        Ok((staging, manifest))
    }

    /// Deletes a model and its files.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        let folder = self.model_dir(id);
        if !folder.is_dir() {
            return Err(StoreError::NotFound { id: id.to_string() });
        }
        tracing::info!(id, "removing model");
        // Moving the folder out first makes the removal atomic for readers: a
        // crash during the deletion leaves only a dot folder that `list` skips.
        let trash = tempfile::Builder::new()
            .prefix(".remove-")
            .tempdir_in(&self.root)
            .at(&self.root)?;
        std::fs::rename(&folder, trash.path().join("model")).at(&folder)?;
        transfer::sync_dir(&self.root);
        let trash_path = trash.path().to_path_buf();
        trash.close().at(trash_path)?;
        tracing::info!(id, "removed model");
        Ok(())
    }

    /// Re-hashes every file of a model and checks the sizes and SHA-256 hashes
    /// against the manifest. The error names the first file that differs.
    pub fn verify(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        let manifest = self
            .get(id)?
            .ok_or_else(|| StoreError::NotFound { id: id.to_string() })?;
        for file in &manifest.files {
            let path = self.file_path(&manifest, file);
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingFile {
                        id: id.to_string(),
                        file: file.path.clone(),
                        path,
                    })
                }
                Err(error) => return Err(StoreError::io(path, error)),
            };
            if metadata.len() != file.size {
                return Err(StoreError::SizeMismatch {
                    file: path.display().to_string(),
                    expected: file.size,
                    actual: metadata.len(),
                });
            }
            let (sha256, _) = hash_file(&path, &indicatif::ProgressBar::hidden())?;
            if sha256 != file.sha256 {
                return Err(StoreError::HashMismatch {
                    file: path.display().to_string(),
                    expected: file.sha256.clone(),
                    actual: sha256,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn partial_dir(&self) -> PathBuf {
        self.root.join(PARTIAL_DIR)
    }

    /// Reads and checks the manifest in the folder of `id`.
    fn load_manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.model_dir(id).join(MANIFEST_FILE);
        let invalid = |reason: String| StoreError::InvalidManifest {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).at(&path)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        if manifest.id != id {
            return Err(invalid(format!(
                "the manifest names model {:?}, but its folder belongs to {id:?}",
                manifest.id
            )));
        }
        for file in &manifest.files {
            validate_relative_path(&file.path).map_err(invalid)?;
            if !is_sha256_hex(&file.sha256) {
                return Err(invalid(format!(
                    "file {} has an invalid sha256 {:?}",
                    file.path, file.sha256
                )));
            }
        }
        Ok(manifest)
    }

    /// Rejects an import whose id or aliases already name another model. The model
    /// `replaced`, when given, is about to be replaced, so its names do not count.
    fn check_names_free(
        &self,
        id: &str,
        aliases: &[String],
        replaced: Option<&str>,
    ) -> Result<(), StoreError> {
        for existing in self.list()? {
            if Some(existing.id.as_str()) == replaced {
                continue;
            }
            if existing.aliases.iter().any(|alias| alias == id) {
                return Err(StoreError::NameInUse {
                    name: "id",
                    value: id.to_string(),
                    owner: existing.id,
                });
            }
            let conflicting_alias = aliases
                .iter()
                .find(|alias| **alias == existing.id || existing.aliases.contains(alias));
            if let Some(alias) = conflicting_alias {
                return Err(StoreError::NameInUse {
                    name: "alias",
                    value: alias.clone(),
                    owner: existing.id,
                });
            }
        }
        Ok(())
    }
}

/// Returns the SHA-256 (lowercase hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let (sha256, _) = hash_file(path, &indicatif::ProgressBar::hidden())?;
    Ok(sha256)
}

fn log_imported(manifest: &Manifest) {
    tracing::info!(
        id = %manifest.id,
        engine = %manifest.engine,
        task = %manifest.task,
        files = manifest.files.len(),
        bytes = manifest.total_size(),
        "imported model"
    );
}

/// Validates aliases with the id rules and drops duplicates and the id itself.
fn normalize_aliases(id: &str, aliases: &[String]) -> Result<Vec<String>, StoreError> {
    let mut seen = BTreeSet::new();
    let mut normalized = Vec::new();
    for alias in aliases {
        validate_id(alias)?;
        if alias != id && seen.insert(alias.as_str()) {
            normalized.push(alias.clone());
        }
    }
    Ok(normalized)
}

/// Lower-cases a hex SHA-256 and checks that it has 64 hex digits.
pub(crate) fn normalize_sha256(value: &str) -> Result<String, StoreError> {
    let trimmed = value.trim();
    if trimmed.len() != 64 || !trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::InvalidOptions(format!(
            "expected SHA-256 {value:?} is not 64 hex digits"
        )));
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Checks for a SHA-256 in the manifest's form: 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
