//! Log output: JSON lines for machines, or a readable format for terminals.

use kiln_config::LogFormat;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber for a server. `RUST_LOG` overrides the default level (`info`).
pub fn init(format: LogFormat) {
    init_with_level(format, "info");
}

/// Installs the subscriber for one-shot commands, which print their results themselves and
/// show only warnings and errors (such as a skipped broken manifest) unless `RUST_LOG` sets another level.
pub fn init_cli() {
    init_with_level(LogFormat::Pretty, "warn");
}

fn init_with_level(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = match format {
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Pretty => output.boxed(),
    };
    // Tails see workers' console output whatever level the log shows.
    let tails = kiln_server::tail::TailLayer
        .with_filter(filter_fn(|metadata| metadata.target() == "kiln::worker"));
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(tails)
        .init();
}
