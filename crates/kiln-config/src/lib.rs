//! The node configuration: `kiln.toml`, environment variables and their defaults.
//!
//! Precedence, highest first: command-line flags (applied by the binary), the environment
//! (`KILN_MODELS_DIR`, `KILN_DATA_DIR`), the config file, then the defaults below. Every field is
//! documented in `docs/kiln.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// Extra model ids: alias → installed model id. These win over the built-in table that maps
    /// the hosted catalog's ids to the installed model of the same task.
    pub aliases: BTreeMap<String, String>,
    /// The installed model that the hosted catalog's ids of a task resolve to, by task
    /// (`text-generation = "smollm2-135m-instruct"`). Without an entry, the first installed model
    /// of the task in id order is used.
    pub default_models: BTreeMap<String, String>,
    /// Models loaded when the node starts instead of on first use.
    pub preload: Vec<String>,
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
            aliases: BTreeMap::new(),
            default_models: BTreeMap::new(),
            preload: Vec::new(),
        }
    }
}

/// Request limits of the HTTP front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum request body, in bytes. Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Maximum `max_tokens` a request may ask for.
    pub max_generated_tokens: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_generated_tokens: 4096,
        }
    }
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
}

impl Default for LlamaSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            context_tokens: 2048,
            parallel_sequences: 4,
            batch_tokens: 512,
            queue_capacity: 64,
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
            (
                self.limits.max_body_bytes >= 1024,
                "limits.max_body_bytes must be at least 1024",
            ),
            (
                self.limits.max_generated_tokens >= 1,
                "limits.max_generated_tokens must be at least 1",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_string()),
            None => Ok(()),
        }
    }

    /// The models folder: the config's value, else `KILN_MODELS_DIR`, else `$KILN_HOME/models`.
    pub fn resolved_models_dir(&self) -> Result<PathBuf, ConfigError> {
        dir_from(&self.models_dir, "KILN_MODELS_DIR", "models")
    }

    /// The data folder: the config's value, else `KILN_DATA_DIR`, else `$KILN_HOME/data`.
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
    fn example_config_parses() {
        let example = include_str!("../../../docs/kiln.toml");
        let config = NodeConfig::parse(example).expect("docs/kiln.toml parses");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }
}
