//! Deployed workers: their versions on disk, the version that serves each, and the host and
//! path routing that picks a worker for a request.
//!
//! Layout under the data folder:
//!
//! ```text
//! workers/NAME/active                  number of the version in service
//! workers/NAME/secrets.json            sealed secrets (see `secrets`)
//! workers/NAME/versions/N/files/…      the bundle's modules and its wrangler.toml
//! workers/NAME/versions/N/version.json written once version N has started
//! ```
//!
//! A version counts only once its `version.json` exists, which is written after the version
//! started, so a bundle that fails to start (or a crash during a deploy) leaves no version
//! behind. Activation writes `active` by rename, then swaps the in-memory entry: requests that
//! hold the previous worker finish on it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use kiln_config::{DeploySettings, WorkerConfig, WorkerSettings, WORKER_CONFIG_FILES};
use kiln_inference::InferenceService;
use kiln_runtime::{Limits, OutboundPolicy, Services, Worker, WorkerSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::AdminError;
use crate::secrets::SecretStore;
use crate::worker::{InferenceAi, WorkerHttp};

/// Folder of deployed workers under the data folder.
pub const WORKERS_DIR: &str = "workers";

/// File in a worker's folder with the number of its version in service.
const ACTIVE_FILE: &str = "active";

/// Maximum number of files in one bundle.
const MAX_BUNDLE_FILES: usize = 10_000;

/// The upload of `kiln deploy`: the worker's configuration file and the files it loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// Text of the worker's `wrangler.toml` (or `kiln.toml`).
    pub config: String,
    /// Path relative to the worker folder, with `/` separators → file text.
    pub files: BTreeMap<String, String>,
}

impl Bundle {
    /// Collects the worker in `dir`: its configuration and every module it loads (see
    /// [`kiln_runtime::bundle::collect`]).
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let (path, config) = WorkerConfig::load_dir(dir).map_err(|error| error.to_string())?;
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("failed to read {}: {error}", path.display()))?;
        let main = config.main.to_string_lossy().replace('\\', "/");
        if !dir.join(&main).is_file() {
            return Err(format!(
                "the main module {main} named in {} does not exist",
                path.display()
            ));
        }
        let files = kiln_runtime::bundle::collect(dir, &main).map_err(|error| error.to_string())?;
        Ok(Self {
            config: text,
            files,
        })
    }
}

/// Builds a running worker from a folder and its configuration, with the node's settings. Used
/// by `kiln dev` and by deploys.
#[derive(Clone)]
pub struct WorkerStarter {
    pub settings: WorkerSettings,
    pub outbound: Arc<OutboundPolicy>,
    /// Services of every worker; `ai` is replaced per worker by a binding that carries its name.
    pub services: Services,
    pub inference: Arc<InferenceService>,
}

impl WorkerStarter {
    /// Starts the worker in `root`. `preview` selects the KV namespaces' `preview_id`, as
    /// `wrangler dev` does.
    pub fn start(
        &self,
        root: &Path,
        config: &WorkerConfig,
        secrets: BTreeMap<String, String>,
        preview: bool,
    ) -> Result<Worker, String> {
        let main = config.main.to_string_lossy().replace('\\', "/");
        if !root.join(&main).is_file() {
            return Err(format!(
                "the main module {main} named in the worker configuration does not exist"
            ));
        }
        let settings = &self.settings;
        let spec = WorkerSpec {
            name: config.name.clone(),
            root: root.to_path_buf(),
            main,
            vars: config.vars_json(),
            secrets: secrets.into(),
            ai_binding: config.ai.as_ref().map(|ai| ai.binding.clone()),
            kv_namespaces: config
                .kv_namespaces
                .iter()
                .map(|namespace| {
                    let id = namespace.namespace_id(preview).to_owned();
                    (namespace.binding.clone(), id)
                })
                .collect(),
            limits: Limits {
                cpu_ms: config.limits.cpu_ms.unwrap_or(settings.cpu_ms),
                wall_ms: config.limits.wall_ms.unwrap_or(settings.wall_ms),
                memory_bytes: (settings.memory_mib as usize).saturating_mul(1024 * 1024),
                subrequests: config.limits.subrequests.unwrap_or(settings.subrequests),
                ..Limits::default()
            },
            max_isolates: settings.max_isolates(),
            outbound: Arc::clone(&self.outbound),
        };
        // Each worker gets its own `env.AI`, so its runs count as usage of its name.
        let services = Services {
            ai: Some(Arc::new(InferenceAi {
                inference: Arc::clone(&self.inference),
                worker: Some(config.name.clone()),
            })),
            ..self.services.clone()
        };
        Worker::start(spec, services).map_err(|error| error.to_string())
    }
}

