//! `herald replay`: recorded events through the rules, sending nothing: reads
//! the input, shows progress, prints a report per rule.

use std::collections::BTreeMap;
use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::{Failure, Outcome};

use herald::analyst::parallel::{replay_parallel, threads_for, Inputs};
use herald::analyst::recorded::{decode_rate, read_lines, Recorded, Wanted};
use herald::analyst::replay::replay as run_replay;
use herald::config::Config;

/// `herald replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A JSON-lines file: `{"topic", "key", "event"}` per line, or bare events with --topic.
    #[arg(long, conflicts_with = "from_topic")]
    input: Option<PathBuf>,
    /// The source topic of bare events in --input.
    #[arg(long)]
    topic: Option<String>,
    /// Read a time range of this source topic instead (a fresh consumer that commits nothing).
    #[arg(long)]
    from_topic: Option<String>,
    /// Start of the range (RFC 3339), with --from-topic.
    #[arg(long)]
    since: Option<String>,
    /// End of the range (RFC 3339, exclusive); default: the end of the topic.
    #[arg(long)]
    until: Option<String>,
    /// Profiles as JSON lines (each with `user_id`); default with --from-topic:
    /// the profiles topic of the config.
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// The rules directory.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Channels, sources, policy and brokers come from this config file.
    #[arg(long, short, default_value = "config/herald.toml")]
    config: PathBuf,
    /// Threads, each replaying the events of a share of the users (0: one per
    /// core). The results are those of one thread; see `herald::analyst::parallel`.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Write the would-be outcomes here, one JSON line each.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Price per message by channel for the cost estimate, e.g. `sms=0.0079,push=0`.
    #[arg(long)]
    price: Option<String>,
    /// Afterwards, also time decoding alone on the same events and threads:
    /// the floor the replay's rate is measured against (BENCHMARKS.md).
    #[arg(long)]
    floor: bool,
}

/// The longest a topic read may take (a large range of a busy topic).
const READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

fn time(text: &str) -> Result<i64, String> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("`{text}` is not an RFC 3339 time"))
}

/// Runs a replay; exit 2 when it cannot be trusted (no input, a missing topic, an empty range).
pub fn replay(args: &ReplayArgs) -> Outcome {
    run(args)
        .map(|()| ExitCode::SUCCESS)
        .map_err(Failure::input)
}

