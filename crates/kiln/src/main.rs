//! `kiln`: run a node that serves the Workers AI REST API on local models, and manage its
//! models.

mod admin_client;
mod bench;
mod deploy;
mod dev;
mod kv;
mod logging;
mod models;
mod quantize;
mod serve;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Self-hosted serverless AI: the Workers AI REST API on models that run in this process",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: serve the REST API on the installed models.
    Serve(serve::ServeArgs),
    /// Serve the worker in a folder on every path, reloading it when its files change.
    Dev(dev::DevArgs),
    /// List, import, pull, verify and remove installed models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Read and write KV namespaces, locally or on a running node.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Print requests, tokens, images and compute time per worker and model, from a running
    /// node or a stopped node's data folder.
    Usage(usage::UsageArgs),
    /// Create admin API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Upload a worker folder to a running node as the worker's new version.
    Deploy(deploy::DeployArgs),
    /// List a deployed worker's versions.
    #[command(subcommand)]
    Versions(deploy::VersionsCommand),
    /// Put an earlier version of a deployed worker back in service.
    Rollback(deploy::RollbackArgs),
    /// Show a deployed worker's requests and console output live.
    Tail(deploy::TailArgs),
    /// Store, list and remove a deployed worker's secrets.
    #[command(subcommand)]
    Secret(deploy::SecretCommand),
    /// Measure model speed.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token and print it on the last line. Only its hash is stored, in the data
    /// folder's tokens.json.
    Create {
        /// The token's scope: deploy, models, kv or read.
        #[arg(long, value_parser = kiln_server::Scope::parse)]
        scope: kiln_server::Scope,
        /// The node's data folder. Default: KILN_DATA_DIR, else the config's data_dir, else
        /// $KILN_HOME/data.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        paths: NodePaths,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode tokens/s of a GGUF model, comparable with llama.cpp's llama-bench.
    Generate(bench::BenchArgs),
}

/// `--node` and `--token`: a running node and a token of its admin API.
#[derive(clap::Args)]
pub struct NodeOptions {
    /// URL of a running node, e.g. http://127.0.0.1:8787.
    #[arg(long, env = "KILN_NODE", value_name = "URL")]
    pub node: Option<String>,
    /// Admin API token of the node, with the scope the command needs (from `kiln tokens create`).
    #[arg(
        long,
        env = "KILN_TOKEN",
        value_name = "TOKEN",
        requires = "node",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// Options of the commands that work on a running node through its admin API (`--node` and
/// `--token`) or on a stopped node's data folder.
#[derive(clap::Args)]
pub struct NodeTarget {
    #[command(flatten)]
    remote: NodeOptions,
    /// Data folder of a stopped node. Default: KILN_DATA_DIR, else the config's data_dir, else
    /// $KILN_HOME/data.
    #[arg(long, value_name = "DIR", conflicts_with = "node")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    paths: NodePaths,
}

/// Options that locate the node's configuration and model folder, shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct NodePaths {
    /// Node config file (kiln.toml). Default: $KILN_HOME/kiln.toml when it exists.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Folder of installed models. Default: KILN_MODELS_DIR, else the config's models_dir,
    /// else $KILN_HOME/models ($KILN_HOME defaults to ~/.local/share/kiln).
    #[arg(long, value_name = "DIR", global = true)]
    pub models_dir: Option<PathBuf>,
}

impl NodePaths {
    /// Reads the config file (when there is one) and applies the folder flags over it.
    pub fn load_config(&self) -> anyhow::Result<kiln_config::NodeConfig> {
        let path = match &self.config {
            Some(path) => Some(path.clone()),
            None => kiln_config::kiln_home()
                .ok()
                .map(|home| home.join("kiln.toml"))
                .filter(|path| path.is_file()),
        };
        let mut config = match path {
            Some(path) => kiln_config::NodeConfig::load(&path)?,
            None => kiln_config::NodeConfig::default(),
        };
        if let Some(dir) = &self.models_dir {
            config.models_dir = Some(dir.clone());
        }
        Ok(config)
    }

    /// The models folder after flags, environment and config file.
    pub fn models_dir(&self, config: &kiln_config::NodeConfig) -> anyhow::Result<PathBuf> {
        match &self.models_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(config.resolved_models_dir()?),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Models(command) => {
            logging::init_cli();
            models::run(command)
        }
        Command::Kv(command) => kv::run(command),
        Command::Usage(args) => usage::run(args),
        Command::Tokens(TokensCommand::Create {
            scope,
            data_dir,
            paths,
        }) => create_token(scope, data_dir, &paths),
        Command::Bench(BenchCommand::Generate(args)) => bench::run(args),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Versions(command) => deploy::versions(command),
        Command::Rollback(args) => deploy::rollback(args),
        Command::Tail(args) => deploy::tail(args),
        Command::Secret(command) => deploy::secret(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn create_token(
    scope: kiln_server::Scope,
    data_dir: Option<PathBuf>,
    paths: &NodePaths,
) -> anyhow::Result<()> {
    let config = paths.load_config()?;
    let data_dir = serve::data_dir(data_dir, &config)?;
    let token = kiln_server::TokenStore::new(&data_dir).create(scope)?;
    eprintln!(
        "created a {} token; it is shown only once, store it now:",
        scope.as_str()
    );
    println!("{token}");
    Ok(())
}

/// Joins an error and its causes with ": ", leaving out a cause whose text the message already
/// contains (many errors repeat their source in their own message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
