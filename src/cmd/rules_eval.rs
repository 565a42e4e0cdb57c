//! `herald rules eval`: one event through the rules by hand, nothing sent.

use std::path::Path;
use std::process::ExitCode;

use herald::config::Config;

use super::{Failure, Outcome};

/// `herald rules eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A JSON file with the event as the source publishes it.
    #[arg(long)]
    event: std::path::PathBuf,
    /// The source topic it comes from.
    #[arg(long, default_value = "transactions")]
    topic: String,
    /// The Kafka key (the state key, e.g. the card).
    #[arg(long)]
    key: Option<String>,
    /// A JSON file with the recipient's profile.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
    /// When it happens (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// The rules directory.
    #[arg(long, default_value = "rules")]
    rules: std::path::PathBuf,
    /// Channels, sources and policy come from this config file.
    #[arg(long, short, default_value = "config/herald.toml")]
    config: std::path::PathBuf,
}

/// `herald rules eval`: prints the evaluation as JSON; exit 2 on bad input.
pub fn eval(args: &EvalArgs) -> Outcome {
    let read_json = |path: &Path| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let result = (|| {
        let config = Config::read(&args.config).map_err(|e| e.to_string())?;
        let request = herald::analyst::evaluate::Request {
            topic: args.topic.clone(),
            key: args.key.clone(),
            event: read_json(&args.event)?,
            profile: args.profile.as_deref().map(read_json).transpose()?,
            at: args.at.clone(),
        };
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(herald::analyst::evaluate::evaluate(
            &config,
            &args.rules,
            &request,
        ))
    })();
    let answer = result.map_err(Failure::input)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
