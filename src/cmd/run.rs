//! `herald run`: the service, until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use herald::config::Config;

use super::{init_logging, runtime, Failure, Outcome};

/// `herald run`: loads the config, runs until SIGINT or SIGTERM, exits 0 after a clean stop.
pub fn run(config_path: &Path) -> Outcome {
    let config = Config::load(config_path).map_err(Failure::input)?;
    init_logging("info,rdkafka=warn", config.log.format);
    runtime()?
        .block_on(herald::run(config, shutdown_signal()))
        .map(|()| ExitCode::SUCCESS)
        .map_err(Failure::run)
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