/// One stored version of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    /// Deploy time, RFC 3339 in UTC.
    pub created_on: String,
    /// SHA-256 of the bundle's configuration and files, in hex.
    pub sha256: String,
    pub files: usize,
    /// Whether this version serves requests now. Filled in when listing.
    #[serde(default)]
    pub active: bool,
}

/// The version of a worker that serves its requests.
pub struct ActiveWorker {
    pub name: String,
    pub version: u64,
    pub worker: Worker,
    routes: Vec<RoutePattern>,
}

/// The destination of a request.
pub enum Routed {
    Worker(Arc<ActiveWorker>),
    /// The node's own API.
    Api,
    /// A host that no worker is routed on.
    NoWorker(String),
    /// A stored worker whose version in service failed to start when the node started, with
    /// the reason.
    Unavailable(String),
}

/// Every deployed worker of a node.
pub struct Deployments {
    root: PathBuf,
    starter: WorkerStarter,
    secrets: SecretStore,
    settings: DeploySettings,
    /// Settings that turn worker requests into HTTP responses.
    pub http: WorkerHttp,
    active: RwLock<BTreeMap<String, Arc<ActiveWorker>>>,
    /// Workers whose version in service failed to start at node start, with the error, until
    /// a deploy, rollback or secret change starts one.
    failed: RwLock<BTreeMap<String, String>>,
    /// One lock per worker name, held by deploys, rollbacks and secret changes, so each of
    /// them starts from and leaves one complete version in service.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Deployments {
    /// Opens the workers folder of `data_dir`. Call [`Deployments::start_all`] to serve the
    /// versions in service.
    pub fn open(
        data_dir: &Path,
        settings: &DeploySettings,
        starter: WorkerStarter,
        http: WorkerHttp,
    ) -> Result<Self, String> {
        let root = data_dir.join(WORKERS_DIR);
        std::fs::create_dir_all(&root)
            .map_err(|error| format!("failed to create {}: {error}", root.display()))?;
        let secrets = SecretStore::open(&root, settings.secrets_key_file.as_deref())
            .map_err(|error| error.to_string())?;
        Ok(Self {
            root,
            starter,
            secrets,
            settings: settings.clone(),
            http,
            active: RwLock::new(BTreeMap::new()),
            failed: RwLock::new(BTreeMap::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// Starts the version in service of every stored worker. A worker that fails to start is
    /// logged and left out; the others serve.
    pub async fn start_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let stored: Vec<(String, u64)> = entries
            .flatten()
            .filter_map(|entry| {
                let version = read_active(&entry.path())?;
                Some((entry.file_name().to_string_lossy().into_owned(), version))
            })
            .collect();
        // The workers start side by side, so one slow top level does not hold up the others.
        let starts = stored.iter().map(|(name, version)| async move {
            (name, *version, self.start_version(name, *version).await)
        });
        for (name, version, started) in futures::future::join_all(starts).await {
            match started {
                Ok(active) => {
                    tracing::info!(worker = %name, version, "deployed worker started");
                    self.install(active);
                }
                Err(error) => {
                    tracing::error!(
                        worker = %name,
                        version,
                        error = %error.message,
                        "deployed worker failed to start; it does not serve until the next deploy"
                    );
                    let mut failed = self
                        .failed
                        .write()
                        .unwrap_or_else(|poison| poison.into_inner());
                    failed.insert(name.clone(), error.message);
                }
            }
        }
    }

    fn worker_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        self.worker_dir(name)
            .join("versions")
            .join(version.to_string())
    }

    async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            Arc::clone(locks.entry(name.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// Starts a stored version with the worker's current secrets.
    async fn start_version(&self, name: &str, version: u64) -> Result<ActiveWorker, AdminError> {
        let root = self.version_dir(name, version).join("files");
        let secrets = self
            .secrets
            .open_all(name)
            .map_err(|error| AdminError::new(500, error.to_string()))?;
        let starter = self.starter.clone();
        let started = tokio::task::spawn_blocking(move || {
            let (_, config) = WorkerConfig::load_dir(&root).map_err(|error| error.to_string())?;
            let worker = starter.start(&root, &config, secrets, false)?;
            let routes = config
                .all_routes()
                .map(|route| RoutePattern::parse(route.pattern()))
                .collect();
            Ok::<_, String>((worker, routes))
        })
        .await
        .map_err(|error| AdminError::new(500, format!("the start task failed: {error}")))?;
        let (worker, routes) = started.map_err(|error| {
            AdminError::new(
                400,
                format!("version {version} of worker {name} failed to start: {error}"),
            )
        })?;
        Ok(ActiveWorker {
            name: name.to_owned(),
            version,
            worker,
            routes,
        })
    }

    /// Makes `active` serve its worker's following requests.
    fn install(&self, active: ActiveWorker) {
        let mut workers = self
            .active
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        self.failed
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&active.name);
        workers.insert(active.name.clone(), Arc::new(active));
    }

    /// Stores `bundle` as a new version of worker `name`, starts it, and puts it in service.
    /// A bundle that fails to start is refused and leaves the version in service as it was.
    pub(crate) async fn deploy(
        &self,
        name: &str,
        bundle: Bundle,
    ) -> Result<VersionInfo, AdminError> {
        let config = WorkerConfig::parse(&bundle.config).map_err(|error| {
            AdminError::new(400, format!("invalid wrangler.toml in the bundle: {error}"))
        })?;
        if config.name != name {
            return Err(AdminError::new(
                400,
                format!(
                    "the bundle's wrangler.toml names worker {:?}, but the request deploys {name:?}: \
                     deploy it as {:?} or change `name`",
                    config.name, config.name
                ),
            ));
        }
        validate_files(&bundle)?;
        self.check_routes(name, &config)?;
        let main = config.main.to_string_lossy().replace('\\', "/");
        if !bundle.files.contains_key(&main) {
            return Err(AdminError::new(
                400,
                format!(
                    "the bundle has no file {main}, the main module named in its wrangler.toml"
                ),
            ));
        }

        let _guard = self.lock(name).await;
        let versions = self.worker_dir(name).join("versions");
        let version = next_version(&versions);
        let dir = self.version_dir(name, version);
        let sha256 = bundle_digest(&bundle);
        let files = bundle.files.len();
        let write_dir = dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write_bundle(&write_dir.join("files"), &bundle))
                .await
                .map_err(|error| AdminError::new(500, format!("the write task failed: {error}")))?;
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::warn!(worker = %name, error = %error, "failed to store a bundle");
            return Err(AdminError::new(
                400,
                format!("failed to store the bundle: {error}; check its file names"),
            ));
        }

        let active = match self.start_version(name, version).await {
            Ok(active) => active,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                let previous = self.active_version(name);
                let kept = previous.map_or_else(
                    || "no version was in service before".to_owned(),
                    |previous| format!("version {previous} stays in service"),
                );
                tracing::warn!(worker = %name, error = %error.message, "deploy rejected");
                return Err(AdminError::new(
                    error.status,
                    format!("{}; {kept}", error.message),
                ));
            }
        };
        let info = VersionInfo {
            version,
            created_on: rfc3339(SystemTime::now()),
            sha256,
            files,
            active: true,
        };
        let stored = serde_json::to_vec_pretty(&info)
            .map_err(|error| AdminError::new(500, error.to_string()))?;
        write_atomically(&dir.join("version.json"), &stored).map_err(|error| {
            tracing::error!(worker = %name, version, error = %error, "failed to record a version");
            AdminError::new(500, format!("failed to record the version: {error}"))
        })?;
        self.record_active(name, version)?;
        let previous = self.active_version(name);
        self.install(active);
        tracing::info!(worker = %name, version, previous, files, "worker deployed");
        Ok(info)
    }

