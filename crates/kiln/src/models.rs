//! `kiln models ...`: manage the models folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kiln_engine_llama::quantize::QuantizationType;
use kiln_models::hub::{self, HubOptions};
use kiln_models::{ImportOptions, Manifest, ModelStore, Task};

use crate::admin_client::AdminClient;
use crate::{NodeOptions, NodePaths};

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
        /// Convert a .gguf file to this quantization type (q8_0 or q4_0) with llama.cpp before
        /// storing it, on the node's llama.threads CPU threads. The import then prints how
        /// closely the converted model's next-token distributions match the original's and
        /// records that report in the manifest. --sha256 then checks the source file.
        #[arg(long, value_name = "TYPE")]
        quantize: Option<QuantizationType>,
    },
    /// Upload a .onnx or .gguf file to a running node, which installs it as `import` does. An
    /// installed model of the same id is replaced, and requests in flight finish on the old one.
    Upload {
        /// The model file.
        path: PathBuf,
        /// Id of the new model, such as `@custom/home-value`.
        #[arg(long)]
        id: String,
        /// Task, as for `import`. Default: detected from the file.
        #[arg(long)]
        task: Option<Task>,
        /// Expected SHA-256 of the file, in hex; on a mismatch the node stores nothing.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// URL of the node, e.g. http://127.0.0.1:8787.
        #[arg(long, env = "KILN_NODE", value_name = "URL")]
        node: String,
        /// Admin API token with scope models.
        #[arg(long, env = "KILN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
        token: String,
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
    /// Delete an installed model and its files: from a running node with `--node` and
    /// `--token` (the node also unloads it), else from the local models folder.
    Remove {
        #[command(flatten)]
        paths: NodePaths,
        /// Id of the installed model, as `kiln models list` shows it.
        id: String,
        /// The node to remove it from, with a token of scope models; without --node, the
        /// local models folder.
        #[command(flatten)]
        remote: NodeOptions,
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
            quantize,
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
            let manifest = match quantize {
                Some(kind) => {
                    let threads = llama_threads(&paths.load_config()?);
                    crate::quantize::import_quantized(&store, &path, kind, &options, threads)?
                }
                None => store.import(&path, &options)?,
            };
            print_installed(&manifest);
            Ok(())
        }
        ModelsCommand::Upload {
            path,
            id,
            task,
            sha256,
            node,
            token,
        } => upload(&path, &id, task, sha256, &node, &token),
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
        ModelsCommand::Remove {
            id,
            remote:
                NodeOptions {
                    node: Some(node),
                    token,
                },
            ..
        } => {
            let Some(token) = token else {
                anyhow::bail!(
                    "--node needs --token (or KILN_TOKEN): create one on the node with \
                     `kiln tokens create --scope models`"
                );
            };
            remove_remote(&id, &node, &token)
        }
        ModelsCommand::Remove {
            paths,
            id,
            remote: NodeOptions { node: None, .. },
        } => {
            open_store(&paths)?.remove(&id)?;
            println!("removed {id}");
            Ok(())
        }
    }
}

/// Returns the node's llama.cpp thread count: `llama.threads`, where 0 means every CPU core.
fn llama_threads(config: &kiln_config::NodeConfig) -> u32 {
    match config.llama.threads {
        0 => std::thread::available_parallelism().map_or(2, |cores| cores.get() as u32),
        threads => threads,
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
    for manifest in &manifests {
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
    print_conversions(&manifests);
    Ok(())
}

/// Prints the agreement report of every model that `import --quantize` converted, below the table.
fn print_conversions(manifests: &[Manifest]) {
    let converted: Vec<_> = manifests
        .iter()
        .filter_map(|manifest| Some((&manifest.id, manifest.quantization.as_ref()?)))
        .collect();
    if converted.is_empty() {
        return;
    }
    println!();
    for (id, quantization) in converted {
        println!(
            "{id}: converted from {} to {}, top-1 agreement {:.3}, mean KL {:.4} nats",
            quantization.from,
            quantization.kind.to_uppercase(),
            quantization.top1_agreement,
            quantization.mean_kl
        );
    }
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

/// Sends the file to the node's admin API with a progress bar, and prints what it installed.
fn upload(
    path: &std::path::Path,
    id: &str,
    task: Option<Task>,
    sha256: Option<String>,
    node: &str,
    token: &str,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let size = file.metadata()?.len();
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .context("the model file has no UTF-8 file name")?;
    let client = AdminClient::new(node, Some(token), "models", &["models"])?;
    let url = model_url(&client, id);
    let mut query = vec![("filename", name.to_owned())];
    if let Some(task) = task {
        query.push(("task", task.to_string()));
    }
    if let Some(sha256) = sha256 {
        query.push(("sha256", sha256));
    }

    let bar = indicatif::ProgressBar::new(size).with_style(
        indicatif::ProgressStyle::with_template(
            "uploading {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid progress template"),
    );
    bar.set_message(name.to_owned());
    let body = reqwest::blocking::Body::sized(bar.wrap_read(file), size);
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()?
        .put(url)
        .query(&query)
        .bearer_auth(token)
        .body(body)
        .send()
        .context("the request to the node failed")?;
    bar.finish_and_clear();
    let answer = admin_result(response)?;
    let manifest: Manifest = serde_json::from_value(answer["result"].clone())
        .context("the node sent an invalid manifest")?;
    print_installed(&manifest);
    Ok(())
}

/// Sends `DELETE /admin/v1/models/{id}` to a running node.
fn remove_remote(id: &str, node: &str, token: &str) -> anyhow::Result<()> {
    let client = AdminClient::new(node, Some(token), "models", &["models"])?;
    let response = reqwest::blocking::Client::new()
        .delete(model_url(&client, id))
        .bearer_auth(client.token())
        .send()
        .context("the request to the node failed")?;
    admin_result(response)?;
    println!("removed {id} from {node}");
    Ok(())
}

/// Returns the admin API URL of model `id`. The `/` of a namespaced id such as
/// `@custom/home-value` stays a path separator, because the node's route expects one.
fn model_url(client: &AdminClient, id: &str) -> reqwest::Url {
    client.url(&id.split('/').collect::<Vec<_>>())
}

/// Returns the JSON body of a successful admin API response, or an error with the node's
/// status and message.
fn admin_result(response: reqwest::blocking::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let answer: serde_json::Value = response.json().unwrap_or_default();
    if !status.is_success() {
        return Err(crate::admin_client::failure(status, &answer));
    }
    Ok(answer)
}
