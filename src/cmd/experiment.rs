//! `herald experiment report`: an experiment's arms — users, sends, conversions, rate and lift over control with 95 % intervals — from the outcomes and conversions topics, or from a replay's output; as a table, and as an SVG (or PNG) chart.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use herald::config::Config;
use serde_json::Value;

use super::{Failure, Outcome};

/// Arguments of `herald experiment report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The experiment's id (`experiment.id`, else its rule's id).
    experiment: String,
    /// Read outcome and conversion records from this JSON-lines file (the
    /// `--out` of `herald replay`) instead of the topics.
    #[arg(long)]
    from: Option<PathBuf>,
    /// The configuration file: brokers and the outcomes and conversions topics.
    #[arg(long, short, default_value = "herald.toml")]
    config: PathBuf,
    /// Also draw the chart here: `.svg`, or `.png` (with the tools feature).
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// `herald experiment report`.
pub fn report(args: &ReportArgs) -> Outcome {
    let records = match &args.from {
        Some(path) => from_file(path)?,
        None => {
            let config = Config::read(&args.config).map_err(Failure::input)?;
            let mut records = read_topic(&config, &config.topics.outcomes)?;
            records.extend(read_topic(&config, &config.topics.conversions)?);
            records
        }
    };
    let report = herald::analyst::experiment::report(&args.experiment, records);
    if report.arms.is_empty() {
        return Err(Failure::input(format!(
            "no outcome of experiment `{}` in the records read (is it the experiment's id, and did it send anything?)",
            args.experiment
        )));
    }
    print!("{}", herald::analyst::experiment::text(&report));
    if let Some(path) = &args.chart {
        let svg = herald::analyst::experiment::svg(&report);
        write_chart(&svg, path)?;
        println!("chart: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_chart(svg: &str, path: &std::path::Path) -> Result<(), Failure> {
    if path.extension().and_then(|e| e.to_str()) == Some("png") {
        #[cfg(feature = "tools")]
        return herald::loadtest::plot::write(svg, path).map_err(Failure::run);
        #[cfg(not(feature = "tools"))]
        return Err(Failure::input(
            "a PNG chart needs the tools feature (the renderer); write `.svg`",
        ));
    }
    std::fs::write(path, svg).map_err(|e| Failure::run(format!("{}: {e}", path.display())))
}

fn from_file(path: &std::path::Path) -> Result<Vec<Value>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).map_err(|e| {
            Failure::input(format!(
                "{}:{}: not a JSON record: {e}",
                path.display(),
                i + 1
            ))
        })?;
        out.push(value);
    }
    Ok(out)
}

fn read_topic(config: &Config, topic: &str) -> Result<Vec<Value>, Failure> {
    herald::analyst::experiment::read_topic(config, topic).map_err(Failure::run)
}
