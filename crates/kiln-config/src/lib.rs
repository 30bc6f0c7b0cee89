//! The node configuration: `kiln.toml`, environment variables and their defaults.
//!
//! Precedence, highest first: command-line flags (applied by the binary), the environment
//! (`KILN_MODELS_DIR`, `KILN_DATA_DIR`), the config file, then the defaults below. Every field is
//! documented in `docs/kiln.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod byte_size;
mod cron;
mod dev_vars;
mod wrangler;

pub use byte_size::ByteSize;
pub use cron::CronTrigger;
pub use dev_vars::{load_dev_vars, parse_dev_vars, DevVarsError, DEV_VARS_FILE};
pub use wrangler::{
    AiBindingConfig, KvNamespaceConfig, RouteConfig, TriggersConfig, WorkerConfig, WorkerLimits,
    MAX_CPU_MS, MAX_WALL_MS, WORKER_CONFIG_FILES,
};

/// Address a node listens on when neither the config nor `--listen` sets one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "no home folder for Kiln's files: set KILN_HOME (or HOME) or pass --models-dir and --data-dir"
    )]
    NoHome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// The whole node configuration, as read from `kiln.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Socket address of the HTTP server.
    pub listen: SocketAddr,
    /// Folder of installed models. Default: `$KILN_HOME/models`.
    pub models_dir: Option<PathBuf>,
    /// Folder of node state (KV data, workers, tokens). Default: `$KILN_HOME/data`.
    pub data_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub limits: Limits,
    pub llama: LlamaSettings,
    pub onnx: OnnxSettings,
    pub batching: BatchingSettings,
    /// Extra model ids: alias → installed model id. These win over the built-in table that maps
    /// the hosted catalog's ids to the installed model of the same task.
    pub aliases: BTreeMap<String, String>,
    /// The installed model that the hosted catalog's ids of a task resolve to, by task
    /// (`text-generation = "smollm2-135m-instruct"`). Without an entry, the first installed model
    /// of the task in id order is used.
    pub default_models: BTreeMap<String, String>,
    /// Models loaded when the node starts instead of on first use.
    pub preload: Vec<String>,
    pub models: ModelSettings,
    pub workers: WorkerSettings,
    pub kv: KvSettings,
    pub deploy: DeploySettings,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address is valid"),
            models_dir: None,
            data_dir: None,
            log_format: LogFormat::default(),
            limits: Limits::default(),
            llama: LlamaSettings::default(),
            onnx: OnnxSettings::default(),
            batching: BatchingSettings::default(),
            aliases: BTreeMap::new(),
            default_models: BTreeMap::new(),
            preload: Vec::new(),
            models: ModelSettings::default(),
            workers: WorkerSettings::default(),
            kv: KvSettings::default(),
            deploy: DeploySettings::default(),
        }
    }
}

/// Settings of loaded models: the memory budget they share.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Total size of the files of the models kept loaded at once. Loading a model that would
    /// exceed it first unloads the least recently used idle models. `None`: no limit.
    pub memory_budget: Option<ByteSize>,
}

/// Request limits of the HTTP front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum request body, in bytes. Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Maximum `max_tokens` a request may ask for.
    pub max_generated_tokens: u32,
    /// Seconds a client may take to send a request body; slower ones get 408.
    pub body_timeout_seconds: u64,
    /// Seconds that in-flight requests get to finish after SIGTERM or SIGINT.
    pub shutdown_grace_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_generated_tokens: 4096,
            body_timeout_seconds: 30,
            shutdown_grace_seconds: 30,
        }
    }
}

/// Settings of the JavaScript workers that the node runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// `request.cf.colo`: the IATA-style code that names this node's location.
    pub colo: String,
    /// Request header whose value becomes `request.cf.country`, set by a trusted proxy in front
    /// of the node (for example `cf-ipcountry`). Unset: `request.cf.country` is absent.
    pub country_header: Option<String>,
    /// JavaScript CPU time per request, in milliseconds, for workers whose `[limits]` set none.
    pub cpu_ms: u64,
    /// Time from a request's arrival to its response head, in milliseconds, for workers whose
    /// `[limits]` set none.
    pub wall_ms: u64,
    /// Memory of one isolate's JavaScript heap, in MiB.
    pub memory_mib: u64,
    /// Outbound `fetch()` and `env.AI.run` calls per request, for workers whose `[limits]` set
    /// none.
    pub subrequests: u32,
    /// Hosts that workers may `fetch()` from: `api.example.com`, `*.example.com` (subdomains
    /// only), `*` (every host), IP literals, each with an optional `:PORT`. Empty: none.
    /// These hosts must resolve to public addresses.
    pub outbound_hosts: Vec<String>,
    /// Hosts, in the same syntax, that workers may `fetch()` from even when they resolve to
    /// private addresses: loopback, RFC 1918, link-local, unique-local IPv6, unspecified, shared
    /// (RFC 6598), multicast and the cloud metadata address 169.254.169.254. Listing a host here
    /// also allows it.
    pub outbound_private_hosts: Vec<String>,
    /// Maximum number of isolates per worker. Unset: the number of CPU cores, at most 4.
    pub isolates: Option<usize>,
}

