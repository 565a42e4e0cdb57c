//! The in-memory profile table, filled from the compacted profiles topic and followed live.
//!
//! Every instance reads every partition of the profiles topic from the start
//! (profiles are small and every instance may need any user); the instance is
//! ready only once each partition has reached its end once.

use crate::util::FastDashMap;
use std::sync::Arc;

use dashmap::DashSet;
use rdkafka::{ClientConfig, Message};
use tracing::{info, warn};

use super::Profile;
use crate::kafka::follow::{Follower, Start};
use crate::metrics::Metrics;
use crate::util::fingerprint;

/// All known profiles, by user id, and the push tokens found dead.
#[derive(Default)]
pub struct ProfileTable {
    profiles: FastDashMap<String, Arc<Profile>>,
    dead_tokens: DashSet<String>,
    /// True once every partition of the topic was read to its end.
    caught_up: tokio::sync::watch::Sender<bool>,
}

/// Whether the table may be trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStatus {
    Loading,
    CaughtUp,
}

impl ProfileTable {
    /// An empty table.
    pub fn new() -> Arc<ProfileTable> {
        Arc::new(ProfileTable::default())
    }

    /// The profile of `user`, if any.
    pub fn get(&self, user: &str) -> Option<Arc<Profile>> {
        self.profiles.get(user).map(|p| Arc::clone(&p))
    }

    /// Inserts or replaces a profile.
    pub fn upsert(&self, profile: Profile) {
        self.profiles
            .insert(profile.user_id.clone(), Arc::new(profile));
    }

    /// Removes a user (a tombstone on the topic).
    pub fn remove(&self, user: &str) {
        self.profiles.remove(user);
    }

    /// Number of profiles held.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether the table holds no profile.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Marks a push token as no longer registered (FCM `UNREGISTERED`), so it is
    /// not used again. Only its fingerprint is kept.
    pub fn mark_token_dead(&self, token: &str) {
        self.dead_tokens.insert(fingerprint(token));
    }

    /// Whether a push token was found dead.
    pub fn is_token_dead(&self, token: &str) -> bool {
        !self.dead_tokens.is_empty() && self.dead_tokens.contains(&fingerprint(token))
    }

    /// Loading until every partition of the topic was read to its end once.
    pub fn status(&self) -> TableStatus {
        if *self.caught_up.borrow() {
            TableStatus::CaughtUp
        } else {
            TableStatus::Loading
        }
    }

    /// Waits until the table has caught up with the topic.
    pub async fn wait_caught_up(&self) {
        let mut signal = self.caught_up.subscribe();
        let _ = signal.wait_for(|caught_up| *caught_up).await;
    }

    /// Applies one record of the profiles topic: a value upserts, a tombstone deletes.
    /// Returns false when the record was refused (counted and logged without content).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, metrics: &Metrics) -> bool {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            metrics.profile_errors.inc();
            warn!("profile record without a UTF-8 key ignored");
            return false;
        };
        match value {
            None => {
                self.remove(key);
                true
            }
            Some(bytes) => match Profile::parse(key, bytes) {
                Ok((profile, problems)) => {
                    for problem in &problems {
                        metrics.profile_errors.inc();
                        warn!(user = %fingerprint(key), %problem, "profile part left out");
                    }
                    self.upsert(profile);
                    true
                }
                Err(e) => {
                    metrics.profile_errors.inc();
                    warn!(user = %fingerprint(key), error = %e, "profile record refused");
                    false
                }
            },
        }
    }

    /// Reads the profiles topic from the beginning into this table, marks the
    /// table caught up when every partition reached its end, then follows it
    /// until `shutdown` resolves. Retries while the topic or broker is missing.
    pub async fn follow(
        self: Arc<Self>,
        client: ClientConfig,
        topic: String,
        metrics: Arc<Metrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let follower = Follower::new(topic, client);
        let reading = follower.run(Start::Beginning, shutdown, |m| {
            self.apply(m.key(), m.payload(), &metrics);
            metrics.profiles.set(self.len() as i64);
        });
        let caught_up = async {
            follower.wait_caught_up().await;
            self.caught_up.send_replace(true);
            info!(profiles = self.len(), "profiles caught up");
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = reading => {}
            _ = caught_up => {}
        }
    }
}
