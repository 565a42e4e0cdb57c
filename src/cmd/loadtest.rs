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
    /// Instead of a rate: drain a backlog of this many swipes published
    /// before herald starts (with `--rules one` or `sample`); timed from
    /// the first swipe herald takes to its last push.
    #[arg(long, conflicts_with = "burst")]
    drain: Option<u64>,
    /// Instead of a rate: this many approved swipes of one user published
    /// at once; reports how long until all reached the provider.
    #[arg(long)]
    burst: Option<u64>,
    /// The provider stand-in's answer time, ms (drain and burst).
    #[arg(long, default_value_t = 0)]
    provider_ms: u64,
    /// herald's `limits.lanes`, to compare settings (default: the config's).
    #[arg(long)]
    lanes: Option<usize>,
    /// herald's `limits.lane_batch` (1: one record at a time, as before
    /// 2026-12-06).
    #[arg(long)]
    lane_batch: Option<usize>,
    /// herald's `limits.sends_per_user` (1: each of a user's sends waits
    /// for the last one's answer, as before 2026-12-05).
    #[arg(long)]
    sends_per_user: Option<usize>,
    /// A librdkafka property for herald's clients, `KEY=VALUE` (repeat it),
    /// to compare settings: `--kafka linger.ms=5`.
    #[arg(long, value_parser = property)]
    kafka: Vec<(String, String)>,
}

fn property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

impl LoadtestArgs {
    fn limits(&self) -> herald::loadtest::LimitOverrides {
        herald::loadtest::LimitOverrides {
            lanes: self.lanes,
            lane_batch: self.lane_batch,
            sends_per_user: self.sends_per_user,
            kafka: self.kafka.clone(),
        }
    }
}

/// `herald loadtest`.
pub fn loadtest(args: &LoadtestArgs) -> Outcome {
    init_quiet_logging();
    if let Some(count) = args.drain.or(args.burst) {
        return drain(args, count);
    }
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
        limits: args.limits(),
    };
    runtime()?
        .block_on(herald::loadtest::run(options, credentials))
        .map(|_| ExitCode::SUCCESS)
        .map_err(Failure::run)
}

/// `herald loadtest --drain N` / `--burst N`.
fn drain(args: &LoadtestArgs, count: u64) -> Outcome {
    use herald::loadtest::drain::{DrainOptions, DrainRules};
    let rules = match args.rules.as_str() {
        "one" => DrainRules::One,
        "sample" => DrainRules::Sample,
        other => {
            return Err(Failure::input(format!(
                "--drain and --burst take --rules `one` or `sample`; got `{other}`"
            )))
        }
    };
    let credentials = herald::demo::credentials();
    herald::demo::export_credentials(&credentials);
    let options = DrainOptions {
        brokers: args.brokers.clone(),
        count,
        burst: args.burst.is_some(),
        provider_ms: args.provider_ms,
        rules,
        sample_rules: std::path::PathBuf::from("rules"),
        partitions: args.partitions,
        users: args.users,
        limits: args.limits(),
    };
    let report = runtime()?
        .block_on(herald::loadtest::drain::run(options, credentials))
        .map_err(Failure::run)?;
    std::fs::create_dir_all(&args.out).map_err(|e| Failure::run(e.to_string()))?;
    let name = if report.burst { "burst" } else { "drain" };
    let path = args
        .out
        .join(format!("{name}-{:?}-{}.json", report.rules, report.events).to_lowercase());
    let json = serde_json::to_string_pretty(&report).map_err(|e| Failure::run(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| Failure::run(e.to_string()))?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
