//! The held scenario: every swipe held by quiet hours that end two minutes later, herald killed throughout, and the held table on disk compared with the held topic; every held notice must go out once.

use std::path::Path;
use std::time::Duration;

use tokio::time::sleep;

use super::scene::{Report, Scene};
use super::state;
use super::world::Broker;
use super::Options;

/// Swipes per second.
const RATE: u32 = 50;

/// Quiet hours (Europe/Paris, the world's users' zone) from a minute ago to
/// the first whole minute at least 90 s from now: the window for
/// `policy.categories.<c>.quiet_hours`, and when it ends (epoch ms).
pub(super) fn quiet_window() -> Result<(String, i64), String> {
    let now = jiff::Timestamp::now()
        .in_tz("Europe/Paris")
        .map_err(|e| e.to_string())?;
    let hhmm = |z: &jiff::ZonedDateTime| format!("{:02}:{:02}", z.hour(), z.minute());
    let start = now
        .checked_sub(jiff::SignedDuration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let end = now
        .checked_add(jiff::SignedDuration::from_secs(150))
        .and_then(|z| {
            z.round(
                jiff::ZonedDateTimeRound::new()
                    .smallest(jiff::Unit::Minute)
                    .mode(jiff::RoundMode::Trunc),
            )
        })
        .map_err(|e| e.to_string())?;
    Ok((
        format!("{}-{}", hhmm(&start), hhmm(&end)),
        end.timestamp().as_millisecond(),
    ))
}

/// The config that holds every swipe's notice through quiet hours `window`
/// (appended after `[kafka.properties]`: its own table).
pub(super) fn hold_policy(window: &str) -> String {
    format!(
        "\n[policy.categories.transactional]\nquiet_hours = \"{window}\"\non_quiet_hours = \"hold\"\nbypass = [\"caps\"]\nmax_age_s = 3600\n"
    )
}

/// kill -9 at random moments while every swipe is held by quiet hours, and
/// around their end, when the held messages are released.
pub async fn kill9_held(opts: &Options, broker: &Broker, kills: usize) -> Result<Report, String> {
    let (window, ends_ms) = quiet_window()?;
    let mut s = Scene::new(opts, broker, "kill9-held", &hold_policy(&window)).await?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    let started = herald::util::now_ms();
    let mut k = 0;
    // Kills spread over the hold and the first half minute after its end.
    let until = ends_ms + 30_000;
    while k < kills && herald::util::now_ms() < until {
        let left = (until - herald::util::now_ms()).max(0) as u64;
        let gap = left / (kills - k + 1) as u64;
        sleep(Duration::from_millis(gap.clamp(1_000, 40_000))).await;
        let start = herald::util::now_ms();
        s.instances[i].kill9();
        s.instances[i].exited(Duration::from_secs(10)).await;
        i = s.spawn()?;
        s.fault(format!("kill -9 #{}", k + 1), start);
        k += 1;
    }
    // The release, and a little after it, whatever the kills left.
    let left = ends_ms + 15_000 - herald::util::now_ms();
    sleep(Duration::from_millis(left.max(0) as u64)).await;
    s.ready(i).await?;
    sleep(Duration::from_secs(5)).await;
    s.stop_load().await;
    let (state_dir, bootstrap, topic) = (
        s.state_dir(),
        broker.bootstrap.clone(),
        s.topics.held.clone(),
    );
    s.settle(Duration::from_secs(40), Duration::from_secs(240))
        .await;
    let mut report = s.finish().await?;
    let compared =
        tokio::task::spawn_blocking(move || compare_held(&state_dir, &bootstrap, &topic))
            .await
            .map_err(|e| e.to_string())?;
    let (held, live, differ) = compared?;
    report.notes.push(format!(
        "quiet hours {window} Europe/Paris (`on_quiet_hours = \"hold\"`): every swipe of the {} s before their end was held, then released at once; {k} kills spread over the hold and the half minute after; the held topic had {held} held messages, {live} still held at the end; the held table on disk against the topic up to its checkpoint: {} differ. Recovery after a kill inside the hold is the wait for its end (nothing is sent meanwhile).",
        (ends_ms - started) / 1000,
        differ.len()
    ));
    if live > 0 {
        report
            .problems
            .push(format!("{live} held messages never released"));
    }
    report.problems.extend(differ.into_iter().take(20));
    Ok(report)
}

/// Compares the held table herald left in `state_dir` (its first slot) with
/// the held topic up to the table's checkpoint: every key the topic still
/// holds there is on disk with its release time, and none it released is.
/// Returns the keys ever held, the keys still held at the topic's end, and
/// every difference.
pub fn compare_held(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, usize, Vec<String>), String> {
    let store = state::open_store(state_dir)?;
    let table = store
        .sealed_table("held", herald::engine::HELD_FORMAT)
        .map_err(|e| e.to_string())?;
    let checkpoint = table.checkpoint().map_err(|e| e.to_string())?;
    let held = herald::engine::HeldTable::new(table);
    let read = state::read_whole(bootstrap, topic)?;
    let (mut upto, mut at_end) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
    );
    for (partition, offset, key, value) in read.records {
        // `<deployment>/<idempotency key>`; a bare key is a tombstone of a
        // key as written before deployments were told apart.
        let key = String::from_utf8_lossy(&key.unwrap_or_default()).to_string();
        let key = key.rsplit('/').next().unwrap_or_default().to_string();
        let release = value
            .and_then(|v| serde_json::from_slice::<herald::engine::HeldRecord>(&v).ok())
            .map(|r| r.release_ms);
        if offset < checkpoint.get(&partition).copied().unwrap_or(0) {
            upto.insert(key.clone(), release);
        }
        at_end.insert(key, release);
    }
    let mut on_disk = std::collections::BTreeMap::new();
    held.for_each(|r| {
        on_disk.insert(r.key.clone(), r.release_ms);
    })
    .map_err(|e| e.to_string())?;
    let mut differ = Vec::new();
    for (key, release) in &upto {
        if on_disk.get(key).copied() != *release {
            differ.push(format!(
                "held {key}: the topic says {release:?} up to the checkpoint, the disk {:?}",
                on_disk.get(key)
            ));
        }
    }
    for key in on_disk.keys() {
        if !upto.contains_key(key) {
            differ.push(format!(
                "held {key}: on disk, not in the topic below the checkpoint"
            ));
        }
    }
    let live = at_end.values().filter(|r| r.is_some()).count();
    Ok((at_end.len(), live, differ))
}
