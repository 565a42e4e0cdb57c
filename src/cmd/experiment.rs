//! `herald experiment report`: an experiment's arms — users, sends, conversions, rate and lift over control with 95 % intervals — from the outcomes and conversions topics, or from a replay's output; as a table, and as an SVG (or PNG) chart.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use herald::config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
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

/// Every record of `topic`, from its start to its end now.
fn read_topic(config: &Config, topic: &str) -> Result<Vec<Value>, Failure> {
    let mut client = herald::kafka::profile_reader_config(&config.kafka);
    client.set("group.id", "herald-experiment-report");
    let consumer: BaseConsumer = client.create().map_err(Failure::run)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(Failure::run)?;
    let partitions = herald::kafka::follow::partition_ids(&metadata);
    if partitions.is_empty() {
        return Err(Failure::input(format!("topic `{topic}` does not exist")));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(Failure::run)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(Failure::run)?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(Failure::run)?;
    let mut last = Instant::now();
    while !ends.is_empty() && last.elapsed() < Duration::from_secs(30) {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(Failure::run)?;
        last = Instant::now();
        if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
            out.push(v);
        }
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
    }
    if !ends.is_empty() {
        return Err(Failure::run(format!(
            "`{topic}` was not read to its end (no record for 30 s)"
        )));
    }
    Ok(out)
}
