//! What each subcommand does: start the service, or check rule files.

use std::path::Path;
use std::process::ExitCode;

use herald::config::Config;
use herald::rules::{load_dir, Known};

/// `herald run`: loads the config, runs until SIGINT or SIGTERM, exits 0 after a clean stop.
pub fn run(config_path: &Path) -> ExitCode {
    init_logging();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herald::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `herald rules check`: every error in every file, exit 1 if any; else one line per file.
pub fn check(dir: &Path, config_path: Option<&Path>) -> ExitCode {
    let config = match config_path.map(Config::read).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let channels = config
        .as_ref()
        .map(|c| c.channels.keys().cloned().collect());
    let sources = config.as_ref().map(|c| c.sources.keys().cloned().collect());
    let known = Known {
        channels: channels.as_ref(),
        sources: sources.as_ref(),
    };
    match load_dir(dir, &known) {
        Ok(set) => {
            for file in &set.files {
                println!(
                    "{}: ok, {} rules ({} enabled)",
                    file.path, file.rules, file.enabled
                );
            }
            println!("{} rules in {} files", set.rules.len(), set.files.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
