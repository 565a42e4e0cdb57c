//! Scenarios where a process used to hang: the broker frozen under a group of two or three instances, and a SIGTERM with the broker frozen a moment later (a host shutting down); every process must regain its work or exit, within a bound.

use std::time::{Duration, Instant};

use tokio::time::sleep;

use super::scene::{Report, Scene};
use super::world::Broker;
use super::Options;

/// Swipes per second.
const RATE: u32 = 50;
/// herald's stop takes at most its grace (5 s in the suite's config) plus
/// 10 s before its exit guard ends it; a few seconds more for the process
/// to go.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// The broker frozen `frozen` s under `size` instances, `runs` times; every
/// instance that exits is restarted, as a supervisor would. Fails when a
/// process neither serves nor exits: at the end, every instance must be
/// ready or gone, and stop within 30 s of SIGTERM (`Scene::finish`).
pub async fn freeze_group(
    opts: &Options,
    broker: &Broker,
    size: usize,
    runs: usize,
    frozen: u64,
) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, &format!("freeze-group-{size}"), "").await?;
    for _ in 0..size {
        let i = s.spawn()?;
        s.ready(i).await?;
    }
    s.start_load(RATE);
    let mut exits = 0;
    for run in 0..runs {
        sleep(Duration::from_secs(8)).await;
        let start = herald::util::now_ms();
        tokio::task::block_in_place(|| broker.freeze())?;
        sleep(Duration::from_secs(frozen)).await;
        tokio::task::block_in_place(|| broker.thaw())?;
        s.fault(
            format!("broker SIGSTOP {frozen} s (run {})", run + 1),
            start,
        );
        let before = s.notes.len();
        s.supervise_for(Duration::from_secs(30)).await?;
        exits += s.notes.len() - before;
    }
    s.stop_load().await;
    s.supervise_for(Duration::from_secs(100)).await?;
    let mut report = s.finish().await?;
    report.notes.push(format!(
        "{size} instances, the broker frozen {frozen} s {runs} times; {exits} exits on their own (restarted, as a supervisor would); every process regained its work or exited, and stopped within 30 s of SIGTERM at the end"
    ));
    Ok(report)
}

/// SIGTERM under load with the broker frozen 0.2 s later, or 0.5 s before
/// (a host shutting down stops both, in either order): herald must exit
/// within [`EXIT_BOUND`] however its clients hang, `runs` times; a fresh
/// instance then sends what was left, once.
pub async fn sigterm_frozen(
    opts: &Options,
    broker: &Broker,
    runs: usize,
) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "sigterm-frozen", "").await?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    let mut took = Vec::new();
    for run in 0..runs {
        sleep(Duration::from_secs(5)).await;
        let start = herald::util::now_ms();
        // Both orders a host's shutdown may take: the broker a moment
        // after herald, or before it.
        let broker_first = run % 2 == 1;
        let waited = match broker_first {
            false => {
                s.instances[i].sigterm();
                let waited = Instant::now();
                sleep(Duration::from_millis(200)).await;
                tokio::task::block_in_place(|| broker.freeze())?;
                waited
            }
            true => {
                tokio::task::block_in_place(|| broker.freeze())?;
                sleep(Duration::from_millis(500)).await;
                s.instances[i].sigterm();
                Instant::now()
            }
        };
        let code = s.instances[i].exited(EXIT_BOUND).await;
        let seconds = waited.elapsed().as_secs_f64();
        tokio::task::block_in_place(|| broker.thaw())?;
        match code {
            Some(code) => took.push(format!(
                "{seconds:.1} s (code {code}; {})",
                match broker_first {
                    true => "broker frozen first",
                    false => "broker frozen 0.2 s after",
                }
            )),
            None => {
                s.instances[i].kill9();
                return Err(format!(
                    "run {}: herald still running {} s after SIGTERM with the broker frozen",
                    run + 1,
                    EXIT_BOUND.as_secs()
                ));
            }
        }
        i = s.spawn()?;
        s.ready(i).await?;
        s.fault(
            format!("SIGTERM with the broker frozen (run {})", run + 1),
            start,
        );
    }
    s.stop_load().await;
    s.settle(Duration::from_secs(40), Duration::from_secs(240))
        .await;
    let mut report = s.finish().await?;
    report.notes.push(format!(
        "{runs} SIGTERMs with the broker frozen: herald exited after {} (bound {} s: the grace, 5 s, plus 10 s)",
        took.join(", "),
        EXIT_BOUND.as_secs()
    ));
    Ok(report)
}
