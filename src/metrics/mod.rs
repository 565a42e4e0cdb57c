//! metrics: the Prometheus handles every stage counts into, created once at
//! start, and the per-rule activity of the live rules page. Labels are topics,
//! channels, rule ids and reason codes — never a user, phone, token or card.

pub mod activity;
mod events;

pub use events::StageEvent;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric herald exports.
pub struct Metrics {
    pub registry: Registry,
    /// Messages taken from source topics, per topic.
    pub events_consumed: IntCounterVec,
    /// Messages sent to the dead-letter topic, per reason.
    pub dead_letters: IntCounterVec,
    /// Rule matches, per rule.
    pub rule_matches: IntCounterVec,
    /// Decisions per rule and status (`sent`, `suppressed`, `failed`).
    pub rule_decisions: IntCounterVec,
    /// Conditions that could not be evaluated, per rule.
    pub condition_errors: IntCounterVec,
    /// A subscription rule skipped for a user: not subscribed (`off`), or a
    /// value of theirs not of its parameter's type (`invalid`), per rule.
    pub subscription_skips: IntCounterVec,
    /// Decisions per channel and status (`sent`, `suppressed`, `failed`).
    pub decisions: IntCounterVec,
    /// Suppressions per reason code.
    pub suppressions: IntCounterVec,
    /// Suppressions per rule and reason code.
    pub rule_suppressions: IntCounterVec,
    /// Messages held now: for the end of quiet hours, or awaiting a delivery receipt.
    pub held: IntGauge,
    /// Held messages kept for a rule that is not loaded (waiting for it, or
    /// for an operator).
    pub held_orphaned: IntGauge,
    /// Held messages by how they ended (`sent`, `stale`, `suppressed`,
    /// `failed`, `collapsed`, `shutdown`), and delivery waits that ended `delivered`.
    pub held_released: IntCounterVec,
    /// Digest items by what happened to them: `collected`, `withdrawn`,
    /// `closed` (in a digest whose window closed, to be sent).
    pub digest_items: IntCounterVec,
    /// Conversions recorded for experiments.
    pub conversions: IntCounter,
    /// Feedback records per kind (`engagement`, `stop`, `start`, `help`, `reply`,
    /// `push_action`) and result (`applied`, `unknown_message`, `invalid`).
    pub feedback: IntCounterVec,
    /// Phone numbers opted out of SMS by keyword.
    pub sms_opt_outs: IntGauge,
    /// SMS that could not wait for the feedback topic to be read (consent unknown).
    pub consent_waits_failed: IntCounter,
    /// Events later than a pattern's allowed lateness, per rule.
    pub late_events: IntCounterVec,
    /// Pattern keys evicted at the per-rule cap, per rule.
    pub pattern_evicted: IntCounterVec,
    /// Keys holding pattern state.
    pub pattern_keys: IntGauge,
    /// Approximate bytes of pattern state.
    pub pattern_state_bytes: IntGauge,
    /// Send-ledger entries held (intents partitions owned here).
    pub ledger_entries: IntGauge,
    /// Sends found attempted without an answer after a crash, per channel
    /// and what was done (`resend`, `skip`).
    pub unknown_after_crash: IntCounterVec,
    /// Store partitions restored from their changelogs, per store.
    pub restores: IntCounterVec,
    /// Changelog records read back by restores, per store.
    pub restored_records: IntCounterVec,
    /// Time spent restoring store partitions, per store, seconds.
    pub restore_seconds: prometheus::CounterVec,
    /// Per-rule activity over the last minute and hour (the live rules page).
    pub activity: activity::Activity,
    /// Provider retries per channel.
    pub retries: IntCounterVec,
    /// Provider request latency per channel, seconds.
    pub provider_latency: HistogramVec,
    /// From event time to provider request sent, seconds.
    pub event_to_send: Histogram,
    /// From consume to provider request sent, seconds.
    pub consume_to_send: Histogram,
    /// Rule reloads by result (`ok`, `error`).
    pub rule_reloads: IntCounterVec,
    /// Loaded rules.
    pub rules_loaded: IntGauge,
    /// Profiles held.
    pub profiles: IntGauge,
    /// Profile records refused.
    pub profile_errors: IntCounter,
    /// Partitions this instance owns.
    pub partitions_assigned: IntGauge,
    /// 1 while a channel's circuit is open (its provider failing), per channel.
    pub circuit_open: IntGaugeVec,
    /// Per state table: keys held, bytes on disk, records read since the
    /// start and records to read to catch up (`what`: `keys`, `disk_bytes`,
    /// `loaded`, `to_load`).
    pub state_table: IntGaugeVec,
    /// Records (outcomes, dead letters, …) that failed to write and are being retried.
    pub writes_failing: IntGauge,
    /// Producers rebuilt after a fatal error.
    pub producer_rebuilds: IntCounter,
    /// 1 while fetching is paused because processing is backed up (a provider
    /// outage, an unwritable record).
    pub fetch_paused: IntGauge,
    /// Source messages waiting for a lane while fetching is paused.
    pub parked: IntGauge,
    /// Twilio webhook posts per channel, kind (`inbound`, `status`) and result
    /// (`accepted`, `bad_signature`, `malformed`).
    pub twilio_webhooks: IntCounterVec,
    /// Messages behind the end of each source partition this instance owns
    /// (librdkafka's statistics, every 5 s).
    pub consumer_lag: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Records of `topic` consumed so far.
    pub fn consumed_of(&self, topic: &str) -> u64 {
        sum(&self.events_consumed, |labels| {
            labels.iter().any(|l| l.value() == topic)
        })
    }