    /// Puts a stored version back in service: `to`, else the newest version older than the
    /// one in service.
    pub(crate) async fn rollback(
        &self,
        name: &str,
        to: Option<u64>,
    ) -> Result<VersionInfo, AdminError> {
        let _guard = self.lock(name).await;
        let current = self.active_version(name);
        let versions = self.versions(name)?;
        let target = match to {
            Some(version) => versions.iter().find(|info| info.version == version).ok_or_else(|| {
                AdminError::new(
                    404,
                    format!("worker {name} has no version {version}: list them with `kiln versions list {name}`"),
                )
            })?,
            None => versions
                .iter()
                .rev()
                .find(|info| current.is_some_and(|current| info.version < current))
                .ok_or_else(|| {
                    AdminError::new(
                        409,
                        format!("worker {name} has no version older than the one in service: pass --to VERSION"),
                    )
                })?,
        };

        let mut info = target.clone();
        let active = self.start_version(name, info.version).await?;
        self.record_active(name, info.version)?;
        self.install(active);
        info.active = true;
        tracing::info!(worker = %name, version = info.version, previous = current, "worker rolled back");
        Ok(info)
    }

    /// Writes the number of the version in service to `workers/NAME/active`, read back by
    /// [`read_active`] when the node starts.
    fn record_active(&self, name: &str, version: u64) -> Result<(), AdminError> {
        let path = self.worker_dir(name).join(ACTIVE_FILE);
        write_atomically(&path, version.to_string().as_bytes()).map_err(|error| {
            tracing::error!(worker = %name, version, error = %error, "failed to record the version in service");
            AdminError::new(500, format!("failed to record the version in service: {error}"))
        })
    }

