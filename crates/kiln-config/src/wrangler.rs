//! A worker folder's configuration: `wrangler.toml` as Wrangler reads it, or `kiln.toml` with
//! the same keys. Keys that Kiln does not use yet (routes, observability, placement, …) are
//! accepted and ignored, so existing files load unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, CronTrigger};

/// File names searched in a worker folder, in order.
pub const WORKER_CONFIG_FILES: [&str; 2] = ["wrangler.toml", "kiln.toml"];

/// The keys of a worker's configuration that Kiln reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WorkerConfig {
    /// Worker name: letters, digits and dashes.
    pub name: String,
    /// Entry module, relative to the worker folder.
    pub main: PathBuf,
    #[serde(default)]
    pub compatibility_date: Option<String>,
    #[serde(default)]
    pub compatibility_flags: Vec<String>,
    /// `[ai]`: the Workers AI binding.
    #[serde(default)]
    pub ai: Option<AiBindingConfig>,
    /// `[vars]`: plain values on `env`, strings or any JSON value.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub limits: WorkerLimits,
    /// `[[kv_namespaces]]`: KV namespaces on `env`.
    #[serde(default)]
    pub kv_namespaces: Vec<KvNamespaceConfig>,
    /// `[triggers]`: events that start the worker other than HTTP requests.
    #[serde(default)]
    pub triggers: TriggersConfig,
    /// `route`: one route of a deployed worker.
    #[serde(default)]
    pub route: Option<RouteConfig>,
    /// `routes`: the hosts and paths that a deployed worker serves, besides
    /// `NAME.<node domain>`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One entry of `routes`: a pattern such as `example.com/api/*`, or a table with `pattern`
/// (and `zone_name` or `custom_domain`, which Kiln reads but does not need).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RouteConfig {
    Pattern(String),
    Table {
        pattern: String,
        #[serde(default)]
        zone_name: Option<String>,
        #[serde(default)]
        custom_domain: Option<bool>,
    },
}

impl RouteConfig {
    pub fn pattern(&self) -> &str {
        match self {
            RouteConfig::Pattern(pattern) | RouteConfig::Table { pattern, .. } => pattern,
        }
    }
}

/// `[triggers]` of a worker.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct TriggersConfig {
    /// Cron expressions (UTC) at which the worker's `scheduled` handler runs.
    #[serde(default)]
    pub crons: Vec<String>,
}

/// One `[[kv_namespaces]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct KvNamespaceConfig {
    /// Name of the `env` property.
    pub binding: String,
    /// Namespace id used by deployed workers.
    pub id: String,
    /// Namespace id used by `kiln dev`, when set.
    #[serde(default)]
    pub preview_id: Option<String>,
}

