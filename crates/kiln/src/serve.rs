//! `kiln serve`: start a node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use kiln_config::{KvBackend, LogFormat, NodeConfig};
use kiln_inference::{InferenceService, ServiceOptions};
use kiln_kv::{BackendConfig, Kv};
use kiln_models::ModelStore;
use kiln_runtime::{OutboundPolicy, Services};
use kiln_server::usage::UsageRecorder;
use kiln_server::{Deployments, WorkerHttp, WorkerStarter};

use crate::NodePaths;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    paths: NodePaths,
    /// Socket address to listen on. Default: the config's `listen`, else 127.0.0.1:8787.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder of node state. Default: KILN_DATA_DIR, else the config's data_dir, else
    /// $KILN_HOME/data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format: json (one object per line) or pretty. Default: the config's log_format,
    /// else json.
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
}

pub(crate) fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        other => Err(format!("invalid log format {other:?}: use json or pretty")),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.paths.load_config()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    crate::logging::init(config.log_format);

    let models_dir = args.paths.models_dir(&config)?;
    let data_dir = data_dir(args.data_dir, &config)?;
    let store = open_store(&models_dir)?;
    run_server(serve(config, store, models_dir, data_dir))
}

/// Runs a server to its end, then stops the runtime without waiting for blocking tasks: a
/// worker whose top level never finishes must not keep the process alive after shutdown.
pub(crate) fn run_server(
    server: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = async_runtime()?;
    let result = runtime.block_on(server);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Returns the data folder after the flag, environment and config file, created if missing.
/// A new folder is readable by its owner only (mode 700 on Unix), because it contains the KV
/// data, the token hashes and the deployed workers.
pub(crate) fn data_dir(flag: Option<PathBuf>, config: &NodeConfig) -> anyhow::Result<PathBuf> {
    let data_dir = match flag {
        Some(dir) => dir,
        None => config.resolved_data_dir()?,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&data_dir)
        .with_context(|| format!("failed to create the data folder {}", data_dir.display()))?;
    Ok(data_dir)
}

pub(crate) fn open_store(models_dir: &std::path::Path) -> anyhow::Result<ModelStore> {
    ModelStore::open(models_dir)
        .with_context(|| format!("failed to open the models folder {}", models_dir.display()))
}

pub(crate) fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

async fn serve(
    config: NodeConfig,
    store: ModelStore,
    models_dir: PathBuf,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    kiln_server::install_metrics();
    let usage = open_usage(&data_dir)?;
    let inference = Arc::new(
        InferenceService::new(store, service_options(&config))
            .with_usage_sink(Arc::clone(&usage) as Arc<dyn kiln_inference::UsageSink>),
    );
    let readiness = kiln_server::Readiness::loading(&config.preload);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        address = %address,
        models_dir = %models_dir.display(),
        data_dir = %data_dir.display(),
        "kiln node listening"
    );
    let kv = open_kv(&config, &data_dir).await?;
    let deployments = Arc::new(open_deployments(
        &config,
        &data_dir,
        &inference,
        Some(kv.clone()),
        Some(Arc::clone(&usage)),
    )?);
    deployments.start_all().await;
    let state = Arc::new(kiln_server::AppState {
        inference,
        max_body_bytes: config.limits.max_body_bytes,
        body_timeout: std::time::Duration::from_secs(config.limits.body_timeout_seconds),
        kv: Some(kv),
        tokens: kiln_server::TokenStore::new(&data_dir),
        data_dir: data_dir.clone(),
        readiness: Arc::clone(&readiness),
        usage: Some(Arc::clone(&usage)),
        deployments: Some(deployments),
    });
    let flusher = usage.spawn_flusher();
    tokio::spawn(preload(
        Arc::clone(&state.inference),
        config.preload.clone(),
        readiness,
    ));
    kiln_server::serve(
        listener,
        state,
        async {
            shutdown_signal().await;
            // Open tails would hold their connections through the whole grace period.
            kiln_server::tail::TailHub::global().close_all();
        },
        std::time::Duration::from_secs(config.limits.shutdown_grace_seconds),
    )
    .await
    .context("the HTTP server failed")?;
    flusher.abort();
    tokio::task::spawn_blocking(move || usage.flush_at_shutdown()).await?;
    tracing::info!("kiln node stopped");
    Ok(())
}