    /// Lists a worker's stored versions, oldest first. 404 when the worker was never deployed.
    pub(crate) fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, AdminError> {
        let versions_dir = self.worker_dir(name).join("versions");
        let entries = std::fs::read_dir(&versions_dir).map_err(|_| {
            AdminError::new(
                404,
                format!("no worker named {name} is deployed on this node"),
            )
        })?;
        let active = self.active_version(name);
        let mut versions: Vec<VersionInfo> = entries
            .flatten()
            .filter_map(|entry| {
                let text = std::fs::read(entry.path().join("version.json")).ok()?;
                serde_json::from_slice::<VersionInfo>(&text).ok()
            })
            .map(|mut info| {
                info.active = Some(info.version) == active;
                info
            })
            .collect();
        versions.sort_by_key(|info| info.version);
        Ok(versions)
    }

    /// The version in service of a worker.
    pub fn active_version(&self, name: &str) -> Option<u64> {
        let workers = self
            .active
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        workers.get(name).map(|active| active.version)
    }

    /// Returns every worker in service, by name.
    pub fn list(&self) -> Vec<Arc<ActiveWorker>> {
        let workers = self
            .active
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        workers.values().cloned().collect()
    }

    /// Stores a secret and restarts the worker's version in service with it, as the hosted
    /// platform deploys a worker again when a secret changes.
    pub(crate) async fn put_secret(
        &self,
        worker: &str,
        name: &str,
        value: &str,
    ) -> Result<(), AdminError> {
        let _guard = self.lock(worker).await;
        self.secrets
            .put(worker, name, value)
            .map_err(|error| AdminError::new(503, error.to_string()))?;
        self.restart(worker).await
    }

    /// Removes a secret and restarts the worker's version in service without it. Returns
    /// whether the secret existed.
    pub(crate) async fn delete_secret(&self, worker: &str, name: &str) -> Result<bool, AdminError> {
        let _guard = self.lock(worker).await;
        let existed = self
            .secrets
            .delete(worker, name)
            .map_err(|error| AdminError::new(500, error.to_string()))?;
        if existed {
            self.restart(worker).await?;
        }
        Ok(existed)
    }

    /// Starts the worker's version in service again, also one that failed to start before.
    async fn restart(&self, worker: &str) -> Result<(), AdminError> {
        let version = self
            .active_version(worker)
            .or_else(|| read_active(&self.worker_dir(worker)));
        if let Some(version) = version {
            let active = self.start_version(worker, version).await?;
            self.install(active);
            tracing::info!(worker = %worker, version, "worker restarted with changed secrets");
        }
        Ok(())
    }

