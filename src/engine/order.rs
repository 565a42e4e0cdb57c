//! One user's messages decided in order and sent concurrently: the gate a
//! decision opens once what follows may be decided, and the per-user bound
//! on requests in flight.
//!
//! A user's intents share a lane, which hands stage 2 one at a time. What a
//! decision must see of the ones before it is all in memory before their
//! requests go out: the send ledger's `attempted` entry (which counts
//! toward caps and settles a redelivery) and the caps' reservation. So a
//! decision opens its [`Gate`] there, and the lane goes on to the user's
//! next intent while the request, its retries, its fallback hops and its
//! records proceed; [`UserSlots`] bounds how many of one user's requests
//! are in flight at once (`limits.sends_per_user`).
//!
//! A failed send gives its cap place back when its answer arrives: the
//! decisions made meanwhile counted it, as they would have counted a send
//! that succeeded.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::util::FastDashMap;

/// Opened once a decision chain no longer affects the next decision of its
/// user: at its send's `attempted` entry, or when it ends without a send.
/// Opening twice is opening once.
pub struct Gate(Mutex<Option<oneshot::Sender<()>>>);

impl Gate {
    /// A gate nobody waits on (offline, where a lane awaits the whole
    /// decision; a held message's release).
    pub fn none() -> Gate {
        Gate(Mutex::new(None))
    }

    /// A gate and what resolves when it opens (or when its chain ends
    /// without opening it, by dropping it).
    pub fn pair() -> (Gate, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Gate(Mutex::new(Some(tx))), rx)
    }

    /// Lets the user's next decision begin.
    pub fn open(&self) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

/// Per user, how many of their messages may be between their decision and
/// their record at once.
pub struct UserSlots {
    per_user: usize,
    users: FastDashMap<Arc<str>, Arc<Semaphore>>,
}

impl UserSlots {
    pub fn new(per_user: usize) -> UserSlots {
        UserSlots {
            per_user: per_user.max(1),
            users: FastDashMap::default(),
        }
    }

    /// A slot for one of `user`'s messages, once one is free.
    pub async fn acquire(self: &Arc<Self>, user: &Arc<str>) -> UserSlot {
        let semaphore = Arc::clone(
            self.users
                .entry(Arc::clone(user))
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
                .value(),
        );
        let permit = semaphore.acquire_owned().await.expect("never closed");
        UserSlot {
            slots: Arc::clone(self),
            user: Arc::clone(user),
            permit: Some(permit),
        }
    }

    /// Users with a message in flight now.
    #[cfg(test)]
    fn users(&self) -> usize {
        self.users.len()
    }
}

/// A held slot: freed when dropped, and the user forgotten once none of
/// theirs is in flight.
pub struct UserSlot {
    slots: Arc<UserSlots>,
    user: Arc<str>,
    /// Holds the user's semaphore until dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let per_user = self.slots.per_user;
        // Only the map holds it and every permit is back: nobody is
        // waiting or sending for this user. Checked under the map's lock,
        // so a lane taking a slot now either sees it removed or keeps it.
        self.slots.users.remove_if(&self.user, |_, s| {
            Arc::strong_count(s) == 1 && s.available_permits() == per_user
        });
    }
}

/// The send-ledger keys whose request is running in this process. An
/// intent delivered again meanwhile (stage 1 replayed its event after a
/// restart, writing the intent twice) finds its key `attempted` with no
/// answer yet: that is this process's send, not one lost in a crash, and it
/// is not sent again. The first delivery's offset is stored only once its
/// send is recorded, so a crash before then redelivers both.
#[derive(Default)]
pub(super) struct Sending(FastDashMap<String, ()>);

/// A key in [`Sending`] until dropped (once its send's final entry is in
/// the ledger, or the decision ends).
pub(super) struct SendingKey {
    sending: Arc<Sending>,
    key: String,
}

impl Sending {
    /// Marks `key` as sent by this process until the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>, key: &str) -> SendingKey {
        self.0.insert(key.to_string(), ());
        SendingKey {
            sending: Arc::clone(self),
            key: key.to_string(),
        }
    }

    /// Whether this process is sending under `key` now.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

impl Drop for SendingKey {
    fn drop(&mut self) {
        self.sending.0.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_being_sent_until_its_guard_is_dropped() {
        let sending = Arc::new(Sending::default());
        let guard = sending.begin("tx/0/7/purchase/push");
        assert!(sending.contains("tx/0/7/purchase/push"));
        assert!(!sending.contains("tx/0/8/purchase/push"));
        drop(guard);
        assert!(!sending.contains("tx/0/7/purchase/push"));
    }

    #[tokio::test]
    async fn a_user_has_at_most_their_slots_and_is_forgotten_when_idle() {
        let slots = Arc::new(UserSlots::new(2));
        let user: Arc<str> = "u-1".into();
        let a = slots.acquire(&user).await;
        let b = slots.acquire(&user).await;
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(&user)).await;
        assert!(third.is_err(), "a third waits while two are in flight");
        let other = slots.acquire(&"u-2".into()).await;
        drop(a);
        let c = slots.acquire(&user).await;
        drop((b, c, other));
        assert_eq!(slots.users(), 0, "no user kept once idle");
    }

    #[tokio::test]
    async fn a_gate_resolves_when_opened_or_dropped() {
        let (gate, opened) = Gate::pair();
        gate.open();
        gate.open();
        assert!(opened.await.is_ok());
        let (gate, opened) = Gate::pair();
        drop(gate);
        assert!(
            opened.await.is_err(),
            "a chain that ended lets the next begin"
        );
    }
}
