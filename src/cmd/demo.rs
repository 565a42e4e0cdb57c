//! `herald demo`: the sample rules on a live stream, a provider stand-in, a live feed and a summary.

use std::process::ExitCode;
use std::time::Duration;

use super::{init_quiet_logging, runtime, Failure, Outcome};

/// Arguments of `herald demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Kafka bootstrap servers (scripts/demo.sh starts a local broker).
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Seconds of event stream.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Events per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cardholders.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Rules directory.
    #[arg(long, default_value = "rules")]
    rules: std::path::PathBuf,
}

/// `herald demo`.
pub fn demo(args: &DemoArgs) -> Outcome {
    init_quiet_logging();
    let credentials = herald::demo::credentials();
    herald::demo::export_credentials(&credentials);
    let options = herald::demo::DemoOptions {
        brokers: args.brokers.clone(),
        duration: Duration::from_secs(args.duration),
        rate: args.rate,
        seed: args.seed,
        users: args.users,
        rules_dir: std::fs::canonicalize(&args.rules).unwrap_or_else(|_| args.rules.clone()),
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("\n(stopping: Ctrl-C)");
    };
    runtime()?
        .block_on(herald::demo::run(options, credentials, stop))
        .map(|()| ExitCode::SUCCESS)
        .map_err(Failure::run)
}
