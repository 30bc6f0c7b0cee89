//! `kiln kv`: read and write KV namespaces in a local data folder, or on a running node
//! through its admin API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use kiln_kv::{Kv, ListOptions, Namespace, PutOptions};
use kiln_server::BulkPair;
use serde_json::Value;

#[derive(clap::Subcommand)]
pub enum KvCommand {
    /// List, create and delete namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Read and write single keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Write many keys at once.
    #[command(subcommand)]
    Bulk(BulkCommand),
}

#[derive(clap::Subcommand)]
pub enum NamespaceCommand {
    /// Print the namespace ids as a JSON array.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Create a namespace (writing a key creates its namespace too).
    Create {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a namespace and every key in it.
    Delete {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Store a value: the VALUE argument, or the contents of --path.
    Put {
        key: String,
        #[arg(required_unless_present = "path")]
        value: Option<String>,
        #[command(flatten)]
        namespace: NamespaceArg,
        /// Read the value from this file instead.
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        path: Option<PathBuf>,
        /// Seconds until the key expires (at least 60).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<f64>,
        /// Unix time in seconds when the key expires (at least 60 s ahead).
        #[arg(long, value_name = "UNIX_SECONDS")]
        expiration: Option<f64>,
        /// JSON metadata stored with the key (at most 1024 bytes).
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Write a value to standard output.
    Get {
        key: String,
        #[command(flatten)]
        namespace: NamespaceArg,
        #[command(flatten)]
        target: Target,
    },
    /// Print every key (with its expiration and metadata) as a JSON array.
    List {
        #[command(flatten)]
        namespace: NamespaceArg,
        /// Only keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        namespace: NamespaceArg,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub enum BulkCommand {
    /// Store the pairs of a JSON file: an array of {key, value, expiration?, expiration_ttl?,
    /// metadata?, base64?}, as Wrangler's bulk put takes it.
    Put {
        file: PathBuf,
        #[command(flatten)]
        namespace: NamespaceArg,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args)]
pub struct NamespaceArg {
    /// The namespace id (the `id` or `preview_id` in wrangler.toml).
    #[arg(long = "namespace-id", value_name = "ID")]
    id: String,
}

/// The location of the namespaces: a running node (`--node` and `--token`, scope kv, or read for
/// reading), else the local data folder with the config's KV backend.
type Target = crate::NodeTarget;

/// An open connection to the namespaces.
enum Store {
    Local(Kv),
    Remote(Remote),
}

type Remote = crate::admin_client::AdminClient;

pub fn run(command: KvCommand) -> anyhow::Result<()> {
    crate::serve::async_runtime()?.block_on(execute(command))
}

async fn execute(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Namespace(NamespaceCommand::List { target }) => {
            let ids = match open(target).await? {
                Store::Local(kv) => kv.list_namespaces().await?,
                Store::Remote(remote) => {
                    let result = remote.json(reqwest::Method::GET, &["namespaces"]).await?;
                    serde_json::from_value(result["namespaces"].clone())?
                }
            };
            println!("{}", serde_json::to_string_pretty(&ids)?);
        }
        KvCommand::Namespace(NamespaceCommand::Create { id, target }) => {
            match open(target).await? {
                Store::Local(kv) => {
                    kv.create_namespace(&id).await?;
                }
                Store::Remote(remote) => {
                    remote
                        .json(reqwest::Method::POST, &["namespaces", &id])
                        .await?;
                }
            }
            eprintln!("created namespace {id}");
        }
        KvCommand::Namespace(NamespaceCommand::Delete { id, target }) => {
            match open(target).await? {
                Store::Local(kv) => kv.delete_namespace(&id).await?,
                Store::Remote(remote) => {
                    remote
                        .json(reqwest::Method::DELETE, &["namespaces", &id])
                        .await?;
                }
            }
            eprintln!("deleted namespace {id}");
        }
        KvCommand::Key(command) => key_command(command).await?,
        KvCommand::Bulk(BulkCommand::Put {
            file,
            namespace,
            target,
        }) => {
            let text = std::fs::read(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let pairs: Vec<BulkPair> = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} must be a JSON array of {{key, value, ...}} objects",
                    file.display()
                )
            })?;
            let written = match open(target).await? {
                Store::Local(kv) => kiln_server::put_all(&kv.namespace(&namespace.id), pairs)
                    .await
                    .map_err(|(written, message)| {
                        anyhow::anyhow!("{message} ({written} pairs before it were written)")
                    })?,
                Store::Remote(remote) => {
                    let path = ["namespaces", namespace.id.as_str(), "bulk"];
                    let request = remote.request(reqwest::Method::PUT, &path).body(text);
                    let result = remote.send_json(request).await?;
                    result["written"].as_u64().unwrap_or(0) as usize
                }
            };
            eprintln!("wrote {written} pairs to namespace {}", namespace.id);
        }
    }
    Ok(())
}

