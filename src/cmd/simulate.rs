//! `herald simulate`: realistic transactions, sensor readings and location pings, profiles first.

use std::process::ExitCode;
use std::time::Duration;

use herald::simulate::{self, Generator, Schedule, StreamTopics};

use super::{runtime, Failure, Outcome};

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
pub fn simulate(args: &SimulateArgs) -> Outcome {
    runtime()?.block_on(async {
        let producer = simulate::producer(&args.brokers, &[]).map_err(|e| {
            Failure::run(format!(
                "cannot create a producer for {}: {e}",
                args.brokers
            ))
        })?;
        let mut generator = Generator::new(args.seed, args.users, args.sites);
        if !args.profiles_topic.is_empty() {
            let n = simulate::publish_profiles(&producer, &args.profiles_topic, &mut generator)
                .await
                .map_err(|e| {
                    Failure::run(format!(
                        "cannot publish profiles to {}: {e}",
                        args.profiles_topic
                    ))
                })?;
            println!("published {n} profiles to {}", args.profiles_topic);
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
        Ok(if report.failed > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
