//! `herald rules diff`: who two rules reach, from the outcomes topic.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::config::Config;

use super::{Failure, Outcome};

/// Arguments of `herald rules diff`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The rule running now.
    #[arg(long)]
    old: String,
    /// The rule to compare (usually its shadow successor).
    #[arg(long)]
    new: String,
    /// How far back to read the outcomes topic, e.g. `1h`, `7d`.
    #[arg(long, default_value = "1h")]
    since: String,
    /// Brokers and the outcomes topic come from this config file.
    #[arg(long, short, default_value = "config/herald.toml")]
    config: PathBuf,
}

/// `herald rules diff`: reads the outcomes topic since `since` and compares
/// the users reached by two rules.
pub fn diff(args: &DiffArgs) -> Outcome {
    let (old, new) = (args.old.as_str(), args.new.as_str());
    use herald::analyst::diff;
    let result = (|| {
        let config = Config::read(&args.config).map_err(|e| e.to_string())?;
        let back = herald::util::parse_duration_ms(&args.since)? as i64;
        let client = herald::kafka::profile_reader_config(&config.kafka);
        let outcomes = diff::read_outcomes(
            &client,
            &config.topics.outcomes,
            herald::util::now_ms() - back,
        )?;
        let (a, b) = (diff::reach(&outcomes, old), diff::reach(&outcomes, new));
        Ok::<_, String>(diff::report(old, &a, new, &b))
    })();
    let report = result.map_err(Failure::input)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
