//! Log output: JSON lines for machines, or a readable format for terminals.

use kiln_config::LogFormat;
use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}
