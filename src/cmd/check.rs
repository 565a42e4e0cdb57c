//! `herald check`: what `herald run` checks before it consumes anything —
//! the config, the rules, the channels' credentials, every topic — said all
//! at once, without starting.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use herald::config::Config;
use herald::deliver::{http_client, idle_connections_for, Channel};
use herald::kafka::topics::Creator;
use herald::metrics::Metrics;
use herald::rules::LiveRules;

use super::{init_logging, runtime, Failure, Outcome};

/// Arguments of `herald check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "herald.toml")]
    config: PathBuf,
}

/// `herald check`: exit 0 when `herald run` would start with this config,
/// else 1 with every problem and its fix.
pub fn check(args: &CheckArgs) -> Outcome {
    let mut config = Config::load(&args.config).map_err(Failure::input)?;
    init_logging("error,rdkafka=off,librdkafka=off", config.log.format);
    let mut problems = 0usize;
    let metrics = Arc::new(Metrics::new());
    let channels: BTreeSet<String> = config.channels.keys().cloned().collect();
    let sources: BTreeSet<String> = config.sources.keys().cloned().collect();
    match LiveRules::load(
        config.rules.dir.clone(),
        channels,
        sources,
        Arc::clone(&metrics),
        config.rules.allow_empty,
        config.rules.default_locale.clone(),
    ) {
        Ok(rules) => println!(
            "ok    rules: {} loaded from {}",
            rules.current().set.rules.len(),
            config.rules.dir.display()
        ),
        Err(e) => {
            problems += 1;
            println!("FAIL  rules: {e}");
        }
    }
    let http = http_client(idle_connections_for(config.channels.values()));
    for (name, channel) in &config.channels {
        let circuit = metrics.circuit_open.with_label_values(&[name]);
        match Channel::from_config(name, channel, http.clone(), circuit) {
            Ok(_) => println!("ok    channel {name}"),
            Err(e) => {
                problems += 1;
                println!("FAIL  channel {name}: {e}");
            }
        }
    }
    let checked = runtime()?
        .block_on(herald::topic_check(&mut config))
        .map_err(Failure::run)?;
    for need in &checked.to_create {
        debug_assert_eq!(need.creator, Creator::Herald);
        println!(
            "ok    topic {}: does not exist yet; herald creates it at start ({} partition(s){})",
            need.name,
            need.create_partitions,
            need.create_configs
                .iter()
                .map(|(k, v)| format!(", {k}={v}"))
                .collect::<String>()
        );
    }
    for warning in &checked.warnings {
        println!("warn  {warning}");
    }
    for problem in &checked.problems {
        println!("FAIL  {problem}");
    }
    problems += checked.problems.len();
    if problems == 0 {
        println!("herald can start with {}", args.config.display());
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::run(format!(
            "{problems} problem(s): herald run would refuse to start with {}",
            args.config.display()
        )))
    }
}
