//! `herald rules check`: every error in every rule file at once, or a summary per file.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::config::Config;
use herald::rules::{load_dir, Known};

use super::{Failure, Outcome};

/// Arguments of `herald rules check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The rules directory.
    #[arg(default_value = "rules")]
    dir: PathBuf,
    /// Also check channel and source names against this config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// `herald rules check`: every error in every file, exit 1 if any; else one line per file.
pub fn check(args: &CheckArgs) -> Outcome {
    let (dir, config_path) = (args.dir.as_path(), args.config.as_deref());
    let config = config_path
        .map(Config::read)
        .transpose()
        .map_err(Failure::input)?;
    let channels = config
        .as_ref()
        .map(|c| c.channels.keys().cloned().collect());
    let sources = config.as_ref().map(|c| c.sources.keys().cloned().collect());
    let default_locale = config.as_ref().and_then(|c| c.rules.default_locale.clone());
    let known = Known {
        channels: channels.as_ref(),
        sources: sources.as_ref(),
        default_locale: default_locale.as_deref(),
    };
    match load_dir(dir, &known) {
        Ok(set) => {
            for file in &set.files {
                println!(
                    "{}: ok, {} rules ({} enabled)",
                    file.path, file.rules, file.enabled
                );
            }
            for warning in set.rules.iter().flat_map(|r| &r.warnings) {
                println!("warning: {warning}");
            }
            println!("{} rules in {} files", set.rules.len(), set.files.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
