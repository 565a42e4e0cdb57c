//! Group commit: a table's writes that arrive while one commit is on disk go to disk together, in the next one (or, for writes nobody waits for, behind).
//!
//! A writer that finds no commit running commits one round: every write
//! queued then, its own among them. Writers that arrive meanwhile queue and
//! wait; when the round is on disk, its committer tells each of its writers,
//! and hands the turn to the first writer still queued, who commits the
//! next round. So each commit carries what gathered during the last (one
//! journal write and one checkpoint for all of them), no writer waits
//! longer than about two commits, and nobody commits for others for ever
//! under a steady stream. Alone, a write is committed at once, as before. A
//! commit that fails is retried every second by its committer
//! ([`Table::until_written`]), and every writer of the round waits for it:
//! nothing after them is taken as done.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::store::{StoreError, Table};

/// The writes of one table waiting for the next commit.
pub struct GroupCommit<T> {
    state: Mutex<Queue<T>>,
}

struct Queue<T> {
    waiting: Vec<(T, Option<oneshot::Sender<Turn>>)>,
    /// A round is being committed, or its turn handed to a writer.
    committing: bool,
}

/// What a waiting writer is told.
enum Turn {
    /// Its write is on disk.
    OnDisk,
    /// It commits the next round (its own write among it).
    Commit,
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(Queue {
                waiting: Vec::new(),
                committing: false,
            }),
        }
    }
}

impl<T> GroupCommit<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once `write` is on disk: committed by `commit`, with the
    /// writes queued beside it, in the order they were queued.
    pub async fn write(
        &self,
        what: &str,
        write: T,
        commit: impl Fn(&[T]) -> Result<(), StoreError>,
    ) {
        let (tell, told) = oneshot::channel();
        let first = {
            let mut state = self.state();
            state.waiting.push((write, Some(tell)));
            !std::mem::replace(&mut state.committing, true)
        };
        if !first {
            match told.await {
                Ok(Turn::OnDisk) => return,
                Ok(Turn::Commit) => {}
                Err(_) => {
                    // Only when the table's writer itself is dropped (the
                    // process ending): a committer dropped mid-round puts
                    // its writes, and their writers' turns, back.
                    tracing::error!("{what}: the table closed before this write was on disk");
                    return;
                }
            }
        }
        self.commit_round(what, &commit).await;
    }

    /// Commits every write queued now, tells their writers, and hands the
    /// turn on.
    async fn commit_round(&self, what: &str, commit: &impl Fn(&[T]) -> Result<(), StoreError>) {
        let queued = std::mem::take(&mut self.state().waiting);
        let mut round = Round {
            group: self,
            writes: Vec::with_capacity(queued.len()),
            tell: Vec::with_capacity(queued.len()),
        };
        (round.writes, round.tell) = queued.into_iter().unzip();
        Table::until_written(what, || commit(&round.writes)).await;
        round.writes.clear();
        for tell in round.tell.drain(..).flatten() {
            let _ = tell.send(Turn::OnDisk);
        }
    }
}

/// A round being committed. When it ends (or its future is dropped
/// mid-way, which only a shutdown's abort does), writes not yet on disk go
/// back to the queue's front, and the turn goes to the first queued writer
/// still waiting, or is let go when none is.
struct Round<'a, T> {
    group: &'a GroupCommit<T>,
    writes: Vec<T>,
    tell: Vec<Option<oneshot::Sender<Turn>>>,
}

impl<T> Drop for Round<'_, T> {
    fn drop(&mut self) {
        let mut state = self.group.state();
        if !self.writes.is_empty() {
            let later = std::mem::take(&mut state.waiting);
            let back = std::mem::take(&mut self.writes).into_iter();
            state
                .waiting
                .extend(back.zip(std::mem::take(&mut self.tell)));
            state.waiting.extend(later);
        }
        for (_, tell) in state.waiting.iter_mut() {
            if let Some(t) = tell.take() {
                match t.send(Turn::Commit) {
                    Ok(()) => return,
                    // Dropped meanwhile: its write is committed by the
                    // next one to take the turn.
                    Err(_) => continue,
                }
            }
        }
        // Nobody waiting to take the turn: the next writer commits.
        state.committing = false;
    }
}

/// Writes their writers do not wait for: queued, and put on disk by one
/// committer at a time, each round what gathered during the round before
/// and a short linger. For a table whose every write is already durable
/// elsewhere (a changelog mirrored to disk): its writers need the write
/// ordered and bounded, not on disk, so a key written twice within a
/// round can be written once. `room` bounds the writes queued or being
/// committed: past it a writer waits (a failing disk stops its writers,
/// as [`GroupCommit`]'s do).
pub struct WriteBehind<T> {
    state: Mutex<Behind<T>>,
    room: Arc<Semaphore>,
}

struct Behind<T> {
    writes: Vec<T>,
    /// The room the queued writes hold, let go once they are on disk.
    held: Option<OwnedSemaphorePermit>,
    /// A committer is running: the next write need not start one.
    committing: bool,
}

/// One round of a [`WriteBehind`], holding its writes' room until dropped.
pub struct BehindRound<T> {
    pub writes: Vec<T>,
    _room: Option<OwnedSemaphorePermit>,
}

impl<T> WriteBehind<T> {
    pub fn new(room: usize) -> WriteBehind<T> {
        WriteBehind {
            state: Mutex::new(Behind {
                writes: Vec::new(),
                held: None,
                committing: false,
            }),
            room: Arc::new(Semaphore::new(room)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Behind<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `write` once there is room, in the order of the calls that
    /// got room. True when no committer is running: the caller starts one,
    /// which takes [`WriteBehind::next_round`] until it gives `None`.
    pub async fn queue(&self, write: T) -> bool {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .expect("the room's semaphore is never closed");
        let mut state = self.state();
        state.writes.push(write);
        match &mut state.held {
            Some(held) => held.merge(permit),
            None => state.held = Some(permit),
        }
        !std::mem::replace(&mut state.committing, true)
    }

    /// Every write queued now, for the committer to put on disk; `None`
    /// when there is none, and the committer ends (the next write starts
    /// another).
    pub fn next_round(&self) -> Option<BehindRound<T>> {
        let mut state = self.state();
        if state.writes.is_empty() {
            state.committing = false;
            return None;
        }
        Some(BehindRound {
            writes: std::mem::take(&mut state.writes),
            _room: state.held.take(),
        })
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_behind_go_in_order_by_one_committer_and_wait_only_for_room() {
        let behind = Arc::new(WriteBehind::<u32>::new(8));
        let rounds = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let committers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut started = Vec::new();
        for i in 0..100u32 {
            if behind.queue(i).await {
                let (behind, rounds, committers) = (
                    Arc::clone(&behind),
                    Arc::clone(&rounds),
                    Arc::clone(&committers),
                );
                started.push(tokio::spawn(async move {
                    let running = committers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(running, 0, "one committer at a time");
                    loop {
                        // A disk that takes a while: writers fill the room.
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        let Some(round) = behind.next_round() else {
                            committers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            return;
                        };
                        assert!(round.writes.len() <= 8, "no more than the room");
                        rounds.lock().unwrap().push(round.writes.clone());
                    }
                }));
            }
        }
        for s in started {
            s.await.unwrap();
        }
        let rounds = rounds.lock().unwrap();
        let written: Vec<u32> = rounds.iter().flatten().copied().collect();
        assert_eq!(written, (0..100).collect::<Vec<_>>(), "each once, in order");
        assert!(rounds.len() < 100, "rounds carried several writes");
    }
}
