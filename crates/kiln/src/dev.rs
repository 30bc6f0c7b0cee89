//! `kiln dev DIR`: serve one worker folder on every path with the installed models, reload it
//! when its files change, and run its scheduled handler when a cron trigger is due.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use kiln_config::{CronTrigger, LogFormat, NodeConfig, WorkerConfig};
use kiln_inference::InferenceService;
use kiln_models::ModelStore;
use kiln_runtime::Worker;
use kiln_server::{WorkerHttp, WorkerSlot, WorkerStarter, WorkerState, SCHEDULED_TEST_PATH};
use tokio::sync::watch;

use crate::NodePaths;

/// How often the worker folder is scanned for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct DevArgs {
    /// Worker folder: contains wrangler.toml (or kiln.toml) and the modules it names.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    paths: NodePaths,
    /// Socket address to listen on. Default: 127.0.0.1:8787.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder of the worker's local state (KV data). Default: KILN_DATA_DIR, else the config's
    /// data_dir, else $KILN_HOME/data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format: pretty (default) or json (one object per line).
    #[arg(long, value_name = "FORMAT", value_parser = crate::serve::parse_log_format)]
    log_format: Option<LogFormat>,
    /// Serve GET /__scheduled?cron=EXPR, which runs the worker's scheduled handler once, as
    /// `wrangler dev --test-scheduled` does. Without this flag the path goes to fetch.
    #[arg(long)]
    test_scheduled: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = args.paths.load_config()?;
    crate::logging::init(args.log_format.unwrap_or(LogFormat::Pretty));
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("worker folder {} not found", args.dir.display()))?;
    let listen = args.listen.unwrap_or(
        kiln_config::DEFAULT_LISTEN
            .parse()
            .expect("the default listen address is valid"),
    );

    let models_dir = args.paths.models_dir(&config)?;
    let data_dir = crate::serve::data_dir(args.data_dir, &config)?;
    let store = crate::serve::open_store(&models_dir)?;
    let options = ServeOptions {
        dir,
        data_dir,
        listen,
        test_scheduled: args.test_scheduled,
    };
    crate::serve::run_server(serve(config, store, options))
}

/// Command-line options of `kiln dev` that the server needs.
struct ServeOptions {
    dir: PathBuf,
    data_dir: PathBuf,
    listen: SocketAddr,
    test_scheduled: bool,
}

