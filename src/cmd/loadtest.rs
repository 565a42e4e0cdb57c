//! `herald loadtest`: herald against a bare rdkafka consumer, same broker, same run.

use std::process::ExitCode;
use std::time::Duration;

use super::{init_quiet_logging, runtime, Failure, Outcome};

/// Arguments of `herald loadtest`.
#[derive(clap::Args)]
pub struct LoadtestArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Offered events per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// `sample`, or a number of generated rules added to the sample rules (1000, 10000).
    #[arg(long, default_value = "sample")]
    rules: String,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Cardholders.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Where the JSON, SVG and PNG go.
    #[arg(long, default_value = "target/loadtest")]
    out: std::path::PathBuf,
}

/// `herald loadtest`.
pub fn loadtest(args: &LoadtestArgs) -> Outcome {
    init_quiet_logging();
    let rules = match args.rules.as_str() {
        "sample" => herald::loadtest::RuleLoad::Sample,
        n => match n.parse() {
            Ok(n) => herald::loadtest::RuleLoad::Generated(n),
            Err(_) => {
                return Err(Failure::input(format!(
                    "--rules takes `sample` or a number, e.g. 1000; got `{n}`"
                )))
            }
        },
    };
    let credentials = herald::demo::credentials();
    herald::demo::export_credentials(&credentials);
    let options = herald::loadtest::LoadOptions {
        brokers: args.brokers.clone(),
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        rules,
        sample_rules: std::path::PathBuf::from("rules"),
        out_dir: args.out.clone(),
        partitions: args.partitions,
        users: args.users,
    };
    runtime()?
        .block_on(herald::loadtest::run(options, credentials))
        .map(|_| ExitCode::SUCCESS)
        .map_err(Failure::run)
}