fn run(args: &ReplayArgs) -> Result<(), String> {
    let config = Config::read(&args.config).map_err(|e| e.to_string())?;
    let client = herald::kafka::profile_reader_config(&config.kafka);
    let mut malformed = 0;
    let wanted = Wanted::of(&config);
    let events: Vec<Recorded> = match (&args.input, &args.from_topic) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            read_lines(
                BufReader::new(file),
                args.topic.as_deref(),
                &wanted,
                |line, why| {
                    malformed += 1;
                    eprintln!("{}:{line}: {why}; skipped", path.display());
                },
            )
        }
        (None, Some(topic)) => {
            let since = time(args.since.as_deref().ok_or("--from-topic needs --since")?)?;
            let until = args
                .until
                .as_deref()
                .map(time)
                .transpose()?
                .unwrap_or(i64::MAX);
            let records = herald::analyst::read_back(
                &client,
                topic,
                herald::analyst::ReadFrom::Time(since),
                until,
                READ_LIMIT,
            )?;
            if records.is_empty() {
                return Err(format!("no events in `{topic}` in that range"));
            }
            let mut out = Vec::new();
            for (n, r) in records.into_iter().filter(|r| !r.tombstone).enumerate() {
                match Recorded::parse(topic.clone(), r.key, &r.payload, &wanted) {
                    Ok(event) => out.push(event),
                    Err(e) => {
                        malformed += 1;
                        eprintln!("{topic} record {n}: not JSON ({e}); skipped");
                    }
                }
            }
            out
        }
        (None, None) => return Err("give --input FILE or --from-topic TOPIC --since TIME".into()),
    };
    // Profiles go to a table on disk (a temporary store), not into memory:
    // a million profiles fit in well under a gigabyte this way.
    let profiles = herald::profile::ProfileTable::on_disk(
        herald::store::Store::temporary(64 << 20)
            .and_then(|store| store.sealed_table("profiles", herald::profile::ProfileTable::FORMAT))
            .map_err(|e| e.to_string())?,
        50_000,
    );
    let metrics = herald::metrics::Metrics::new();
    let loaded = match (&args.profiles, &args.from_topic) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            #[derive(serde::Deserialize)]
            struct Keyed {
                user_id: String,
            }
            let records = std::io::BufRead::lines(std::io::BufReader::new(file))
                .map_while(Result::ok)
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| {
                    let user = serde_json::from_str::<Keyed>(&l).ok()?.user_id;
                    Some((user.into_bytes(), Some(l.into_bytes())))
                });
            profiles.load(records, &metrics)
        }
        (None, Some(_)) => {
            let records = herald::analyst::read_back(
                &client,
                &config.topics.profiles,
                herald::analyst::ReadFrom::Time(0),
                i64::MAX,
                READ_LIMIT,
            )?
            .into_iter()
            // A tombstone deletes the profile, as on the topic.
            .filter_map(|r| Some((r.key?.into_bytes(), (!r.tombstone).then_some(r.payload))));
            profiles.load(records, &metrics)
        }
        (None, None) => {
            eprintln!("warning: no --profiles: every message will be suppressed as no_profile");
            0
        }
    };
    if loaded > 0 {
        eprintln!("{loaded} profiles loaded");
    }
    let prices: BTreeMap<String, f64> = args
        .price
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (c, v) = p
                .split_once('=')
                .ok_or(format!("price `{p}` must look like sms=0.0079"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("price `{p}`: not a number"))?;
            Ok((c.trim().to_string(), v))
        })
        .collect::<Result<_, String>>()?;
    let mut out_file = args
        .out
        .as_ref()
        .map(|p| {
            std::fs::File::create(p)
                .map(std::io::BufWriter::new)
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .transpose()?;
    let total = events.len();
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut shown = std::time::Instant::now();
    let asked = match args.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // What the replay runs on, so the rate and the floor name the same threads.
    let jobs = threads_for(&config, &events, asked);
    let mut show = |done: usize| {
        if shown.elapsed().as_millis() >= 500 || done == total {
            shown = std::time::Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let bar = "#".repeat(pct / 5);
            let end = if tty { "\r" } else { "\n" };
            eprint!("replay [{bar:<20}] {pct:>3}% {done}/{total} events{end}");
        }
    };
    let out = out_file.as_mut().map(|w| w as &mut dyn Write);
    let report = if jobs > 1 {
        let inputs = Inputs {
            config: &config,
            rules_dir: &args.rules,
            profiles: &profiles,
            events: &events,
            prices: &prices,
        };
        replay_parallel(inputs, out, jobs, show)?
    } else {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(run_replay(
            &config,
            &args.rules,
            &profiles,
            &events,
            &prices,
            out,
            &mut show,
        ))?
    };
    if tty {
        eprintln!();
    }
    if let Some(mut w) = out_file {
        w.flush().map_err(|e| e.to_string())?;
    }
    print!("{}", report.text);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = report.events as f64 / secs;
    println!(
        "{} events in {:.1} s ({:.0} events/s on {jobs} thread{}){}",
        report.events,
        secs,
        rate,
        if jobs == 1 { "" } else { "s" },
        if malformed > 0 {
            format!("; {malformed} malformed lines skipped")
        } else {
            String::new()
        }
    );
    if !args.floor {
        return Ok(());
    }
    // The floor, on the same events and threads: decoding alone.
    let floor = decode_rate(&config, &events, jobs);
    println!(
        "decoding alone: {floor:.0} events/s on {jobs} thread{}; the replay ran at {:.0}% of it",
        if jobs == 1 { "" } else { "s" },
        100.0 * rate / floor
    );
    Ok(())
}
