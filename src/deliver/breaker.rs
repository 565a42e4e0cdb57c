//! A circuit breaker per channel: after a run of failures, stop sending and probe.
//!
//! When a provider is down, every message retrying on its own burns attempts,
//! connections and the provider's patience. After `threshold` retryable
//! failures in a row the circuit opens: senders wait instead of sending, and
//! one probe request goes out every `probe_every`. The first success closes
//! the circuit and wakes every waiting sender. While it is open, lanes back up
//! and the consumer stops fetching (see `ingest::consumer`), so the stream
//! waits for the provider instead of burning through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::Notify;

/// What a sender may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: send.
    Send,
    /// The circuit is open and this sender carries the probe: send, then report.
    Probe,
    /// The circuit is open: wait at most this long (or until it closes), then ask again.
    Wait(Duration),
}

#[derive(Debug)]
struct State {
    /// Retryable failures since the last success.
    failures: u32,
    /// When the circuit opened; `None` while closed.
    open_since: Option<Instant>,
    /// When the next probe may go out.
    next_probe: Instant,
    /// A probe is out and has not answered yet.
    probing: bool,
}

/// The breaker of one channel.
pub struct Breaker {
    threshold: u32,
    probe_every: Duration,
    state: Mutex<State>,
    closed: Notify,
    /// 1 while the circuit is open (`herald_channel_circuit_open{channel}`).
    gauge: IntGauge,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row
    /// (0: never opens) and then probes every `probe_every`.
    pub fn new(threshold: u32, probe_every: Duration, gauge: IntGauge) -> Breaker {
        gauge.set(0);
        Breaker {
            threshold,
            probe_every,
            state: Mutex::new(State {
                failures: 0,
                open_since: None,
                next_probe: Instant::now(),
                probing: false,
            }),
            closed: Notify::new(),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the circuit is open now.
    pub fn is_open(&self) -> bool {
        self.lock().open_since.is_some()
    }

    /// How long the circuit has been open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        self.lock().open_since.map(|t| t.elapsed())
    }

    /// May a request go out now?
    pub fn admit(&self) -> Admission {
        let mut s = self.lock();
        if s.open_since.is_none() {
            return Admission::Send;
        }
        let now = Instant::now();
        if !s.probing && now >= s.next_probe {
            s.probing = true;
            s.next_probe = now + self.probe_every;
            return Admission::Probe;
        }
        Admission::Wait(
            s.next_probe
                .saturating_duration_since(now)
                .max(self.probe_every / 4),
        )
    }

    /// Waits until the circuit closes or `limit` passes.
    pub async fn wait(&self, limit: Duration) {
        let closed = self.closed.notified();
        if !self.is_open() {
            return;
        }
        let _ = tokio::time::timeout(limit, closed).await;
    }

    /// The provider answered (success, or a final answer such as a 400):
    /// it is up, so the circuit closes.
    pub fn answered(&self) {
        let mut s = self.lock();
        s.failures = 0;
        s.probing = false;
        if s.open_since.take().is_some() {
            self.gauge.set(0);
            tracing::info!("provider answers again; circuit closed");
            self.closed.notify_waiters();
        }
    }

    /// A retryable failure (5xx, 429, timeout, refused connection).
    pub fn failed(&self) {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        s.probing = false;
        if s.open_since.is_none() && self.threshold > 0 && s.failures >= self.threshold {
            s.open_since = Some(Instant::now());
            s.next_probe = Instant::now() + self.probe_every;
            self.gauge.set(1);
            tracing::warn!(
                failures = s.failures,
                "provider failing; circuit open, sends wait and probe"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        let gauge = IntGauge::new("g", "g").unwrap();
        Breaker::new(threshold, Duration::from_millis(50), gauge)
    }

    #[test]
    fn opens_after_a_run_of_failures_and_lets_one_probe_through() {
        let b = breaker(3);
        b.failed();
        b.failed();
        assert_eq!(b.admit(), Admission::Send, "two failures keep it closed");
        b.failed();
        assert!(b.is_open());
        assert!(
            matches!(b.admit(), Admission::Wait(_)),
            "no probe before its time"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        assert!(
            matches!(b.admit(), Admission::Wait(_)),
            "one probe at a time"
        );
        b.failed();
        assert!(b.is_open(), "a failed probe keeps it open");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        b.answered();
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admission::Send);
    }

    #[test]
    fn a_success_resets_the_run() {
        let b = breaker(2);
        b.failed();
        b.answered();
        b.failed();
        assert!(!b.is_open());
    }

    #[tokio::test]
    async fn waiting_senders_wake_when_it_closes() {
        let b = std::sync::Arc::new(breaker(1));
        b.failed();
        let waiter = {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move { b.wait(Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        b.answered();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the close, not the 30 s limit")
            .unwrap();
    }
}