impl WorkerSettings {
    /// Returns the pool size of each worker: `isolates`, else the number of cores up to 4.
    pub fn max_isolates(&self) -> usize {
        self.isolates.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |cores| cores.get().min(4))
        })
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            colo: "KLN".into(),
            country_header: None,
            cpu_ms: 30_000,
            wall_ms: 300_000,
            memory_mib: 128,
            isolates: None,
            subrequests: 50,
            outbound_hosts: Vec::new(),
            outbound_private_hosts: Vec::new(),
        }
    }
}

/// Settings of deployed workers: their hosts and the key of their secrets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// A deployed worker `NAME` serves the host `NAME.<domain>`.
    pub domain: String,
    /// Hosts, besides IP addresses and `domain` itself, on which the node serves its own API
    /// (`/ai/run`, `/v1/…`, `/admin/v1/…`). A request for any other host that no worker route
    /// matches gets 404.
    pub api_hosts: Vec<String>,
    /// File that contains the key that encrypts worker secrets: 64 hex digits (32 bytes). Default:
    /// the `KILN_SECRETS_KEY` environment variable, in the same form.
    pub secrets_key_file: Option<PathBuf>,
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            api_hosts: Vec::new(),
            secrets_key_file: None,
        }
    }
}

/// The storage of KV namespaces.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KvSettings {
    pub backend: KvBackend,
    /// Redis server of the `redis` backend, as `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub redis_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvBackend {
    /// A database file (`kv.redb`) in the node's data folder.
    #[default]
    Embedded,
    /// A Redis server, shared by every node that names it.
    Redis,
}

/// Settings of every GGUF model that llama.cpp runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaSettings {
    /// CPU threads per model. 0 means the number of CPU cores.
    pub threads: u32,
    /// Context window of each sequence, in tokens; capped at the model's trained context.
    pub context_tokens: u32,
    /// Requests decoded together in one batch.
    pub parallel_sequences: u32,
    /// Maximum tokens in one decode call; long prompts are prefilled in chunks of this size.
    pub batch_tokens: u32,
    /// Requests that may wait for a free sequence; more get 429.
    pub queue_capacity: usize,
    /// llama.cpp's flash attention, for faster decoding. Off, llama.cpp's plain attention runs.
    pub flash_attention: bool,
}

impl Default for LlamaSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            context_tokens: 2048,
            parallel_sequences: 4,
            batch_tokens: 512,
            queue_capacity: 64,
            flash_attention: true,
        }
    }
}

/// Settings of ONNX Runtime, which runs every ONNX model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxSettings {
    /// ONNX Runtime's shared library. Default: `ORT_DYLIB_PATH`, else
    /// `$KILN_HOME/lib/libonnxruntime.so` (where scripts/install-onnxruntime.sh puts it).
    pub runtime_library: Option<PathBuf>,
    /// Threads of one forward pass. 0 lets ONNX Runtime use one per physical core.
    pub threads: u32,
}

impl OnnxSettings {
    /// The library path after the config, `ORT_DYLIB_PATH` and the default location.
    pub fn resolved_runtime_library(&self) -> Result<PathBuf, ConfigError> {
        if let Some(path) = &self.runtime_library {
            return Ok(path.clone());
        }
        if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|value| !value.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        Ok(kiln_home()?.join("lib").join("libonnxruntime.so"))
    }
}

/// Dynamic batching of embeddings, classification and custom models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSettings {
    /// Maximum texts or images in one forward pass.
    pub max_batch_size: usize,
    /// Maximum tokens (before padding) in one forward pass of a text model.
    pub max_batch_tokens: usize,
    /// Time, in milliseconds, that a model waits for more requests before it runs a batch. With
    /// 0 a batch starts as soon as the model is free and takes every request queued by then.
    pub max_wait_ms: u64,
    /// Requests that may wait per model; more get 429 with Retry-After.
    pub queue_capacity: usize,
}

impl Default for BatchingSettings {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_wait_ms: 0,
            queue_capacity: 256,
        }
    }
}

