//! The `herald` command line: one file per command. Each returns an
//! [`Outcome`]; `main` prints a [`Failure`] once, as `error: …`, and exits
//! with its code (2: the input or the config is wrong; 1: the run failed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
#[cfg(feature = "tools")]
mod demo;
mod experiment;
mod inspect;
#[cfg(feature = "tools")]
mod loadtest;
mod replay;
mod rules_check;
mod rules_diff;
mod rules_eval;
mod rules_test;
mod run;
#[cfg(feature = "tools")]
mod simulate;
#[cfg(feature = "tools")]
mod standin;

/// Why a command stopped, said once by `main`.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad input: a config, a file or an argument (exit 2).
    pub fn input(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// The run itself failed (exit 1).
    pub fn run(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// What a command ends with: its exit code, or a failure to print.
pub type Outcome = Result<ExitCode, Failure>;

/// herald — Kafka events in, rules from files, push and SMS out.
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "herald.toml")]
        config: PathBuf,
    },
    /// Check what `herald run` checks before it starts — rules, channels,
    /// every topic (exists, partitions, compaction, permissions) — without
    /// starting; exit 1 with each problem and its fix.
    Check(check::CheckArgs),
    /// Print the newest records of a topic herald writes as JSON lines, its
    /// binary intents decoded.
    Inspect(inspect::InspectArgs),
    /// Run the demo: sample rules, a realistic stream, a provider stand-in, a live feed.
    #[cfg(feature = "tools")]
    Demo(demo::DemoArgs),
    /// Serve a local stand-in for FCM v1 and Twilio (prints each request, masked).
    #[cfg(feature = "tools")]
    Standin(standin::StandinArgs),
    /// Measure latency and throughput against a bare rdkafka consumer (see BENCHMARKS.md).
    #[cfg(feature = "tools")]
    Loadtest(loadtest::LoadtestArgs),
    /// Publish realistic transactions, sensor readings and location pings.
    #[cfg(feature = "tools")]
    Simulate(simulate::SimulateArgs),
    /// Replay recorded events (a JSON-lines file or a time range of a source
    /// topic) through the rules, sending nothing: a report per rule.
    Replay(replay::ReplayArgs),
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Experiments: what each arm did against its control arm.
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Per arm: users, sends, conversions, rate, and the lift over the
    /// control arm with a 95 % interval, from the outcomes and conversions
    /// topics or a replay's output; `--chart` draws it.
    Report(experiment::ReportArgs),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check every rule file under DIR; print every error, or a summary per file.
    Check(rules_check::CheckArgs),
    /// Compare two rules over a window of the outcomes topic: who the new
    /// (shadow) rule would reach that the old one does not, and the reverse.
    Diff(rules_diff::DiffArgs),
    /// Evaluate one event by hand: which rules match, what each would send,
    /// why any would be suppressed. Sends nothing.
    Eval(rules_eval::EvalArgs),
    /// Run the rule tests in PATH/tests/*.yaml (or one test file) on a virtual
    /// clock, sending nothing; exit 1 if any fails.
    Test(rules_test::TestArgs),
}

/// Runs the command the arguments name.
pub fn dispatch(args: Args) -> Outcome {
    match args.command {
        Command::Run { config } => run::run(&config),
        Command::Check(args) => check::check(&args),
        Command::Inspect(args) => inspect::inspect(&args),
        #[cfg(feature = "tools")]
        Command::Simulate(args) => simulate::simulate(&args),
        #[cfg(feature = "tools")]
        Command::Demo(args) => demo::demo(&args),
        #[cfg(feature = "tools")]
        Command::Loadtest(args) => loadtest::loadtest(&args),
        #[cfg(feature = "tools")]
        Command::Standin(args) => standin::standin(&args),
        Command::Replay(args) => replay::replay(&args),
        Command::Experiment { command } => match command {
            ExperimentCommand::Report(args) => experiment::report(&args),
        },
        Command::Rules { command } => match command {
            RulesCommand::Check(args) => rules_check::check(&args),
            RulesCommand::Diff(args) => rules_diff::diff(&args),
            RulesCommand::Eval(args) => rules_eval::eval(&args),
            RulesCommand::Test(args) => rules_test::test(&args),
        },
    }
}

/// A runtime for a command's async work.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))
}

/// Logs to stderr at `RUST_LOG`, else `default_filter`.
fn init_logging(default_filter: &str, format: herald::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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

/// Warnings only, for commands whose output is the point (demo, loadtest).
#[cfg(feature = "tools")]
fn init_quiet_logging() {
    init_logging(
        "warn,librdkafka=off,rdkafka=off",
        herald::config::LogFormat::Text,
    );
}
