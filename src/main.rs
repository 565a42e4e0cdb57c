//! The `herald` command: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod cli_replay;

/// mimalloc: the per-event path allocates small, short-lived strings and
/// maps; glibc's malloc and free cost about a quarter of its instructions
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// herald — Kafka events in, rules from files, push and SMS out.
#[derive(Parser)]
#[command(version, about)]
struct Args {
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
    /// Run the demo: sample rules, a realistic stream, a provider stand-in, a live feed.
    Demo(cli::DemoArgs),
    /// Serve a local stand-in for FCM v1 and Twilio (prints each request, masked).
    Standin(cli::StandinArgs),
    /// Measure latency and throughput against a bare rdkafka consumer (see BENCHMARKS.md).
    Loadtest(cli::LoadtestArgs),
    /// Publish realistic transactions, sensor readings and location pings.
    Simulate(cli::SimulateArgs),
    /// Replay recorded events (a JSON-lines file or a time range of a source
    /// topic) through the rules, sending nothing: a report per rule.
    Replay(cli_replay::ReplayArgs),
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check every rule file under DIR; print every error, or a summary per file.
    Check {
        /// The rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
        /// Also check channel and source names against this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Compare two rules over a window of the outcomes topic: who the new
    /// (shadow) rule would reach that the old one does not, and the reverse.
    Diff {
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
    },
    /// Evaluate one event by hand: which rules match, what each would send,
    /// why any would be suppressed. Sends nothing.
    Eval(cli::EvalArgs),
    /// Run the rule tests in PATH/tests/*.yaml (or one test file) on a virtual
    /// clock, sending nothing; exit 1 if any fails.
    Test {
        /// The rules directory, or one test file.
        #[arg(default_value = "rules")]
        path: PathBuf,
        /// Channels, sources and policy come from this config file.
        #[arg(long, short, default_value = "config/herald.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run { config } => cli::run(&config),
        Command::Simulate(args) => cli::simulate(&args),
        Command::Demo(args) => cli::demo(&args),
        Command::Loadtest(args) => cli::loadtest(&args),
        Command::Standin(args) => cli::standin(&args),
        Command::Replay(args) => cli_replay::replay(&args),
        Command::Rules {
            command: RulesCommand::Check { dir, config },
        } => cli::check(&dir, config.as_deref()),
        Command::Rules {
            command: RulesCommand::Test { path, config },
        } => cli::rules_test(&path, &config),
        Command::Rules {
            command: RulesCommand::Eval(args),
        } => cli::rules_eval(&args),
        Command::Rules {
            command:
                RulesCommand::Diff {
                    old,
                    new,
                    since,
                    config,
                },
        } => cli::rules_diff(&old, &new, &since, &config),
    }
}
