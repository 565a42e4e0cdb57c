//! What each subcommand does: start the service, or check rule files.

use std::path::Path;
use std::process::ExitCode;

use std::time::Duration;

use herald::config::Config;
use herald::rules::{load_dir, Known};
use herald::simulate::{self, Generator, Schedule, StreamTopics};

/// `herald run`: loads the config, runs until SIGINT or SIGTERM, exits 0 after a clean stop.
pub fn run(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herald::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `herald rules check`: every error in every file, exit 1 if any; else one line per file.
pub fn check(dir: &Path, config_path: Option<&Path>) -> ExitCode {
    let config = match config_path.map(Config::read).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let channels = config
        .as_ref()
        .map(|c| c.channels.keys().cloned().collect());
    let sources = config.as_ref().map(|c| c.sources.keys().cloned().collect());
    let known = Known {
        channels: channels.as_ref(),
        sources: sources.as_ref(),
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
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `herald rules test`: runs the rule tests; a diff with file:line per failing
/// case; exit 1 if any fails, 2 if a test file cannot be run.
pub fn rules_test(path: &Path, config_path: &Path) -> ExitCode {
    let config = match Config::read(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (rules_dir, files) = match herald::analyst::ruletest::test_files(path) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if files.is_empty() {
        eprintln!("error: no test files in {}/tests", path.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let results = runtime.block_on(herald::analyst::ruletest::run_file(
            &config, &rules_dir, file,
        ));
        match results {
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(results) => {
                for r in results {
                    let at = format!("{}:{}", r.file.display(), r.line);
                    match r.failure {
                        None => {
                            passed += 1;
                            println!("ok    {at}  {}", r.name);
                        }
                        Some(diff) => {
                            failed += 1;
                            println!("FAIL  {at}  {}\n{diff}", r.name);
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `herald rules diff`: reads the outcomes topic since `since` and compares
/// the users reached by two rules.
pub fn rules_diff(old: &str, new: &str, since: &str, config_path: &Path) -> ExitCode {
    use herald::analyst::diff;
    let result = (|| {
        let config = Config::read(config_path).map_err(|e| e.to_string())?;
        let back = herald::util::parse_duration_ms(since)? as i64;
        let client = herald::kafka::profile_reader_config(&config.kafka);
        let outcomes = diff::read_outcomes(
            &client,
            &config.topics.outcomes,
            herald::util::now_ms() - back,
        )?;
        let (a, b) = (diff::reach(&outcomes, old), diff::reach(&outcomes, new));
        Ok::<_, String>(diff::report(old, &a, new, &b))
    })();
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

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
pub fn rules_eval(args: &EvalArgs) -> ExitCode {
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
    match result {
        Ok(answer) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Warnings only, for commands whose output is the point (demo, loadtest).
fn init_quiet_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,librdkafka=off,rdkafka=off"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn init_logging(format: herald::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        herald::config::LogFormat::Json => builder.json().with_current_span(false).init(),
        herald::config::LogFormat::Text => {
            // Colour only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init()
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// Arguments of `herald simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Events per second (open loop).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Stop after this many events instead.
    #[arg(long)]
    count: Option<u64>,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cardholders in the population.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Cold-chain sites (four freezers each).
    #[arg(long, default_value_t = 10)]
    sites: usize,
    /// Publish the population's profiles to this topic first (empty to skip).
    #[arg(long, default_value = "profiles")]
    profiles_topic: String,
    #[arg(long, default_value = "transactions")]
    transactions_topic: String,
    #[arg(long, default_value = "sensors")]
    sensors_topic: String,
    #[arg(long, default_value = "locations")]
    locations_topic: String,
}

/// `herald simulate`: profiles first, then events at the given rate; reports what it sent.
pub fn simulate(args: &SimulateArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let producer = match simulate::producer(&args.brokers, &[]) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot create a producer for {}: {e}", args.brokers);
                return ExitCode::FAILURE;
            }
        };
        let mut generator = Generator::new(args.seed, args.users, args.sites);
        if !args.profiles_topic.is_empty() {
            match simulate::publish_profiles(&producer, &args.profiles_topic, &mut generator).await
            {
                Ok(n) => println!("published {n} profiles to {}", args.profiles_topic),
                Err(e) => {
                    eprintln!(
                        "error: cannot publish profiles to {}: {e}",
                        args.profiles_topic
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        let topics = StreamTopics {
            transactions: args.transactions_topic.clone(),
            sensors: args.sensors_topic.clone(),
            locations: args.locations_topic.clone(),
        };
        let schedule = Schedule {
            rate: args.rate,
            duration: Some(Duration::from_secs_f64(args.duration)),
            count: args.count,
        };
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let report = simulate::run(
            &producer,
            &topics,
            |now| generator.next(now),
            schedule,
            stop,
        )
        .await;
        for (topic, n) in &report.sent {
            println!("{topic}: {n} events");
        }
        println!(
            "sent {} events in {:.1} s ({:.0}/s), {} failed",
            report.total(),
            report.elapsed.as_secs_f64(),
            report.total() as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.failed
        );
        if report.failed > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

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
pub fn demo(args: &DemoArgs) -> ExitCode {
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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("\n(stopping: Ctrl-C)");
    };
    match runtime.block_on(herald::demo::run(options, credentials, stop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Arguments of `herald standin`.
#[derive(clap::Args)]
pub struct StandinArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
}

/// `herald standin`: credentials from HERALD_FCM_ACCESS_TOKEN, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN.
pub fn standin(args: &StandinArgs) -> ExitCode {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let credentials = herald::standin::Credentials {
        fcm_token: var("HERALD_FCM_ACCESS_TOKEN"),
        twilio_sid: var("TWILIO_ACCOUNT_SID"),
        twilio_token: var("TWILIO_AUTH_TOKEN"),
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let standin = match herald::standin::StandIn::start(args.listen, credentials).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        println!("provider stand-in (FCM v1, Twilio) on {}", standin.base_url());
        let mut arrivals = standin.arrivals();
        loop {
            tokio::select! {
                a = arrivals.recv() => if let Ok(a) = a {
                    let late = a.event_ms.map(|e| format!(" {} ms after the event", a.at_ms - e)).unwrap_or_default();
                    println!("{} {} {}{}: {}", a.api, a.rule.as_deref().unwrap_or("-"), a.recipient, late, a.text);
                },
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            }
        }
    })
}

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
pub fn loadtest(args: &LoadtestArgs) -> ExitCode {
    init_quiet_logging();
    let rules = match args.rules.as_str() {
        "sample" => herald::loadtest::RuleLoad::Sample,
        n => match n.parse() {
            Ok(n) => herald::loadtest::RuleLoad::Generated(n),
            Err(_) => {
                eprintln!("error: --rules takes `sample` or a number, e.g. 1000; got `{n}`");
                return ExitCode::from(2);
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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(herald::loadtest::run(options, credentials)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
