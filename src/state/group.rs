//! Group commit: a table's writes that arrive while one commit is on disk go to disk together, in the next one.
//!
//! The first writer to find no commit running commits, for itself and for
//! every write queued meanwhile, until the queue is empty; the others wait
//! to be told their write is on disk. Under load a commit carries many
//! writes (one journal write and one checkpoint for all); alone, a write is
//! committed at once, as before. A commit that fails is retried every
//! second by its committer ([`Table::until_written`]), and every writer of
//! the group waits for it: nothing after them is taken as done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::store::{StoreError, Table};

/// The writes of one table waiting for the next commit.
pub struct GroupCommit<T> {
    queue: Mutex<Vec<Queued<T>>>,
    committing: AtomicBool,
}

type Queued<T> = (T, oneshot::Sender<()>);

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            committing: AtomicBool::new(false),
        }
    }
}

impl<T> GroupCommit<T> {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued<T>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once `write` is on disk: committed by `commit`, with the
    /// writes queued beside it, in the order they were queued.
    pub async fn write(
        &self,
        what: &str,
        write: T,
        commit: impl Fn(&[T]) -> Result<(), StoreError>,
    ) {
        let (done, on_disk) = oneshot::channel();
        self.queue().push((write, done));
        self.lead(what, &commit).await;
        // Told by whoever committed it; a committer dropped mid-commit put
        // its group back (`Leading`), and the next writer commits it.
        if on_disk.await.is_err() {
            tracing::error!("{what}: a group commit ended without its writes");
        }
    }

    /// Commits what is queued until nothing is, unless another writer is
    /// committing already (it will find what was queued).
    async fn lead(&self, what: &str, commit: &impl Fn(&[T]) -> Result<(), StoreError>) {
        // Queued after the committer's last look but before it let go: seen
        // here, by the check that follows its letting go.
        while !self.queue().is_empty() {
            if self.committing.swap(true, Ordering::AcqRel) {
                return;
            }
            let mut leading = Leading {
                group: self,
                writes: Vec::new(),
                done: Vec::new(),
            };
            loop {
                let queued = std::mem::take(&mut *self.queue());
                if queued.is_empty() {
                    break;
                }
                (leading.writes, leading.done) = queued.into_iter().unzip();
                Table::until_written(what, || commit(&leading.writes)).await;
                leading.writes.clear();
                for done in leading.done.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// The committer's turn: when it ends (or its future is dropped mid-way,
/// which only a shutdown's abort does), a group not yet on disk goes back
/// to the queue's front and another writer may commit.
struct Leading<'a, T> {
    group: &'a GroupCommit<T>,
    writes: Vec<T>,
    done: Vec<oneshot::Sender<()>>,
}

impl<T> Drop for Leading<'_, T> {
    fn drop(&mut self) {
        if !self.done.is_empty() {
            let mut queue = self.group.queue();
            let later = std::mem::take(&mut *queue);
            let back = std::mem::take(&mut self.writes).into_iter();
            queue.extend(back.zip(std::mem::take(&mut self.done)));
            queue.extend(later);
        }
        self.group.committing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_arrive_during_a_commit_share_the_next_and_each_is_told() {
        let group = Arc::new(GroupCommit::<u32>::default());
        let commits = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let writers = (0..200u32).map(|i| {
            let (group, commits) = (Arc::clone(&group), Arc::clone(&commits));
            tokio::spawn(async move {
                group
                    .write("test table", i, |writes| {
                        // A commit that takes a while, as a disk's does.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        commits.lock().unwrap().push(writes.to_vec());
                        Ok(())
                    })
                    .await;
            })
        });
        for w in futures::future::join_all(writers).await {
            w.unwrap();
        }
        let commits = commits.lock().unwrap();
        let mut written: Vec<u32> = commits.iter().flatten().copied().collect();
        written.sort_unstable();
        assert_eq!(
            written,
            (0..200).collect::<Vec<_>>(),
            "each write committed once"
        );
        assert!(
            commits.len() < 200,
            "writes queued during a commit went to disk together ({} commits)",
            commits.len()
        );
    }
}