    /// Picks where a request for `host` (the `Host` header, with or without a port) and `path`
    /// goes: the worker whose route matches best, else the worker `NAME` of `NAME.<domain>`,
    /// else the node's API on IP addresses, the domain and `api_hosts`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Routed {
        let Some(host) = host.map(host_name) else {
            return Routed::Api;
        };
        // The node's own hosts come first, so that no worker route can take the admin API.
        if self.is_api_host(&host) {
            return Routed::Api;
        }
        let workers = self
            .active
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let domain = self.settings.domain.to_ascii_lowercase();
        if let Some(name) = host.strip_suffix(&format!(".{domain}")) {
            if let Some(active) = workers.get(name) {
                return Routed::Worker(Arc::clone(active));
            }
            let failed = self
                .failed
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            return match failed.get(name) {
                Some(error) => Routed::Unavailable(error.clone()),
                None => Routed::NoWorker(host.clone()),
            };
        }
        let best = workers
            .values()
            .flat_map(|active| active.routes.iter().map(move |route| (route, active)))
            .filter(|(route, _)| route.matches(&host, path))
            .max_by_key(|(route, _)| route.specificity());
        match best {
            Some((_, active)) => Routed::Worker(Arc::clone(active)),
            None => Routed::NoWorker(host),
        }
    }

    /// Returns whether `host` (lower case, without a port) serves the node's own API: an IP
    /// address, the domain itself or one of `api_hosts`.
    fn is_api_host(&self, host: &str) -> bool {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
            || host.eq_ignore_ascii_case(&self.settings.domain)
            || self
                .settings
                .api_hosts
                .iter()
                .any(|api_host| api_host.eq_ignore_ascii_case(host))
    }

    /// Rejects routes that name the node's own hosts or a host under its domain, which route
    /// elsewhere, and routes that another worker already has.
    fn check_routes(&self, name: &str, config: &WorkerConfig) -> Result<(), AdminError> {
        let domain = self.settings.domain.to_ascii_lowercase();
        let workers = self
            .active
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        for route in config.all_routes() {
            let pattern = route.pattern();
            let parsed = RoutePattern::parse(pattern);
            if let HostMatch::Exact(host) = &parsed.host {
                if self.is_api_host(host) || host.ends_with(&format!(".{domain}")) {
                    return Err(AdminError::new(
                        400,
                        format!(
                            "invalid route {pattern:?}: {host} is an API host of the node or \
                             is under its domain {domain}, where a worker is reachable only on \
                             its own NAME.{domain}"
                        ),
                    ));
                }
            }
            let owner = workers
                .values()
                .find(|active| active.name != name && active.routes.contains(&parsed));
            if let Some(owner) = owner {
                return Err(AdminError::new(
                    409,
                    format!(
                        "route {pattern:?} already belongs to worker {}: remove it there first",
                        owner.name
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn domain(&self) -> &str {
        &self.settings.domain
    }
}

/// Returns the host of a `Host` header in lower case, without its port.
fn host_name(header: &str) -> String {
    let header = header.trim();
    let host = if header.starts_with('[') {
        header.split_inclusive(']').next().unwrap_or(header)
    } else {
        match header.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => header,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A route of `wrangler.toml`: `HOST[/PATH]`, where HOST may start with `*` (any prefix) and
/// PATH may end with `*` (any rest). Without a path the route covers every path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoutePattern {
    host: HostMatch,
    /// Exact path, or a prefix when the pattern ends with `*`; `None` for every path.
    path: Option<(String, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    Suffix(String),
}

impl RoutePattern {
    fn parse(pattern: &str) -> Self {
        let (host, path) = match pattern.find('/') {
            Some(slash) => (&pattern[..slash], Some(&pattern[slash..])),
            None => (pattern, None),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
            None => HostMatch::Exact(host),
        };
        let path = path.map(|path| match path.strip_suffix('*') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (path.to_owned(), false),
        });
        Self { host, path }
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_matches = match &self.host {
            HostMatch::Exact(exact) => host == exact,
            HostMatch::Suffix(suffix) => host.ends_with(suffix.as_str()),
        };
        host_matches
            && match &self.path {
                None => true,
                Some((prefix, true)) => path.starts_with(prefix.as_str()),
                Some((exact, false)) => path == exact,
            }
    }

    /// Orders overlapping routes: an exact host beats a wildcard, then longer hosts and
    /// longer paths win, and an exact path beats a prefix of the same length.
    fn specificity(&self) -> (bool, usize, usize, bool) {
        let (exact_host, host_len) = match &self.host {
            HostMatch::Exact(host) => (true, host.len()),
            HostMatch::Suffix(suffix) => (false, suffix.len()),
        };
        let (path_len, exact_path) = match &self.path {
            None => (0, false),
            Some((path, prefix)) => (path.len(), !prefix),
        };
        (exact_host, host_len, path_len, exact_path)
    }
}

/// Refuses file names that could leave the version folder or clash with its configuration.
fn validate_files(bundle: &Bundle) -> Result<(), AdminError> {
    if bundle.files.len() > MAX_BUNDLE_FILES {
        return Err(AdminError::new(
            400,
            format!(
                "the bundle has {} files; at most {MAX_BUNDLE_FILES} are allowed",
                bundle.files.len()
            ),
        ));
    }
    for name in bundle.files.keys() {
        let path = Path::new(name);
        let plain = !name.is_empty()
            && !name.contains('\\')
            && !name.contains('\0')
            && name.len() <= 1024
            && path
                .components()
                .all(|component| matches!(component, Component::Normal(part) if part.len() <= 255));
        if !plain {
            return Err(AdminError::new(
                400,
                format!(
                    "invalid file name {name:?} in the bundle: give paths relative to the worker \
                     folder, with `/` separators, no `.` or `..` parts, at most 255 bytes a part \
                     and 1024 in all"
                ),
            ));
        }
        if WORKER_CONFIG_FILES.contains(&name.as_str()) {
            return Err(AdminError::new(
                400,
                format!(
                    "the bundle's files include {name}; send the configuration in `config` only"
                ),
            ));
        }
    }
    Ok(())
}

/// The next version number: one more than the highest stored one.
fn next_version(versions: &Path) -> u64 {
    std::fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .map_or(1, |last| last + 1)
}

fn read_active(worker_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(worker_dir.join(ACTIVE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn bundle_digest(bundle: &Bundle) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bundle.config.as_bytes());
    for (name, text) in &bundle.files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Writes the bundle's files and its configuration as `wrangler.toml` under `dir`, each file
/// flushed to disk.
fn write_bundle(dir: &Path, bundle: &Bundle) -> std::io::Result<()> {
    for (name, text) in &bundle.files {
        write_synced(&dir.join(name), text.as_bytes())?;
    }
    write_synced(&dir.join(WORKER_CONFIG_FILES[0]), bundle.config.as_bytes())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` with `bytes` so that a reader sees the old or the new content, never a
/// part, and the change survives a crash.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut temporary = tempfile::NamedTempFile::new_in(parent)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|error| error.error)?;
    std::fs::File::open(parent)?.sync_all()
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_drops_port_and_case() {
        assert_eq!(host_name("API.Example.com:8787"), "api.example.com");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("chat.localhost"), "chat.localhost");
    }

    #[test]
    fn route_patterns_match() {
        let route = RoutePattern::parse("example.com/api/*");
        assert!(route.matches("example.com", "/api/users"));
        assert!(!route.matches("example.com", "/other"));
        assert!(!route.matches("www.example.com", "/api/users"));

        let wildcard = RoutePattern::parse("*.example.com/*");
        assert!(wildcard.matches("shop.example.com", "/"));
        assert!(!wildcard.matches("example.com", "/"));

        let domain = RoutePattern::parse("chat.example.org");
        assert!(domain.matches("chat.example.org", "/any/path"));

        let exact = RoutePattern::parse("example.com/health");
        assert!(exact.matches("example.com", "/health"));
        assert!(!exact.matches("example.com", "/health/x"));
        assert!(exact.specificity() > route.specificity());
        assert!(route.specificity() > wildcard.specificity());
    }

    #[test]
    fn outside_file_names_rejected() {
        for name in [
            "../x.js",
            "/abs.js",
            "a/../../b.js",
            "a\\b.js",
            "",
            "wrangler.toml",
        ] {
            let bundle = Bundle {
                config: String::new(),
                files: BTreeMap::from([(name.to_owned(), String::new())]),
            };
            let error = validate_files(&bundle).unwrap_err();
            assert_eq!(error.status, 400, "{name}");
        }
        let bundle = Bundle {
            config: String::new(),
            files: BTreeMap::from([("src/node_modules/a/b.js".to_owned(), String::new())]),
        };
        assert!(validate_files(&bundle).is_ok());
    }

    #[test]
    fn next_version_follows_highest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_version(dir.path()), 1);
        std::fs::create_dir_all(dir.path().join("3")).unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        assert_eq!(next_version(dir.path()), 4);
    }
}