impl NodeConfig {
    /// Reads a config file. Unknown keys are errors, so a typo never passes silently.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|err| err.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let llama = &self.llama;
        let checks = [
            (
                llama.context_tokens >= 16,
                "llama.context_tokens must be at least 16",
            ),
            (
                llama.parallel_sequences >= 1,
                "llama.parallel_sequences must be at least 1",
            ),
            (
                llama.batch_tokens >= 1,
                "llama.batch_tokens must be at least 1",
            ),
            // A queue of 0 would be a rendezvous channel, which accepts a request only while
            // the model thread happens to be waiting, so admissions would depend on timing.
            (
                llama.queue_capacity >= 1,
                "llama.queue_capacity must be at least 1",
            ),
            (
                self.batching.max_batch_size >= 1,
                "batching.max_batch_size must be at least 1",
            ),
            (
                self.batching.max_batch_tokens >= 1,
                "batching.max_batch_tokens must be at least 1",
            ),
            (
                self.batching.queue_capacity >= 1,
                "batching.queue_capacity must be at least 1",
            ),
            (
                self.limits.max_body_bytes >= 1024,
                "limits.max_body_bytes must be at least 1024",
            ),
            (
                self.workers.cpu_ms >= 1,
                "workers.cpu_ms must be at least 1",
            ),
            (
                self.workers.memory_mib >= 8,
                "workers.memory_mib must be at least 8",
            ),
            (
                self.workers.wall_ms >= 1,
                "workers.wall_ms must be at least 1",
            ),
            (
                self.workers.subrequests >= 1,
                "workers.subrequests must be at least 1",
            ),
            (
                self.workers
                    .isolates
                    .is_none_or(|isolates| (1..=64).contains(&isolates)),
                "workers.isolates must be from 1 to 64",
            ),
            (
                self.models.memory_budget != Some(ByteSize(0)),
                "models.memory_budget must be more than 0; leave it out for no limit",
            ),
            (
                self.limits.max_generated_tokens >= 1,
                "limits.max_generated_tokens must be at least 1",
            ),
            (
                self.kv.backend != KvBackend::Redis || self.kv.redis_url.is_some(),
                "kv.backend = \"redis\" needs kv.redis_url, e.g. \"redis://127.0.0.1:6379/0\"",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_string()),
            None => Ok(()),
        }
    }

    /// Returns the models folder: `KILN_MODELS_DIR`, else the config's value, else
    /// `$KILN_HOME/models`.
    pub fn resolved_models_dir(&self) -> Result<PathBuf, ConfigError> {
        dir_from(&self.models_dir, "KILN_MODELS_DIR", "models")
    }

    /// Returns the data folder: `KILN_DATA_DIR`, else the config's value, else `$KILN_HOME/data`.
    pub fn resolved_data_dir(&self) -> Result<PathBuf, ConfigError> {
        dir_from(&self.data_dir, "KILN_DATA_DIR", "data")
    }
}

// The environment variable wins over the file, as documented at the top of this module.
fn dir_from(
    configured: &Option<PathBuf>,
    variable: &str,
    child: &str,
) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os(variable).filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = configured {
        return Ok(dir.clone());
    }
    Ok(kiln_home()?.join(child))
}

/// `$KILN_HOME`, else `~/.local/share/kiln`.
pub fn kiln_home() -> Result<PathBuf, ConfigError> {
    if let Some(home) = std::env::var_os("KILN_HOME").filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|value| !value.is_empty())
        .ok_or(ConfigError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = NodeConfig::parse("").expect("empty config parses");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.llama.parallel_sequences, 4);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = NodeConfig::parse("listne = \"0.0.0.0:1\"").unwrap_err();
        assert!(error.contains("listne"), "{error}");
    }

    #[test]
    fn nested_values_are_read() {
        let text = r#"
            listen = "127.0.0.1:9000"
            [llama]
            threads = 3
            [aliases]
            "@cf/meta/llama-3-8b-instruct" = "my-llama"
        "#;
        let config = NodeConfig::parse(text).expect("config parses");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.llama.threads, 3);
        assert_eq!(config.aliases["@cf/meta/llama-3-8b-instruct"], "my-llama");
    }

    #[test]
    fn out_of_range_value_is_rejected() {
        let error = NodeConfig::parse("[llama]\nparallel_sequences = 0").unwrap_err();
        assert!(error.contains("llama.parallel_sequences"), "{error}");
    }

    #[test]
    fn memory_budget_takes_bytes_or_units() {
        let config = NodeConfig::parse("[models]\nmemory_budget = \"2GiB\"").expect("parses");
        assert_eq!(config.models.memory_budget, Some(ByteSize(2 << 30)));
        let config = NodeConfig::parse("[models]\nmemory_budget = 1000").expect("parses");
        assert_eq!(config.models.memory_budget, Some(ByteSize(1000)));
        let config = NodeConfig::parse("").expect("parses");
        assert_eq!(config.models.memory_budget, None);
        let error = NodeConfig::parse("[models]\nmemory_budget = \"2 gigs\"").unwrap_err();
        assert!(error.contains("invalid size"), "{error}");
    }

    #[test]
    fn example_config_parses() {
        let example = include_str!("../../../docs/kiln.toml");
        let config = NodeConfig::parse(example).expect("docs/kiln.toml parses");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }
}