async fn serve(config: NodeConfig, store: ModelStore, options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        dir,
        data_dir,
        listen,
        test_scheduled,
    } = options;
    kiln_server::install_metrics();
    let usage = crate::serve::open_usage(&data_dir)?;
    let inference = Arc::new(
        InferenceService::new(store, crate::serve::service_options(&config))
            .with_usage_sink(Arc::clone(&usage) as Arc<dyn kiln_inference::UsageSink>),
    );
    let kv = crate::serve::open_kv(&config, &data_dir).await?;
    let starter = crate::serve::worker_starter(&config, &inference, Some(kv))?;
    let slot = Arc::new(WorkerSlot::default());
    let state = Arc::new(WorkerState {
        slot: Arc::clone(&slot),
        http: WorkerHttp {
            max_body_bytes: config.limits.max_body_bytes,
            colo: config.workers.colo.clone(),
            country_header: config.workers.country_header.clone(),
            expose_errors: true,
            usage: Some(Arc::clone(&usage)),
        },
        test_scheduled,
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    let address = listener.local_addr()?;

    let (crons, cron_updates) = watch::channel(Vec::new());
    let loader = Loader {
        dir: dir.clone(),
        starter,
        slot: Arc::clone(&slot),
        crons: Arc::new(crons),
    };
    let first = tokio::task::spawn_blocking({
        let loader = loader.clone();
        move || loader.load()
    })
    .await
    .context("the worker load task failed")?;
    if first.is_err() {
        tracing::warn!("serving the load error until the worker folder changes");
    }
    std::thread::Builder::new()
        .name("kiln-dev-watch".into())
        .spawn(move || watch(loader))
        .context("failed to start the file watcher")?;
    tokio::spawn(fire_cron_triggers(slot, cron_updates));
    let flusher = usage.spawn_flusher();

    tracing::info!(
        address = %address,
        dir = %dir.display(),
        "kiln dev listening on http://{address}"
    );
    if test_scheduled {
        tracing::info!(
            "run the scheduled handler with http://{address}{SCHEDULED_TEST_PATH}?cron=EXPR"
        );
    }
    kiln_server::serve_worker(
        listener,
        state,
        crate::serve::shutdown_signal(),
        std::time::Duration::from_secs(config.limits.shutdown_grace_seconds),
    )
    .await
    .context("the HTTP server failed")?;
    flusher.abort();
    tokio::task::spawn_blocking(move || usage.flush_at_shutdown()).await?;
    tracing::info!("kiln dev stopped");
    Ok(())
}

/// Builds worker versions from the folder and puts them in the slot.
#[derive(Clone)]
struct Loader {
    dir: PathBuf,
    starter: WorkerStarter,
    slot: Arc<WorkerSlot>,
    /// Cron triggers of the version in the slot, read by [`fire_cron_triggers`].
    crons: Arc<watch::Sender<Vec<CronTrigger>>>,
}

impl Loader {
    /// Loads the folder's worker. On failure the error is printed, and the slot keeps the
    /// previous version (or serves the error when there is none).
    fn load(&self) -> Result<(), ()> {
        let started = Instant::now();
        match self.start_worker() {
            Ok(LoadedWorker {
                worker,
                secret_names,
                crons,
            }) => {
                let expressions: Vec<&str> = crons.iter().map(CronTrigger::expression).collect();
                tracing::info!(
                    worker = %worker.name(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    secrets = %secret_names.join(","),
                    crons = ?expressions,
                    "worker loaded"
                );
                if !crons.is_empty() && !worker.has_scheduled_handler() {
                    tracing::warn!(
                        worker = %worker.name(),
                        crons = ?expressions,
                        "the worker declares [triggers] crons, but its default export has no \
                         scheduled(controller, env, ctx) method: each trigger will fail until \
                         you add one"
                    );
                }
                self.slot.set(worker);
                self.crons.send_replace(crons);
                Ok(())
            }
            Err(error) => {
                let text = format!("{error:#}");
                tracing::error!(dir = %self.dir.display(), "worker failed to load:\n{text}");
                self.slot.set_error_if_empty(text);
                Err(())
            }
        }
    }

    /// Starts the folder's worker.
    fn start_worker(&self) -> anyhow::Result<LoadedWorker> {
        let (path, worker) = WorkerConfig::load_dir(&self.dir)?;
        let crons = worker
            .cron_triggers()
            .map_err(|message| anyhow::anyhow!("invalid {}: {message}", path.display()))?;
        // The error names the file and line but not the text, which may contain a secret.
        let secrets = kiln_config::load_dev_vars(&self.dir)?;
        let secret_names: Vec<String> = secrets.keys().cloned().collect();
        // `kiln dev` works on the preview namespaces, as `wrangler dev` does.
        let started = self.starter.start(&self.dir, &worker, secrets, true);
        Ok(LoadedWorker {
            worker: started.map_err(anyhow::Error::msg)?,
            secret_names,
            crons,
        })
    }
}

/// A worker version started from the folder, with what the loader logs and schedules.
struct LoadedWorker {
    worker: Worker,
    /// Names of the `.dev.vars` secrets, for the log line (never their values).
    secret_names: Vec<String>,
    crons: Vec<CronTrigger>,
}

/// Runs the scheduled handler of the worker in `slot` each time one of its cron triggers is
/// due (UTC). Each reload publishes its triggers on `crons`, so the timer picks up changed
/// triggers without restarting. Events run concurrently, each to its end, on the version that
/// was serving when they fired.
async fn fire_cron_triggers(slot: Arc<WorkerSlot>, mut crons: watch::Receiver<Vec<CronTrigger>>) {
    // Fire times are computed after the last one fired, so a wall clock that reads a little
    // behind the timer when it wakes does not fire the same minute twice.
    let mut last_fired = SystemTime::UNIX_EPOCH;
    loop {
        let triggers = crons.borrow_and_update().clone();
        let after = SystemTime::now().max(last_fired);
        let Some(due) = triggers
            .iter()
            .filter_map(|trigger| trigger.next_after(after))
            .min()
        else {
            // No triggers: wait for a reload that brings some.
            if crons.changed().await.is_err() {
                return;
            }
            continue;
        };
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = crons.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        last_fired = due;

        let worker = match slot.get() {
            Ok(worker) => worker,
            Err(error) => {
                tracing::warn!(error = %error, "cron trigger skipped because no worker is loaded");
                continue;
            }
        };
        for trigger in &triggers {
            if trigger.next_after(after) != Some(due) {
                continue;
            }
            let worker = worker.clone();
            let cron = trigger.expression().to_owned();
            // `Worker::scheduled` logs the outcome.
            tokio::spawn(async move { worker.scheduled(&cron, due).await });
        }
    }
}

/// Modification time and size of every file that can change the worker.
type Snapshot = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// Scans the folder every [`POLL_INTERVAL`] and reloads the worker when a file changes.
fn watch(loader: Loader) {
    let mut last = snapshot(&loader.dir);
    loop {
        std::thread::sleep(POLL_INTERVAL);
        let current = snapshot(&loader.dir);
        if current == last {
            continue;
        }
        // Editors write a file in several steps; wait until the folder is quiet.
        std::thread::sleep(Duration::from_millis(50));
        last = snapshot(&loader.dir);
        tracing::info!(dir = %loader.dir.display(), "change detected, reloading the worker");
        let _ = loader.load();
    }
}

fn snapshot(dir: &Path) -> Snapshot {
    let mut files = Snapshot::new();
    collect(dir, &mut files, 0);
    files
}

fn collect(dir: &Path, files: &mut Snapshot, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            // Packages change only through npm, which rewrites package-lock.json at the top.
            if depth < 8 && !name.starts_with('.') && name != "node_modules" {
                collect(&path, files, depth + 1);
            }
        } else {
            files.insert(path, (metadata.modified().ok(), metadata.len()));
        }
    }
}
