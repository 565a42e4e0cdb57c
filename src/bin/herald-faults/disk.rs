//! The disk-fault scenario: herald's state directory on a tmpfs of its own, filled up, turned read-only, then deleted while herald is stopped — while swipes stream in.
//!
//! Mounting needs root (the suite runs as root on the project's machines);
//! without it the scenario fails with the reason rather than pretending.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herald::util::now_ms;
use tokio::time::sleep;

use super::scene::{Report, Scene};
use super::world::Broker;
use super::Options;

/// Swipes per second during the scenario.
const RATE: u32 = 50;

/// What readiness says while the state directory takes no writes.
const NOT_WRITABLE: &str = "cannot be written";

/// What readiness says while the state store will not open.
const NOT_OPENED: &str = "cannot be opened";

/// A tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        run_mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "herald-faults-state",
            &dir.to_string_lossy(),
        ])
        .map_err(|e| format!("the disk scenario mounts a tmpfs (it needs root): {e}"))?;
        Ok(Tmpfs {
            dir: dir.to_owned(),
            mounted: true,
        })
    }

    /// Fills the file system with one file; returns its size.
    fn fill(&self) -> Result<u64, String> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).map_err(|e| format!("filler: {e}"))?;
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(format!("filler: {e}")),
            }
        }
        // The last partial pages too.
        while file.write(&[0x5a]).is_ok_and(|n| n == 1) {
            written += 1;
        }
        Ok(written)
    }

    fn empty(&self) -> Result<(), String> {
        std::fs::remove_file(self.filler()).map_err(|e| format!("filler: {e}"))
    }

    fn filler(&self) -> PathBuf {
        self.dir.join(".filler")
    }

    fn remount(&self, mode: &str) -> Result<(), String> {
        run_mount(&[
            "-o",
            &format!("remount,{mode}"),
            &self.dir.to_string_lossy(),
        ])
    }

    fn unmount(&mut self) -> Result<(), String> {
        if self.mounted {
            self.mounted = false;
            let out = Command::new("umount")
                .arg(&self.dir)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run_mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The state directory full for `hold` seconds while herald runs, then
/// read-only for `hold` seconds while it starts, then deleted while it is
/// stopped; swipes stream in throughout. Each time `/readyz` must turn 503
/// with the reason, herald must come back once the disk does (after a full
/// disk by exiting for its supervisor to restart it), and no swipe may be
/// lost or sent twice.
pub async fn disk(opts: &Options, broker: &Broker, hold: u64) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "disk", "").await?;
    let state_dir = s.state_dir();
    let mut tmpfs = Tmpfs::mount(&state_dir, "512m")?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    sleep(Duration::from_secs(8)).await;

    let start = now_ms();
    let filled = tmpfs.fill()?;
    let full = s.not_ready_since(start, NOT_WRITABLE, secs(30)).await;
    sleep(secs(hold)).await;
    tmpfs.empty()?;
    s.fault(format!("state directory full {hold} s"), start);
    let back = back_after(&mut s, i).await?;
    s.notes.push(format!(
        "full: a {} MB file filled the state directory's tmpfs; {}; {back}",
        filled >> 20,
        said(&full, start)
    ));
    let mut problems = Vec::new();
    if full.is_none() {
        problems.push("a full state directory never showed on /readyz".to_string());
    }

    // Read-only: a file system with files open for writing will not turn
    // read-only, so herald is stopped, the directory turned read-only, and
    // herald started on it (an operator's mount mistake).
    s.instances[i].sigterm();
    s.instances[i].exited(secs(30)).await;
    tmpfs.remount("ro")?;
    let start = now_ms();
    i = s.spawn()?;
    let read_only = s.not_ready_since(start, NOT_OPENED, secs(30)).await;
    sleep(secs(hold)).await;
    if !s.instances[i].alive() {
        problems.push(
            "herald exited on a read-only state directory instead of waiting with /readyz 503"
                .to_string(),
        );
    }
    tmpfs.remount("rw")?;
    let writable = std::time::Instant::now();
    s.supervise_for(secs(1)).await?;
    s.ready(i).await?;
    s.fault(
        format!("state directory read-only {hold} s at start"),
        start,
    );
    s.notes.push(format!(
        "read-only at start: {}; ready {:.1} s after the directory was writable again, without a restart",
        said(&read_only, start),
        writable.elapsed().as_secs_f64()
    ));
    if read_only.is_none() {
        problems.push("a read-only state directory never showed on /readyz".to_string());
    }

    s.instances[i].sigterm();
    s.instances[i].exited(secs(30)).await;
    tmpfs.unmount()?;
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).map_err(|e| e.to_string())?;
    }
    let start = now_ms();
    i = s.spawn()?;
    let rebuilt = s.ready(i).await?;
    s.fault(
        "state directory deleted while herald was stopped".into(),
        start,
    );
    s.notes.push(format!(
        "deleted while stopped: the next start rebuilt every table from Kafka and was ready in {:.1} s",
        rebuilt.as_secs_f64()
    ));
    sleep(secs(5)).await;
    s.stop_load().await;
    s.settle(secs(40), secs(240)).await;
    let mut report = s.finish().await?;
    report.problems.extend(problems);
    Ok(report)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Supervises instance `i` until it is ready again after a disk fault, and
/// says how.
async fn back_after(s: &mut Scene, i: usize) -> Result<String, String> {
    let began = std::time::Instant::now();
    let notes = s.notes.len();
    loop {
        s.supervise()?;
        if s.notes.len() > notes {
            break;
        }
        if began.elapsed() > secs(60) {
            return Err(
                "herald neither exited nor recovered within 60 s of the disk taking writes again"
                    .into(),
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
    s.ready(i).await?;
    Ok(format!(
        "once the disk took writes again herald exited for its supervisor and was ready again {:.1} s later",
        began.elapsed().as_secs_f64()
    ))
}

/// How readiness answered a fault that began at `start`.
fn said(seen: &Option<(i64, String)>, start: i64) -> String {
    match seen {
        Some((at, reason)) => format!(
            "/readyz 503 after {:.1} s: \"{reason}\"",
            (at - start) as f64 / 1000.0
        ),
        None => "/readyz never said the state directory could not be written".into(),
    }
}
