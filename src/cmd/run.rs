//! `herald run`: the service, until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use herald::config::Config;

use super::{init_logging, runtime, Failure, Outcome};

/// `herald run`: loads the config, runs until SIGINT or SIGTERM, exits 0 after a clean stop.
pub fn run(config_path: &Path) -> Outcome {
    let config = Config::load(config_path).map_err(Failure::input)?;
    init_logging("info,rdkafka=warn", config.log.format);
    let runtime = runtime()?;
    let result = runtime.block_on(herald::run(config, shutdown_signal()));
    // `herald::run` has stopped every stage within its grace; a blocking
    // call still running (a write waiting on a broken disk, a client call
    // on a frozen broker) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result.map(|()| ExitCode::SUCCESS).map_err(Failure::run)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received; stopping (a second signal ends herald at once)");
}
