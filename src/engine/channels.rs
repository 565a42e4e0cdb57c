//! A channel as the stages use it: the delivery channel with its metric handles, made once.

use prometheus::IntCounter;

use crate::deliver::Channel;
use crate::metrics::Metrics;

/// A channel with its metric handles, made once.
pub struct ChannelRuntime {
    pub channel: Channel,
    pub(super) sent: IntCounter,
    suppressed: IntCounter,
    pub(super) failed: IntCounter,
    held: IntCounter,
    pub(super) retries: IntCounter,
    pub(super) latency: prometheus::Histogram,
}

impl ChannelRuntime {
    /// Counts one decision on this channel in `herald_decisions_total`.
    pub(super) fn count(&self, status: crate::outcome::Status) {
        use crate::outcome::Status;
        match status {
            Status::Sent => &self.sent,
            Status::Suppressed => &self.suppressed,
            Status::Failed => &self.failed,
            Status::Held => &self.held,
        }
        .inc();
    }

    /// Wraps a channel and makes its metric handles.
    pub fn new(channel: Channel, metrics: &Metrics) -> ChannelRuntime {
        let name = channel.name.clone();
        ChannelRuntime {
            sent: metrics.decisions.with_label_values(&[&name, "sent"]),
            suppressed: metrics.decisions.with_label_values(&[&name, "suppressed"]),
            failed: metrics.decisions.with_label_values(&[&name, "failed"]),
            held: metrics.decisions.with_label_values(&[&name, "held"]),
            retries: metrics.retries.with_label_values(&[&name]),
            latency: metrics.provider_latency.with_label_values(&[&name]),
            channel,
        }
    }
}
