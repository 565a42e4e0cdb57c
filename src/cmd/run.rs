//! `herald run`: the service, until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use herald::config::Config;

use super::{runtime, Failure, Outcome};

/// `herald run`: loads the config, runs until SIGINT or SIGTERM, exits 0 after a clean stop.
pub fn run(config_path: &Path) -> Outcome {
    let config = Config::load(config_path).map_err(Failure::input)?;
    init_logging(config.log.format);
    runtime()?
        .block_on(herald::run(config, shutdown_signal()))
        .map(|()| ExitCode::SUCCESS)
        .map_err(Failure::run)
}

fn init_logging(format: herald::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        herald::config::LogFormat::Json => builder.json().with_current_span(false).init(),
        herald::config::LogFormat::Text => {
            // Colour only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init()
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