/// Builds what starts workers with the node's settings: outbound policy, KV store and an
/// `env.AI` over `inference`.
pub(crate) fn worker_starter(
    config: &NodeConfig,
    inference: &Arc<InferenceService>,
    kv: Option<Kv>,
) -> anyhow::Result<WorkerStarter> {
    let outbound = OutboundPolicy::new(
        &config.workers.outbound_hosts,
        &config.workers.outbound_private_hosts,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(WorkerStarter {
        settings: config.workers.clone(),
        outbound: Arc::new(outbound),
        services: Services {
            ai: None,
            kv,
            tokio: tokio::runtime::Handle::current(),
        },
        inference: Arc::clone(inference),
    })
}

/// Opens the node's deployed workers. [`Deployments::start_all`] then starts them.
fn open_deployments(
    config: &NodeConfig,
    data_dir: &Path,
    inference: &Arc<InferenceService>,
    kv: Option<Kv>,
    usage: Option<Arc<UsageRecorder>>,
) -> anyhow::Result<Deployments> {
    let http = WorkerHttp {
        max_body_bytes: config.limits.max_body_bytes,
        colo: config.workers.colo.clone(),
        country_header: config.workers.country_header.clone(),
        expose_errors: false,
        usage,
    };
    let starter = worker_starter(config, inference, kv)?;
    Deployments::open(data_dir, &config.deploy, starter, http).map_err(anyhow::Error::msg)
}

/// Opens the usage counters in the data folder.
pub(crate) fn open_usage(data_dir: &Path) -> anyhow::Result<Arc<UsageRecorder>> {
    UsageRecorder::open(data_dir).map_err(anyhow::Error::msg)
}

/// Loads the models listed in `preload` one after the other while the node serves, and reports
/// each to `readiness`, so `GET /readyz` returns 503 until they are loaded.
async fn preload(
    inference: Arc<InferenceService>,
    models: Vec<String>,
    readiness: Arc<kiln_server::Readiness>,
) {
    for model in models {
        let started = std::time::Instant::now();
        match inference.preload(&model).await {
            Ok(()) => {
                tracing::info!(
                    model = %model,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "model preloaded"
                );
                readiness.finished(&model, None);
            }
            Err(error) => {
                tracing::error!(
                    model = %model,
                    error = %error,
                    "failed to preload a model listed in preload; /readyz reports it"
                );
                readiness.finished(&model, Some(error.to_string()));
            }
        }
    }
}

/// Opens the node's KV store: `kv.redb` in the data folder, or the configured Redis server.
pub(crate) async fn open_kv(config: &NodeConfig, data_dir: &Path) -> anyhow::Result<Kv> {
    let backend = match config.kv.backend {
        KvBackend::Embedded => BackendConfig::Embedded {
            path: data_dir.join("kv.redb"),
        },
        KvBackend::Redis => BackendConfig::Redis {
            url: config.kv.redis_url.clone().unwrap_or_default(),
        },
    };
    Kv::open(&backend).await.with_context(|| match &backend {
        BackendConfig::Embedded { path } => format!(
            "failed to open the KV store {}; if `kiln serve` or `kiln dev` runs on this data \
             folder, stop it, or reach a running `kiln serve` with --node and --token",
            path.display()
        ),
        BackendConfig::Redis { .. } => "failed to open the KV store on Redis".to_string(),
    })
}

pub(crate) fn service_options(config: &NodeConfig) -> ServiceOptions {
    let threads = match config.llama.threads {
        0 => std::thread::available_parallelism().map_or(2, |cores| cores.get() as u32),
        threads => threads,
    };
    ServiceOptions {
        aliases: config.aliases.clone(),
        default_models: config.default_models.clone(),
        llama: kiln_inference::EngineOptions {
            threads,
            context_tokens: config.llama.context_tokens,
            parallel_sequences: config.llama.parallel_sequences,
            batch_tokens: config.llama.batch_tokens,
            queue_capacity: config.llama.queue_capacity,
            flash_attention: config.llama.flash_attention,
        },
        max_generated_tokens: config.limits.max_generated_tokens,
        onnx: kiln_inference::OnnxEngineOptions {
            // A missing home folder only matters once an ONNX model loads, and the load
            // error then names the empty path and the fix.
            onnx_library: config.onnx.resolved_runtime_library().unwrap_or_default(),
            onnx_threads: config.onnx.threads as usize,
        },
        batching: kiln_inference::BatchOptions {
            max_batch_size: config.batching.max_batch_size,
            max_batch_tokens: config.batching.max_batch_tokens,
            max_wait: std::time::Duration::from_millis(config.batching.max_wait_ms),
            queue_capacity: config.batching.queue_capacity,
        },
        memory_budget: config
            .models
            .memory_budget
            .map(kiln_config::ByteSize::bytes),
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use kiln_config::NodeConfig;

    #[test]
    fn new_data_dir_is_private() {
        let parent = tempfile::tempdir().expect("temporary folder");
        let expected = parent.path().join("node").join("data");
        let created =
            super::data_dir(Some(expected.clone()), &NodeConfig::default()).expect("data folder");
        assert_eq!(created, expected);
        let mode = std::fs::metadata(&created)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
    }
}
