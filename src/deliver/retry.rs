//! Retries with exponential backoff and jitter that honour `Retry-After`, for as long as the message is fresh.

use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rand::Rng;

use super::breaker::Admission;
use super::{Address, Channel, Delivered, Message, SendError};
use crate::config::Delivery;
use crate::util::now_ms;

/// How a channel retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; `None`: as many as freshness allows.
    pub max_attempts: Option<u32>,
    /// Delay before the first retry; doubled each time.
    pub base: Duration,
    /// Longest delay between attempts of our own choosing. A provider's
    /// `Retry-After` may ask for longer; only the message's deadline caps that.
    pub max: Duration,
    /// How long a message whose rule and category set no `max_age_s` is retried.
    pub retry_for: Duration,
}

impl RetryPolicy {
    /// The policy of a configured channel.
    pub fn from_delivery(delivery: &Delivery) -> RetryPolicy {
        RetryPolicy {
            max_attempts: delivery.max_attempts,
            base: delivery.backoff,
            max: delivery.max_backoff,
            retry_for: delivery.retry_for,
        }
    }

    /// Delay before attempt `attempt + 1` (attempt counts from 1): full jitter over
    /// the upper half of the exponential step (never above `max`), or the
    /// provider's `Retry-After` when it asks for longer.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max);
        let jittered = if step.is_zero() {
            step
        } else {
            let half = step / 2;
            half + rand::rng().random_range(Duration::ZERO..=half)
        };
        match retry_after {
            Some(asked) if asked > jittered => asked,
            _ => jittered,
        }
    }
}

/// The result of sending one message with retries, and when it happened.
#[derive(Debug)]
pub struct Attempted {
    pub result: Result<Delivered, SendError>,
    /// Requests made.
    pub attempts: u32,
    /// When the first request was sent, epoch ms (0 if none was).
    pub request_sent_ms: i64,
    /// When the last answer (or failure) came, epoch ms.
    pub answered_ms: i64,
}

/// Sends `message` to `to` on `channel`: one permit of the channel's
/// concurrency bound per attempt (not held while backing off), retrying
/// retryable failures for `budget` (what is left of the message's freshness)
/// or up to the attempt limit. While the channel's circuit is open the message
/// waits for it rather than sending. A message still unsent when its budget
/// is spent fails with [`SendError::Stale`], carrying the last failure.
pub async fn send_with_retry(
    channel: &Channel,
    message: &Message,
    to: &Address,
    retries: &IntCounter,
    budget: Duration,
) -> Attempted {
    let deadline = Instant::now() + budget;
    let mut attempts = 0;
    let mut request_sent_ms = 0;
    let mut last: Option<SendError> = None;
    let stale = |attempts, request_sent_ms, last| Attempted {
        result: Err(SendError::stale(last)),
        attempts,
        request_sent_ms,
        answered_ms: now_ms(),
    };
    loop {
        match channel.breaker.admit() {
            Admission::Wait(probe_in) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return stale(attempts, request_sent_ms, last);
                }
                channel.breaker.wait(probe_in.min(left)).await;
                continue;
            }
            Admission::Send | Admission::Probe => {}
        }
        attempts += 1;
        let result = {
            let _permit = channel
                .permits
                .acquire()
                .await
                .expect("semaphore is never closed");
            if request_sent_ms == 0 {
                request_sent_ms = now_ms();
            }
            channel.provider.send(message, to).await
        };
        let retry_after = match &result {
            Err(SendError::Retryable { retry_after, .. }) => {
                channel.breaker.failed();
                *retry_after
            }
            _ => {
                channel.breaker.answered();
                None
            }
        };
        let out_of_attempts = channel.policy.max_attempts.is_some_and(|m| attempts >= m);
        match result {
            Err(e @ SendError::Retryable { .. }) if !out_of_attempts => last = Some(e),
            result => {
                return Attempted {
                    result,
                    attempts,
                    request_sent_ms,
                    answered_ms: now_ms(),
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = channel.policy.delay(attempts, retry_after);
        if wait >= left {
            // The next attempt would come too late to be welcome.
            return stale(attempts, request_sent_ms, last);
        }
        retries.inc();
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_is_jittered_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: Some(5),
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            retry_for: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(p.delay(10, None) <= Duration::from_millis(1000));
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(60),
            "a provider's Retry-After wins over our own cap (FCM asks 60 s for QUOTA_EXCEEDED)"
        );
    }
}