    /// Decisions recorded `sent` so far, all channels.
    pub fn sent_total(&self) -> u64 {
        sum(&self.decisions, |labels| {
            labels.iter().any(|l| l.value() == "sent")
        })
    }

    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let provider_latency = HistogramVec::new(
            HistogramOpts::new(
                "herald_provider_latency_seconds",
                "Provider request latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["channel"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(provider_latency.clone()))
            .expect("unique metric");
        let profile_errors =
            IntCounter::new("herald_profile_errors_total", "Profile records refused")
                .expect("valid metric");
        registry
            .register(Box::new(profile_errors.clone()))
            .expect("unique metric");
        let conversions = IntCounter::new(
            "herald_experiment_conversions_total",
            "Later events that met an experiment's goal, attributed to an exposure",
        )
        .expect("valid metric");
        registry
            .register(Box::new(conversions.clone()))
            .expect("unique metric");
        let consent_waits_failed = IntCounter::new(
            "herald_consent_waits_failed_total",
            "SMS not sent because the feedback topic could not be read in time",
        )
        .expect("valid metric");
        registry
            .register(Box::new(consent_waits_failed.clone()))
            .expect("unique metric");
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "herald_channel_circuit_open",
                "1 while the channel's circuit is open (provider failing; sends wait)",
            ),
            &["channel"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(circuit_open.clone()))
            .expect("unique metric");
        let state_table = IntGaugeVec::new(
            Opts::new(
                "herald_state_table",
                "Per state table on local disk: keys, disk_bytes, loaded (records read since the start), to_load (records to read to catch up), cached_users (the ledger: users whose send history the caps hold in memory)",
            ),
            &["table", "what"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(state_table.clone()))
            .expect("unique metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "herald_consumer_lag",
                "Messages behind the end of each owned source partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let producer_rebuilds = IntCounter::new(
            "herald_producer_rebuilds_total",
            "Producers rebuilt after a fatal error",
        )
        .expect("valid metric");
        registry
            .register(Box::new(producer_rebuilds.clone()))
            .expect("unique metric");
        Metrics {
            twilio_webhooks: counter_vec(
                "herald_twilio_webhooks_total",
                "Twilio webhook posts per channel, kind and result",
                &["channel", "kind", "result"],
            ),
            circuit_open,
            state_table,
            producer_rebuilds,
            writes_failing: gauge(
                "herald_writes_failing",
                "Records that failed to write and are being retried (their offsets held back)",
            ),
            fetch_paused: gauge(
                "herald_fetch_paused",
                "1 while fetching is paused because processing is backed up",
            ),
            parked: gauge(
                "herald_parked_messages",
                "Messages fetched before a pause, waiting for their lane",
            ),
            events_consumed: counter_vec(
                "herald_events_consumed_total",
                "Messages consumed from source topics",
                &["topic"],
            ),
            dead_letters: counter_vec(
                "herald_dead_letters_total",
                "Messages sent to the dead-letter topic",
                &["reason"],
            ),
            rule_matches: counter_vec("herald_rule_matches_total", "Rule matches", &["rule"]),
            rule_decisions: counter_vec(
                "herald_rule_decisions_total",
                "Decisions per rule and status",
                &["rule", "status"],
            ),
            condition_errors: counter_vec(
                "herald_condition_errors_total",
                "Conditions that failed to evaluate",
                &["rule"],
            ),
            subscription_skips: counter_vec(
                "herald_subscription_skips_total",
                "Subscription rules skipped for a user: not subscribed, or a value of theirs unusable",
                &["rule", "reason"],
            ),
            decisions: counter_vec(
                "herald_decisions_total",
                "Decisions per channel and status",
                &["channel", "status"],
            ),
            suppressions: counter_vec(
                "herald_suppressions_total",
                "Suppressed messages per reason",
                &["reason"],
            ),
            rule_suppressions: counter_vec(
                "herald_rule_suppressions_total",
                "Suppressed messages per rule and reason",
                &["rule", "reason"],
            ),
            held: gauge(
                "herald_held_messages",
                "Messages held for quiet hours or awaiting a delivery receipt",
            ),
            held_orphaned: gauge(
                "herald_held_orphaned",
                "Held messages kept for a rule that is not loaded",
            ),
            held_released: counter_vec(
                "herald_held_released_total",
                "Held messages by how they ended",
                &["result"],
            ),
            conversions,
            digest_items: counter_vec(
                "herald_digest_items_total",
                "Digest items collected, withdrawn, and in a digest whose window closed",
                &["result"],
            ),
            feedback: counter_vec(
                "herald_feedback_total",
                "Feedback records per kind and result",
                &["kind", "result"],
            ),
            sms_opt_outs: gauge(
                "herald_sms_opt_outs",
                "Phone numbers opted out of SMS by keyword",
            ),
            consent_waits_failed,
            late_events: counter_vec(
                "herald_late_events_total",
                "Events later than a pattern's allowed lateness",
                &["rule"],
            ),
            pattern_evicted: counter_vec(
                "herald_pattern_keys_evicted_total",
                "Pattern keys evicted at the per-rule cap",
                &["rule"],
            ),
            pattern_keys: gauge("herald_pattern_keys", "Keys holding pattern state"),
            pattern_state_bytes: gauge(
                "herald_pattern_state_bytes",
                "Approximate bytes of pattern state",
            ),
            ledger_entries: gauge(
                "herald_ledger_entries",
                "Send-ledger rows on local disk (entries and the sends caps count; about)",
            ),
            unknown_after_crash: counter_vec(
                "herald_unknown_after_crash_total",
                "Sends found attempted without an answer after a crash, by what was done",
                &["channel", "action"],
            ),
            restores: counter_vec(
                "herald_store_restores_total",
                "Store partitions restored from their changelog",
                &["store"],
            ),
            restored_records: counter_vec(
                "herald_store_restored_records_total",
                "Changelog records read back by restores",
                &["store"],
            ),
            restore_seconds: {
                let c = prometheus::CounterVec::new(
                    prometheus::Opts::new(
                        "herald_store_restore_seconds_total",
                        "Time spent restoring store partitions",
                    ),
                    &["store"],
                )
                .expect("metric");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
            retries: counter_vec(
                "herald_provider_retries_total",
                "Provider request retries",
                &["channel"],
            ),
            provider_latency,
            event_to_send: histogram(
                "herald_event_to_send_seconds",
                "Event time to provider request sent",
            ),
            consume_to_send: histogram(
                "herald_consume_to_send_seconds",
                "Consume to provider request sent",
            ),
            rule_reloads: counter_vec(
                "herald_rule_reloads_total",
                "Rule reloads by result",
                &["result"],
            ),
            rules_loaded: gauge("herald_rules_loaded", "Rules in the active rule set"),
            profiles: gauge(
                "herald_profiles",
                "Profiles held (on disk, or in memory in the offline tools)",
            ),
            profile_errors,
            partitions_assigned: gauge(
                "herald_partitions_assigned",
                "Source partitions owned by this instance",
            ),
            activity: activity::Activity::default(),
            consumer_lag,
            registry,
        }
    }

    /// Each labelled value of one metric, e.g. dead letters by reason:
    /// `[({"reason": "not_json"}, 3.0)]`, for the live page.
    pub fn values_of(
        metric: &impl prometheus::core::Collector,
    ) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
        metric
            .collect()
            .into_iter()
            .flat_map(|family| {
                let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
                family
                    .get_metric()
                    .iter()
                    .map(|m| {
                        let labels = m
                            .get_label()
                            .iter()
                            .map(|l| (l.name().to_string(), l.value().to_string()))
                            .collect();
                        let value = if counter {
                            m.get_counter().get_value()
                        } else {
                            m.get_gauge().get_value()
                        };
                        (labels, value)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The sum of a counter family's series whose labels pass `keep`.
fn sum(family: &IntCounterVec, keep: impl Fn(&[prometheus::proto::LabelPair]) -> bool) -> u64 {
    use prometheus::core::Collector;
    family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| keep(m.get_label()))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