async fn key_command(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Put {
            key,
            value,
            namespace,
            path,
            ttl,
            expiration,
            metadata,
            target,
        } => {
            let value = match (value, path) {
                (_, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("failed to read {}", path.display()))?,
                (Some(value), None) => value.into_bytes(),
                (None, None) => bail!("give the value as an argument or with --path FILE"),
            };
            let metadata: Option<Value> = metadata
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .context("--metadata is not valid JSON")?;
            match open(target).await? {
                Store::Local(kv) => {
                    let options = PutOptions {
                        expiration,
                        expiration_ttl: ttl,
                        metadata,
                    };
                    kv.namespace(&namespace.id)
                        .put(&key, Bytes::from(value), options)
                        .await?;
                }
                Store::Remote(remote) => {
                    let mut query = Vec::new();
                    if let Some(ttl) = ttl {
                        query.push(("expiration_ttl", ttl.to_string()));
                    }
                    if let Some(expiration) = expiration {
                        query.push(("expiration", expiration.to_string()));
                    }
                    if let Some(metadata) = metadata {
                        query.push(("metadata", metadata.to_string()));
                    }
                    let path = ["namespaces", namespace.id.as_str(), "values", key.as_str()];
                    let request = remote
                        .request(reqwest::Method::PUT, &path)
                        .query(&query)
                        .body(value);
                    remote.send_json(request).await?;
                }
            }
        }
        KeyCommand::Get {
            key,
            namespace,
            target,
        } => {
            let value = match open(target).await? {
                Store::Local(kv) => kv
                    .namespace(&namespace.id)
                    .get(&key, None)
                    .await?
                    .map(|entry| entry.value),
                Store::Remote(remote) => {
                    let path = ["namespaces", namespace.id.as_str(), "values", key.as_str()];
                    let response = remote.request(reqwest::Method::GET, &path).send().await?;
                    if response.status() == reqwest::StatusCode::NOT_FOUND {
                        None
                    } else {
                        Some(Remote::check(response).await?.bytes().await?)
                    }
                }
            };
            let Some(value) = value else {
                bail!("key {key:?} not found in namespace {}", namespace.id);
            };
            std::io::stdout().write_all(&value)?;
        }
        KeyCommand::List {
            namespace,
            prefix,
            target,
        } => {
            let store = open(target).await?;
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = match &store {
                    Store::Local(kv) => {
                        list_local(&kv.namespace(&namespace.id), &prefix, cursor).await?
                    }
                    Store::Remote(remote) => {
                        let mut query = Vec::new();
                        if let Some(prefix) = &prefix {
                            query.push(("prefix", prefix.clone()));
                        }
                        if let Some(cursor) = &cursor {
                            query.push(("cursor", cursor.clone()));
                        }
                        let path = ["namespaces", namespace.id.as_str(), "keys"];
                        let request = remote.request(reqwest::Method::GET, &path).query(&query);
                        remote.send_json(request).await?
                    }
                };
                if let Some(page_keys) = page["keys"].as_array() {
                    keys.extend(page_keys.iter().cloned());
                }
                cursor = page["cursor"].as_str().map(str::to_owned);
                if page["list_complete"].as_bool() != Some(false) || cursor.is_none() {
                    break;
                }
            }
            println!("{}", serde_json::to_string_pretty(&keys)?);
        }
        KeyCommand::Delete {
            key,
            namespace,
            target,
        } => match open(target).await? {
            Store::Local(kv) => kv.namespace(&namespace.id).delete(&key).await?,
            Store::Remote(remote) => {
                let path = ["namespaces", namespace.id.as_str(), "values", key.as_str()];
                remote.json(reqwest::Method::DELETE, &path).await?;
            }
        },
    }
    Ok(())
}

async fn list_local(
    namespace: &Namespace,
    prefix: &Option<String>,
    cursor: Option<String>,
) -> anyhow::Result<Value> {
    let options = ListOptions {
        prefix: prefix.clone(),
        limit: None,
        cursor,
    };
    Ok(namespace.list(options).await?.to_json())
}

async fn open(target: Target) -> anyhow::Result<Store> {
    if let Some(node) = target.remote.node {
        let remote = Remote::new(&node, target.remote.token.as_deref(), "kv", &["kv"])?;
        return Ok(Store::Remote(remote));
    }
    let config = target.paths.load_config()?;
    let data_dir = crate::serve::data_dir(target.data_dir, &config)?;
    Ok(Store::Local(
        crate::serve::open_kv(&config, &data_dir).await?,
    ))
}
