//! `kiln models ...`: manage the models folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kiln_models::hub::{self, HubOptions};
use kiln_models::{ImportOptions, Manifest, ModelStore, Task};

use crate::NodePaths;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List installed models.
    List {
        #[command(flatten)]
        paths: NodePaths,
        /// Print the manifests as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import a model file or folder: a .gguf file, a .onnx file, or a Hugging Face style
    /// folder (config.json with model.safetensors, onnx/model.onnx or
    /// onnx/model_quantized.onnx). Files are hashed and copied into the models folder.
    Import {
        #[command(flatten)]
        paths: NodePaths,
        /// The file or folder to import.
        path: PathBuf,
        /// Id of the new model, such as `my-llama` or `@custom/home-value`.
        #[arg(long)]
        id: String,
        /// Task: text-generation, text-embeddings, text-classification,
        /// image-classification or custom. Default: detected from the files.
        #[arg(long)]
        task: Option<Task>,
        /// Weights file to import from a folder, relative to it: model.safetensors or an .onnx
        /// graph such as onnx/model_quantized.onnx. Default for text classifiers:
        /// onnx/model.onnx, else onnx/model_quantized.onnx, else model.safetensors. Default
        /// for other tasks: model.safetensors, else onnx/model.onnx, else
        /// onnx/model_quantized.onnx.
        #[arg(long, value_name = "FILE")]
        weights: Option<String>,
        /// Link the files (hard link, else symbolic link) instead of copying them.
        #[arg(long)]
        link: bool,
        /// Expected SHA-256 of a single-file import, in hex; a mismatch stores nothing.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Licence recorded in the manifest, such as Apache-2.0.
        #[arg(long)]
        license: Option<String>,
        /// Where the files came from, recorded in the manifest.
        #[arg(long)]
        source: Option<String>,
        /// Another id this model answers to (repeatable).
        #[arg(long = "alias", value_name = "ID")]
        aliases: Vec<String>,
        /// One-line description shown in the catalog.
        #[arg(long)]
        description: Option<String>,
    },
    /// Download a model from a Hugging Face compatible hub and import it. Uses HF_ENDPOINT
    /// (default https://huggingface.co) and HF_TOKEN; interrupted downloads resume.
    Pull {
        #[command(flatten)]
        paths: NodePaths,
        /// ORG/REPO, or ORG/REPO:FILE for one file of the repository.
        spec: String,
        /// Id of the new model. Default: the repository name in lower case.
        #[arg(long)]
        id: Option<String>,
        /// Task, as for `import`. Default: detected from the files.
        #[arg(long)]
        task: Option<Task>,
        /// Git revision (branch, tag or commit) to download.
        #[arg(long, default_value = "main")]
        revision: String,
    },
    /// Re-hash an installed model's files and compare them with its manifest.
    Verify {
        #[command(flatten)]
        paths: NodePaths,
        /// Id of the installed model, as `kiln models list` shows it.
        id: String,
    },
    /// Delete an installed model and its files.
    Remove {
        #[command(flatten)]
        paths: NodePaths,
        /// Id of the installed model, as `kiln models list` shows it.
        id: String,
    },
}

fn open_store(paths: &NodePaths) -> anyhow::Result<ModelStore> {
    let config = paths.load_config()?;
    let dir = paths.models_dir(&config)?;
    ModelStore::open(&dir)
        .with_context(|| format!("failed to open the models folder {}", dir.display()))
}

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List { paths, json } => list(&open_store(&paths)?, json),
        ModelsCommand::Import {
            paths,
            path,
            id,
            task,
            weights,
            link,
            sha256,
            license,
            source,
            aliases,
            description,
        } => {
            let store = open_store(&paths)?;
            let options = ImportOptions {
                id,
                task,
                weights,
                link,
                license,
                source: source.or_else(|| Some(format!("file:{}", path.display()))),
                aliases,
                description,
                expected_sha256: sha256,
                progress: true,
            };
            let manifest = store.import(&path, &options)?;
            print_installed(&manifest);
            Ok(())
        }
        ModelsCommand::Pull {
            paths,
            spec,
            id,
            task,
            revision,
        } => {
            let store = open_store(&paths)?;
            let options = HubOptions {
                revision,
                progress: true,
                ..HubOptions::from_env()
            };
            let manifest = hub::pull(&store, &spec, id.as_deref(), task, &options)?;
            print_installed(&manifest);
            Ok(())
        }
        ModelsCommand::Verify { paths, id } => {
            open_store(&paths)?.verify(&id)?;
            println!("{id}: every file matches its manifest");
            Ok(())
        }
        ModelsCommand::Remove { paths, id } => {
            open_store(&paths)?.remove(&id)?;
            println!("removed {id}");
            Ok(())
        }
    }
}

fn print_installed(manifest: &Manifest) {
    let bytes: u64 = manifest.files.iter().map(|file| file.size).sum();
    println!(
        "installed {} ({}, {} files, {})",
        manifest.id,
        manifest.task.display_name(),
        manifest.files.len(),
        human_bytes(bytes)
    );
}

fn list(store: &ModelStore, json: bool) -> anyhow::Result<()> {
    let manifests = store.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    if manifests.is_empty() {
        println!(
            "no models installed in {}; run scripts/install-models.sh or `kiln models import`",
            store.root().display()
        );
        return Ok(());
    }
    println!(
        "{:<32} {:<22} {:<12} {:>10}  ALIASES",
        "ID", "TASK", "ENGINE", "SIZE"
    );
    for manifest in manifests {
        let bytes: u64 = manifest.files.iter().map(|file| file.size).sum();
        let engine = serde_json::to_value(manifest.engine)?;
        println!(
            "{:<32} {:<22} {:<12} {:>10}  {}",
            manifest.id,
            manifest.task.display_name(),
            engine.as_str().unwrap_or(""),
            human_bytes(bytes),
            manifest.aliases.join(", ")
        );
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
