//! After a failed write to the state store: probes the state directory until it takes writes again, then asks for a fresh process.
//!
//! fjall stops taking writes for good after a failed journal write (its
//! database is "poisoned"), so a store whose disk filled up or turned
//! read-only cannot carry on in this process even once the disk is fixed.
//! Meanwhile `/readyz` is 503 with the store's error, and every stage waits
//! on its write: no offset is committed past work the store has not taken,
//! so nothing is lost. Once a probe file can be written and synced again,
//! [`watch_disk`] reports it through `restart`: herald stops and exits
//! non-zero, and the fresh process its supervisor starts opens the store at
//! its last whole batch and reads each changelog past its checkpoint.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Store;

/// How often the directory is probed while the store has a fault.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Bytes the probe writes: more than a page, so a full disk refuses it.
const PROBE_BYTES: usize = 64 * 1024;

/// Watches `store` until `shutdown`; once it has a fault and its directory
/// takes writes again, calls `restart` with the reason and returns.
pub async fn watch_disk(
    store: Store,
    restart: impl Fn(String) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let Some(fault) = store.fault() else {
            continue;
        };
        let dir = store.dir().to_owned();
        let probe = tokio::task::spawn_blocking(move || probe(&dir)).await;
        match probe {
            Ok(Ok(())) => {
                restart(format!(
                    "the state directory {} takes writes again after a failed write ({fault}); exiting so that a fresh process opens the store at its last whole batch and reads the changelogs past its checkpoints",
                    store.dir().display()
                ));
                return;
            }
            Ok(Err(e)) if !reported => {
                warn!(dir = %store.dir().display(), error = %e, "state directory still not writable; probing every 2 s");
                reported = true;
            }
            _ => {}
        }
    }
}

/// Writes, syncs and removes a probe file in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".writable-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    if written.is_ok() {
        info!(dir = %dir.display(), "state directory writable again");
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_writes_into_the_directory_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("gone");
        assert!(
            probe(&missing).is_err(),
            "a missing directory is not writable"
        );
    }
}
