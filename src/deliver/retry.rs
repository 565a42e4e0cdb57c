//! Retries with exponential backoff and jitter that honour `Retry-After`, a bounded number of times.

use std::time::Duration;

use prometheus::IntCounter;
use rand::Rng;

use super::{Address, Channel, Delivered, Message, SendError};
use crate::config::ChannelConfig;
use crate::util::now_ms;

/// How a channel retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub base: Duration,
    /// Longest delay, also the cap on a provider's `Retry-After`, so one
    /// message can never hold its key's lane for long.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy of a configured channel.
    pub fn from_config(config: &ChannelConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts,
            base: Duration::from_millis(config.backoff_ms),
            max: Duration::from_millis(config.max_backoff_ms),
        }
    }

    /// Delay before attempt `attempt + 1` (attempt counts from 1): full jitter over
    /// the upper half of the exponential step, or the provider's `Retry-After`
    /// when it asks for longer; never above `max`.
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
            Some(asked) if asked > jittered => asked.min(self.max),
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
    /// When the first request was sent, epoch ms.
    pub request_sent_ms: i64,
    /// When the last answer (or failure) came, epoch ms.
    pub answered_ms: i64,
}

/// Sends `message` to `to` on `channel`: one permit of the channel's
/// concurrency bound per attempt (not held while backing off), retrying
/// retryable failures up to the policy's limit.
pub async fn send_with_retry(
    channel: &Channel,
    message: &Message,
    to: &Address,
    retries: &IntCounter,
) -> Attempted {
    let mut attempts = 0;
    let mut request_sent_ms = 0;
    loop {
        attempts += 1;
        let result = {
            let _permit = channel
                .permits
                .acquire()
                .await
                .expect("semaphore is never closed");
            if attempts == 1 {
                request_sent_ms = now_ms();
            }
            channel.provider.send(message, to).await
        };
        let retry_after = match &result {
            Err(SendError::Retryable { retry_after, .. })
                if attempts < channel.policy.max_attempts =>
            {
                *retry_after
            }
            _ => {
                return Attempted {
                    result,
                    attempts,
                    request_sent_ms,
                    answered_ms: now_ms(),
                }
            }
        };
        retries.inc();
        tokio::time::sleep(channel.policy.delay(attempts, retry_after)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_is_jittered_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
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
            Duration::from_millis(1000)
        );
    }
}