impl KvNamespaceConfig {
    /// Returns the namespace id for `kiln dev` (`preview_id` when set) or for a deployed worker.
    pub fn namespace_id(&self, preview: bool) -> &str {
        match (&self.preview_id, preview) {
            (Some(preview_id), true) => preview_id,
            _ => &self.id,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AiBindingConfig {
    /// Name of the `env` property, usually `AI`.
    pub binding: String,
}

/// `[limits]` of a worker.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct WorkerLimits {
    /// CPU time per request, in milliseconds. Default: the node's (30 000).
    pub cpu_ms: Option<u64>,
    /// Time from a request's arrival to its response head, in milliseconds (a Kiln key that
    /// Wrangler ignores). Default: the node's (300 000).
    pub wall_ms: Option<u64>,
    /// Outbound `fetch()` and `env.AI.run` calls per request. Default: the node's
    /// `[workers] subrequests` (50).
    pub subrequests: Option<u32>,
}

/// Largest `[limits] cpu_ms` a worker may set: five minutes, the hosted platform's maximum.
pub const MAX_CPU_MS: u64 = 300_000;

/// Largest `[limits] wall_ms` a worker may set: fifteen minutes.
pub const MAX_WALL_MS: u64 = 900_000;

/// Rejects a limit of 0 or over `max`.
fn check_range(key: &str, value: Option<u64>, max: u64) -> Result<(), String> {
    match value {
        Some(0) => Err(format!("{key} must be at least 1")),
        Some(value) if value > max => {
            Err(format!("{key} is {value}; the largest allowed is {max}"))
        }
        _ => Ok(()),
    }
}

impl WorkerConfig {
    /// Reads the configuration of the worker in `dir`: `wrangler.toml`, else `kiln.toml`.
    pub fn load_dir(dir: &Path) -> Result<(PathBuf, Self), ConfigError> {
        let path = WORKER_CONFIG_FILES
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| ConfigError::Invalid {
                path: dir.to_path_buf(),
                message: format!(
                    "no worker configuration found: create {} with `name` and `main`",
                    WORKER_CONFIG_FILES.join(" or ")
                ),
            })?;
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.clone(),
            message,
        })?;
        Ok((path, config))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: Self = toml::from_str(text).map_err(|err| err.to_string())?;
        // `main = "./src/index.ts"` names the same module as `main = "src/index.ts"`.
        config.main = config
            .main
            .components()
            .filter(|component| !matches!(component, std::path::Component::CurDir))
            .collect();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "invalid worker name {:?}: use letters, digits and dashes",
                self.name
            ));
        }
        if self.main.as_os_str().is_empty() || self.main.is_absolute() {
            return Err(format!(
                "invalid main {:?}: give the entry module's path relative to the worker folder",
                self.main
            ));
        }
        let mut bindings = std::collections::BTreeSet::new();
        for namespace in &self.kv_namespaces {
            if namespace.binding.is_empty() || namespace.id.is_empty() {
                return Err("each [[kv_namespaces]] entry needs a `binding` and an `id`".into());
            }
            let ai = self.ai.as_ref().map(|ai| ai.binding.as_str());
            let clashes = ai == Some(namespace.binding.as_str())
                || self.vars.contains_key(&namespace.binding);
            if !bindings.insert(namespace.binding.as_str()) || clashes {
                return Err(format!(
                    "the binding name {:?} is used twice: give each binding its own name",
                    namespace.binding
                ));
            }
        }
        check_range("limits.cpu_ms", self.limits.cpu_ms, MAX_CPU_MS)?;
        check_range("limits.wall_ms", self.limits.wall_ms, MAX_WALL_MS)?;
        if self.limits.subrequests == Some(0) {
            return Err("limits.subrequests must be at least 1".into());
        }
        self.cron_triggers()?;
        for route in self.all_routes() {
            let pattern = route.pattern();
            let (host, path) = pattern.split_once('/').unwrap_or((pattern, ""));
            let host_ok = !host.is_empty()
                && !host.ends_with('.')
                && !host.contains(':')
                && !host.chars().skip(1).any(|c| c == '*');
            let path_ok = !path.trim_end_matches('*').contains('*');
            if !host_ok || !path_ok || pattern.contains("://") {
                return Err(format!(
                    "invalid route {pattern:?}: write HOST or HOST/PATH, such as \
                     example.com/api/*, without a scheme, port or trailing dot, with `*` only \
                     at the start of the host or the end of the path"
                ));
            }
        }
        Ok(())
    }

    /// `route` and `routes` together.
    pub fn all_routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.route.iter().chain(&self.routes)
    }

    /// Parses `[triggers] crons`. The error names the invalid expression and its field.
    pub fn cron_triggers(&self) -> Result<Vec<CronTrigger>, String> {
        self.triggers
            .crons
            .iter()
            .map(|expression| {
                CronTrigger::parse(expression).map_err(|error| format!("[triggers] crons: {error}"))
            })
            .collect()
    }

    /// `[vars]` as JSON values, as they appear on `env`.
    pub fn vars_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.vars
            .iter()
            .map(|(key, value)| (key.clone(), toml_to_json(value)))
            .collect()
    }
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(text) => serde_json::Value::String(text.clone()),
        toml::Value::Integer(number) => serde_json::Value::from(*number),
        toml::Value::Float(number) => serde_json::Value::from(*number),
        toml::Value::Boolean(flag) => serde_json::Value::Bool(*flag),
        toml::Value::Datetime(datetime) => serde_json::Value::String(datetime.to_string()),
        toml::Value::Array(items) => items.iter().map(toml_to_json).collect(),
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(key, value)| (key.clone(), toml_to_json(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrangler_file_parses() {
        let config = WorkerConfig::parse(
            r#"
            name = "chat"
            main = "src/index.ts"
            compatibility_date = "2024-09-23"
            workers_dev = true

            [ai]
            binding = "AI"

            [vars]
            MODE = "prod"
            RETRIES = 3
            FLAGS = { beta = true }

            [limits]
            cpu_ms = 50

            [observability]
            enabled = true
            "#,
        )
        .expect("config parses");
        assert_eq!(config.name, "chat");
        assert_eq!(config.main, PathBuf::from("src/index.ts"));
        assert_eq!(config.ai.as_ref().map(|ai| ai.binding.as_str()), Some("AI"));
        assert_eq!(config.limits.cpu_ms, Some(50));
        let vars = config.vars_json();
        assert_eq!(vars["MODE"], "prod");
        assert_eq!(vars["RETRIES"], 3);
        assert_eq!(vars["FLAGS"]["beta"], true);
    }

    #[test]
    fn missing_main_is_rejected() {
        let error = WorkerConfig::parse("name = \"a\"").unwrap_err();
        assert!(error.contains("main"), "{error}");
    }

    #[test]
    fn invalid_name_is_rejected() {
        let error = WorkerConfig::parse("name = \"a b\"\nmain = \"index.js\"").unwrap_err();
        assert!(error.contains("invalid worker name"), "{error}");
    }

    #[test]
    fn kv_namespaces_pick_the_preview_id_in_dev() {
        let config = WorkerConfig::parse(
            r#"
            name = "cached"
            main = "index.js"
            [[kv_namespaces]]
            binding = "ANSWERS"
            id = "answers-production"
            preview_id = "answers-preview"
            [[kv_namespaces]]
            binding = "STATE"
            id = "state"
            "#,
        )
        .expect("config parses");
        let [answers, state] = &config.kv_namespaces[..] else {
            panic!("two namespaces expected, got {:?}", config.kv_namespaces);
        };
        assert_eq!(answers.namespace_id(true), "answers-preview");
        assert_eq!(answers.namespace_id(false), "answers-production");
        assert_eq!(state.namespace_id(true), "state");
    }

    #[test]
    fn binding_name_used_twice_is_rejected() {
        let error = WorkerConfig::parse(
            "name = \"a\"\nmain = \"i.js\"\n[ai]\nbinding = \"X\"\n\
             [[kv_namespaces]]\nbinding = \"X\"\nid = \"n\"",
        )
        .unwrap_err();
        assert!(error.contains("used twice"), "{error}");
        let error = WorkerConfig::parse(
            "name = \"a\"\nmain = \"i.js\"\n[vars]\nX = 1\n\
             [[kv_namespaces]]\nbinding = \"X\"\nid = \"n\"",
        )
        .unwrap_err();
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn triggers_crons_parse() {
        let config = WorkerConfig::parse(
            "name = \"a\"\nmain = \"i.js\"\n[triggers]\ncrons = [\"*/5 * * * *\", \"0 9 * * MON\"]",
        )
        .expect("config parses");
        let triggers = config.cron_triggers().expect("crons parse");
        let expressions: Vec<&str> = triggers.iter().map(CronTrigger::expression).collect();
        assert_eq!(expressions, ["*/5 * * * *", "0 9 * * MON"]);
    }

    #[test]
    fn limits_over_the_maximum_are_rejected() {
        let text = "name = \"w\"\nmain = \"./src/index.js\"\n[limits]\ncpu_ms = 300001\n";
        let error = WorkerConfig::parse(text).unwrap_err();
        assert!(error.contains("limits.cpu_ms is 300001"), "{error}");
        let text = "name = \"w\"\nmain = \"./src/index.js\"\n";
        let config = WorkerConfig::parse(text).unwrap();
        assert_eq!(config.main, std::path::PathBuf::from("src/index.js"));
    }

    #[test]
    fn routes_with_ports_or_inner_wildcards_are_rejected() {
        for route in [
            "example.com:8080/*",
            "example.com./*",
            "ex*ample.com/*",
            "example.com/a*/b",
        ] {
            let text = format!("name = \"w\"\nmain = \"i.js\"\nroutes = [\"{route}\"]\n");
            let error = WorkerConfig::parse(&text).unwrap_err();
            assert!(error.contains("invalid route"), "{route}: {error}");
        }
        let text = "name = \"w\"\nmain = \"i.js\"\nroutes = [\"*.example.com/api/*\"]\n";
        assert!(WorkerConfig::parse(text).is_ok());
    }

    #[test]
    fn invalid_cron_fails_the_load() {
        let error = WorkerConfig::parse(
            "name = \"a\"\nmain = \"i.js\"\n[triggers]\ncrons = [\"* * * * *\", \"0 25 * * *\"]",
        )
        .unwrap_err();
        assert!(error.contains("[triggers] crons"), "{error}");
        assert!(error.contains("\"0 25 * * *\""), "{error}");
        assert!(error.contains("hour field \"25\""), "{error}");
    }
}
