//! herald's one configuration file (TOML): Kafka, sources, topics, rules, channels, admin.
//!
//! Every struct denies unknown keys, every field has its default here and in the
//! configuration table in docs/operators/configuration.md. [`Config::load`] parses, then [`Config::validate`]
//! collects every semantic error at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod channel;
pub use channel::{
    ApnsConfig, ChannelConfig, ConsoleConfig, Delivery, FcmConfig, OnUnknown, ProviderKind,
    TwilioConfig, WebhookConfig,
};
mod feedback;
pub use feedback::FeedbackConfig;
pub mod policy;

/// Everything herald needs to run one instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and consumer-group settings.
    pub kafka: KafkaConfig,
    /// Source topics to consume, keyed by topic name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Names of herald's own topics.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Where the rule files live and how they are reloaded.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Delivery channels, keyed by the channel name rules refer to (`push`, `sms`, …).
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// The admin HTTP server (metrics, health, rules).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Limits on the per-event path.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Delivery policy: freshness, quiet hours and caps per category.
    #[serde(default)]
    pub policy: policy::PolicyConfig,
    /// Feedback: engagement look-back, SMS keywords and the HELP reply.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// How `herald run` writes its log lines.
    #[serde(default)]
    pub log: LogConfig,
    /// The state directory: herald's tables on local disk.
    #[serde(default)]
    pub state: StateConfig,
}

/// The state directory: an embedded store on local disk holding herald's
/// tables (profiles first), each with the topic offsets it holds. A cache of
/// Kafka: deleting it costs a slower start, never data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where the store lives (relative to this file's folder). Each running
    /// instance takes the first free `instance-<n>` slot under it.
    #[serde(default = "defaults::state_dir")]
    pub dir: PathBuf,
    /// Profiles kept in memory (most recently used); the rest are read from
    /// disk when needed.
    #[serde(default = "defaults::profile_cache")]
    pub profile_cache: usize,
    /// Block cache of the store, in megabytes.
    #[serde(default = "defaults::block_cache_mb")]
    pub block_cache_mb: u64,
    /// Users whose send history (what caps count) is kept in memory; the
    /// rest are read from the send ledger on disk when needed.
    #[serde(default = "defaults::caps_cache")]
    pub caps_cache: usize,
    /// Pattern keys kept in memory per rule (most recently seen); the rest
    /// are read from disk when their next event, timer or expiry comes.
    #[serde(default = "defaults::pattern_cache")]
    pub pattern_cache: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: defaults::state_dir(),
            profile_cache: defaults::profile_cache(),
            block_cache_mb: defaults::block_cache_mb(),
            caps_cache: defaults::caps_cache(),
            pattern_cache: defaults::pattern_cache(),
        }
    }
}

/// The service's log (stderr). Levels come from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default; colour only on a terminal) or `json`: one JSON object
    /// per line with `timestamp`, `level`, `target` and `fields`, for a log collector.
    #[serde(default)]
    pub format: LogFormat,
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Kafka connection; `properties` passes any librdkafka setting through unchanged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub bootstrap_servers: String,
    /// Consumer group id; every instance of one deployment shares it.
    #[serde(default = "defaults::group_id")]
    pub group_id: String,
    /// Static membership (`group.instance.id`). Unset: the host name and
    /// the instance's state slot (`myhost-1`), the same across restarts and
    /// different for each instance on one host; any other value is used as
    /// it is; `""` turns it off (dynamic membership). A restarted static
    /// member takes its partitions back without a rebalance. librdkafka
    /// fences a static member whose group coordinator was unreachable for
    /// longer than the session timeout (librdkafka issue 3437); herald then
    /// exits for its supervisor to restart it. See docs/operators/running.md.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Extra librdkafka properties (e.g. `security.protocol = "SASL_SSL"`,
    /// `sasl.mechanisms`, `sasl.username`). A value of the form `env:NAME` is read
    /// from the environment variable NAME, so secrets stay out of the file.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// How one source topic's JSON maps onto herald's event fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Field that names the user to notify (dotted path allowed: `card.holder_id`).
    pub user_field: String,
    /// Field with the event time, RFC 3339 or epoch milliseconds. Without it the
    /// Kafka message timestamp is used.
    #[serde(default)]
    pub time_field: Option<String>,
    /// Field holding the state key; default: the Kafka message key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Field holding the event type, used by the rule index (e.g. `status`).
    #[serde(default)]
    pub type_field: Option<String>,
}

/// herald's own topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Compacted topic of user profiles keyed by user id.
    #[serde(default = "defaults::profiles_topic")]
    pub profiles: String,
    /// One JSON record per decision.
    #[serde(default = "defaults::outcomes_topic")]
    pub outcomes: String,
    /// Messages herald could not process, and sends that finally failed.
    #[serde(default = "defaults::dead_letter_topic")]
    pub dead_letter: String,
    /// Engagement events (email opened, push delivered, …), inbound SMS in
    /// Twilio's webhook fields, and push action presses.
    #[serde(default = "defaults::feedback_topic")]
    pub feedback: String,
    /// Consent changes herald made (STOP, START), keyed by phone number,
    /// compacted; herald reads it back at start, and the CRM follows it.
    #[serde(default = "defaults::consent_topic")]
    pub consent: String,
    /// Replies to messages (YES/NO to "was this you?") and push action
    /// presses, as events carrying the original message's rule, key and
    /// idempotency key. Add it to `[sources]` to let rules react to replies.
    #[serde(default = "defaults::replies_topic")]
    pub replies: String,
    /// Messages held for quiet hours (and fallbacks awaiting a delivery
    /// receipt), compacted: they survive a restart and move with their
    /// user's intents partition to its next owner.
    #[serde(default = "defaults::held_topic")]
    pub held: String,
    /// Users' own preferences, written by the preference API, keyed by user
    /// id, compacted; every instance reads it whole and follows it, and its
    /// fields override the profile's. herald creates it at start when missing.
    #[serde(default = "defaults::preferences_topic")]
    pub preferences: String,
    /// Conversions: a later event meeting an experiment's goal, attributed
    /// to the user's last message (or would-be message) of that experiment,
    /// one JSON record each, keyed by user. herald creates it at start when
    /// missing; `herald experiment report` reads it with the outcomes.
    #[serde(default = "defaults::conversions_topic")]
    pub conversions: String,
    /// The internal topic between the two stages: one intent per fired rule
    /// and user, keyed (and partitioned) by user, so all of a user's messages
    /// are decided by one owner at a time. Default `<group_id>.intents`.
    /// herald creates it at start when missing.
    #[serde(default)]
    pub intents: Option<String>,
    /// Partitions of the intents topic when herald creates it: the unit of
    /// scale-out for stage 2 (more instances than this idle in stage 2).
    /// Choose a few times the most instances you expect to run.
    #[serde(default = "defaults::intents_partitions")]
    pub intents_partitions: i32,
}

/// Rule files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory searched recursively for `*.yaml` / `*.yml` rule files.
    #[serde(default = "defaults::rules_dir")]
    pub dir: PathBuf,
    /// Watch the directory and reload on change.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// How long file changes are gathered before one reload, in milliseconds.
    #[serde(default = "defaults::reload_debounce_ms")]
    pub debounce_ms: u64,
    /// Whether `herald run` may start, or a reload leave it, with no rule
    /// (it would consume every event and send nothing).
    #[serde(default)]
    pub allow_empty: bool,
    /// The locale of rule texts whose `template.locale` names none (`en`).
    #[serde(default)]
    pub default_locale: Option<String>,
}

/// Admin HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; port 0 picks a free port (logged at start).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// The environment variable holding the preference API's backend
    /// secret (`Authorization: Bearer …`); unset or empty: no backend access.
    #[serde(default = "defaults::api_token_env")]
    pub api_token_env: String,
    /// The environment variable holding the key of apps' per-user tokens
    /// (`Authorization: User <HMAC-SHA256 of the user id>`); unset: no app access.
    #[serde(default = "defaults::user_hmac_key_env")]
    pub user_hmac_key_env: String,
    /// Largest preference API request body, bytes (413 above).
    #[serde(default = "defaults::api_max_body_bytes")]
    pub api_max_body_bytes: usize,
    /// Preference API requests a second one user may make (429 above).
    #[serde(default = "defaults::api_requests_per_s")]
    pub api_requests_per_s: u32,
    /// Preference API requests a second the backend may make (429 above).
    #[serde(default = "defaults::api_backend_requests_per_s")]
    pub api_backend_requests_per_s: u32,
}

/// Bounds on the per-event path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted event in bytes; larger ones are dead-lettered.
    #[serde(default = "defaults::max_event_bytes")]
    pub max_event_bytes: usize,
    /// Number of processing lanes; events of one key always share a lane.
    #[serde(default = "defaults::lanes")]
    pub lanes: usize,
    /// Events queued per lane before the consumer waits.
    #[serde(default = "defaults::lane_queue")]
    pub lane_queue: usize,
    /// Records a lane takes at once, as one batch: their writes are awaited
    /// together, each pattern key's state is written once for the batch
    /// (its last value), and their offsets are stored together (1: one
    /// record at a time, as before 2026-12-06). A lane takes only what is
    /// already queued, so a quiet stream's records are never held back.
    #[serde(default = "defaults::lane_batch")]
    pub lane_batch: usize,
    /// One user's messages whose requests may be in flight at once: they
    /// are decided in order, one after another, and their requests overlap
    /// up to this many (1: each waits for the last one's answer).
    #[serde(default = "defaults::sends_per_user")]
    pub sends_per_user: usize,
    /// On shutdown, how long in-flight work may take before it is abandoned
    /// (uncommitted, so it is processed again after restart), in milliseconds.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Keys of pattern state per rule held in memory where there is no state
    /// directory (`herald replay`, `rules test`); past it the least recently
    /// seen are evicted (logged, `herald_pattern_keys_evicted_total{rule}`).
    /// `herald run` keeps every key on disk and `state.pattern_cache` of them
    /// in memory.
    #[serde(default = "defaults::pattern_keys_per_rule")]
    pub pattern_keys_per_rule: usize,
    /// No longer used: the send ledger is on disk and keeps every entry for
    /// eight days. Accepted so that older files still load; a start with it
    /// set says it is ignored.
    #[serde(default)]
    pub ledger_entries: Option<usize>,
}

pub(crate) mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    pub fn state_dir() -> PathBuf {
        PathBuf::from("herald-state")
    }
    pub fn profile_cache() -> usize {
        200_000
    }
    pub fn block_cache_mb() -> u64 {
        256
    }
    pub fn group_id() -> String {
        "herald".into()
    }
    pub fn profiles_topic() -> String {
        "profiles".into()
    }
    pub fn outcomes_topic() -> String {
        "herald.outcomes".into()
    }
    pub fn dead_letter_topic() -> String {
        "herald.dlq".into()
    }
    pub fn feedback_topic() -> String {
        "herald.feedback".into()
    }
    pub fn consent_topic() -> String {
        "herald.consent".into()
    }
    pub fn replies_topic() -> String {
        "herald.replies".into()
    }
    pub fn held_topic() -> String {
        "herald.held".into()
    }
    pub fn preferences_topic() -> String {
        "herald.preferences".into()
    }

    pub fn conversions_topic() -> String {
        "herald.conversions".into()
    }
    pub fn api_token_env() -> String {
        "HERALD_API_TOKEN".into()
    }
    pub fn user_hmac_key_env() -> String {
        "HERALD_USER_HMAC_KEY".into()
    }
    pub fn api_max_body_bytes() -> usize {
        16 * 1024
    }
    pub fn api_requests_per_s() -> u32 {
        5
    }
    pub fn api_backend_requests_per_s() -> u32 {
        500
    }
    pub fn intents_partitions() -> i32 {
        12
    }
    pub fn caps_cache() -> usize {
        200_000
    }
    pub fn pattern_cache() -> usize {
        100_000
    }
    pub fn rules_dir() -> PathBuf {
        PathBuf::from("rules")
    }
    pub fn yes() -> bool {
        true
    }
    pub fn reload_debounce_ms() -> u64 {
        300
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    pub fn max_event_bytes() -> usize {
        64 * 1024
    }
    /// Four times as many keys handled at once as the 64 lanes before (the
    /// one-rule drain went from 4,600 to 6,400 swipes/s, BENCHMARKS.md); a
    /// shorter queue per lane measured slower (2,800/s with 64).
    pub fn lanes() -> usize {
        256
    }
    pub fn lane_queue() -> usize {
        256
    }
    pub fn lane_batch() -> usize {
        64
    }
    pub fn sends_per_user() -> usize {
        16
    }
    pub fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub fn pattern_keys_per_rule() -> usize {
        1_000_000
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            profiles: defaults::profiles_topic(),
            outcomes: defaults::outcomes_topic(),
            dead_letter: defaults::dead_letter_topic(),
            feedback: defaults::feedback_topic(),
            consent: defaults::consent_topic(),
            replies: defaults::replies_topic(),
            held: defaults::held_topic(),
            preferences: defaults::preferences_topic(),
            conversions: defaults::conversions_topic(),
            intents: None,
            intents_partitions: defaults::intents_partitions(),
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: defaults::rules_dir(),
            watch: true,
            debounce_ms: defaults::reload_debounce_ms(),
            allow_empty: false,
            default_locale: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
            api_token_env: defaults::api_token_env(),
            user_hmac_key_env: defaults::user_hmac_key_env(),
            api_max_body_bytes: defaults::api_max_body_bytes(),
            api_requests_per_s: defaults::api_requests_per_s(),
            api_backend_requests_per_s: defaults::api_backend_requests_per_s(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: defaults::max_event_bytes(),
            lanes: defaults::lanes(),
            lane_queue: defaults::lane_queue(),
            lane_batch: defaults::lane_batch(),
            sends_per_user: defaults::sends_per_user(),
            shutdown_grace_ms: defaults::shutdown_grace_ms(),
            pattern_keys_per_rule: defaults::pattern_keys_per_rule(),
            ledger_entries: None,
        }
    }
}

impl LimitsConfig {
    /// The shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// A configuration file that could not be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or named an unknown key.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parsed but its values do not fit together.
    #[error("{path}: {}", .problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads, parses and validates a config file: what `herald run` uses.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Reads and parses a config file without checking the environment (for
    /// `rules check`, which needs only names). Relative paths in it (the rules
    /// directory) are resolved against the file's folder.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Some(parent) = path.parent() {
            // Paths in the file are relative to the file.
            if config.rules.dir.is_relative() {
                config.rules.dir = parent.join(&config.rules.dir);
            }
            if config.state.dir.is_relative() {
                config.state.dir = parent.join(&config.state.dir);
            }
            for channel in config.channels.values_mut() {
                for key in channel.paths_mut() {
                    if key.is_relative() {
                        *key = parent.join(&*key);
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses TOML text without touching the file system.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every semantic problem in the config, empty when it can be used.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            problems.push(
                "kafka.bootstrap_servers must name at least one broker, e.g. `127.0.0.1:19092`"
                    .into(),
            );
        }
        if self.sources.is_empty() {
            problems.push(
                "no [sources.<topic>] table: herald needs at least one source topic to consume"
                    .into(),
            );
        }
        for (name, channel) in &self.channels {
            problems.extend(channel.validate(name));
        }
        if let Some(help) = &self.feedback.help_channel {
            match self.channels.get(help) {
                Some(ChannelConfig::Twilio(_)) => {}
                Some(_) => problems.push(format!(
                    "feedback.help_channel `{help}` must be a twilio channel (HELP is answered by SMS)"
                )),
                None => problems.push(format!(
                    "feedback.help_channel `{help}` is not a configured channel"
                )),
            }
        }
        if let Some(tag) = &self.rules.default_locale {
            if icu::locale::Locale::try_from_str(&tag.replace('_', "-")).is_err() {
                problems.push(format!(
                    "rules.default_locale `{tag}` is not a BCP 47 locale, e.g. `en`, `fr-BE`"
                ));
            }
        }
        let limits = &self.limits;
        if [
            limits.lanes,
            limits.lane_queue,
            limits.lane_batch,
            limits.sends_per_user,
        ]
        .contains(&0)
        {
            problems.push(
                "limits.lanes, limits.lane_queue, limits.lane_batch and limits.sends_per_user must be at least 1"
                    .into(),
            );
        }
        for (key, value) in &self.kafka.properties {
            if let Some(var) = value.strip_prefix("env:") {
                if std::env::var_os(var).is_none() {
                    problems.push(format!(
                        "kafka.properties.\"{key}\" reads environment variable {var}, which is not set"
                    ));
                }
            }
        }
        problems
    }

    /// The configured source topics, in a stable order.
    pub fn source_topics(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Every topic the consumer group takes: the sources and the feedback topic.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics = self.source_topics();
        if !topics.contains(&self.topics.feedback) {
            topics.push(self.topics.feedback.clone());
        }
        topics.push(self.intents_topic());
        topics
    }

    /// The intents topic between stage 1 and stage 2.
    pub fn intents_topic(&self) -> String {
        self.topics
            .intents
            .clone()
            .unwrap_or_else(|| format!("{}.intents", self.kafka.group_id))
    }

    /// The changelog of the send ledger (stage 2), one partition per intents partition.
    pub fn ledger_changelog(&self) -> String {
        format!("{}.ledger-changelog", self.kafka.group_id)
    }

    /// The changelog of the pattern state of one source topic (stage 1), one
    /// partition per source partition.
    pub fn pattern_changelog(&self, source: &str) -> String {
        format!("{}.patterns-{source}-changelog", self.kafka.group_id)
    }
}

/// librdkafka properties with `env:NAME` values resolved. Used for every client.
pub fn kafka_properties(kafka: &KafkaConfig) -> Vec<(String, String)> {
    kafka
        .properties
        .iter()
        .map(|(k, v)| {
            let value = match v.strip_prefix("env:") {
                Some(var) => std::env::var(var).unwrap_or_default(),
                None => v.clone(),
            };
            (k.clone(), value)
        })
        .collect()
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:19092"

[sources.transactions]
user_field = "user_id"
time_field = "ts"
"#;

    #[test]
    fn minimal_config_takes_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.kafka.group_id, "herald");
        assert_eq!(config.topics.dead_letter, "herald.dlq");
        assert_eq!(config.limits.max_event_bytes, 65536);
        assert!(config.validate().is_empty());
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n");
        let err = Config::parse(&text).unwrap_err();
        assert!(err.message().contains("unknown field `listn`"), "{err}");
        let (line, _) = line_col(&text, err.span().unwrap().start);
        assert_eq!(line, 11);
    }

    #[test]
    fn a_key_of_another_provider_is_an_unknown_key_at_the_channel() {
        let text = format!(
            "{MINIMAL}\n[channels.sms]\nprovider = \"twilio\"\nbase_url = \"https://api.twilio.com\"\nproject_id = \"p\"\n"
        );
        let err = Config::parse(&text).unwrap_err();
        assert!(
            err.message().contains("unknown field `project_id`")
                && err.message().contains("`messaging_service_sid`")
                && err.message().contains("`concurrency`"),
            "{err}"
        );
        let (line, _) = line_col(&text, err.span().unwrap().start);
        assert_eq!(&text.lines().nth(line - 1).unwrap(), &"[channels.sms]");
        let unknown = Config::parse(&format!(
            "{MINIMAL}\n[channels.sms]\nprovider = \"whatsapp\"\n"
        ))
        .unwrap_err();
        assert!(
            unknown.message().contains("unknown variant `whatsapp`"),
            "{unknown}"
        );
    }

    #[test]
    fn missing_env_var_for_secret_is_reported() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"sasl.password\" = \"env:HERALD_TEST_SURELY_UNSET_VAR\"\n"
        );
        let config = Config::parse(&text).unwrap();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("HERALD_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn fcm_needs_exactly_one_kind_of_credential_and_a_key_file_that_exists() {
        let fcm = |creds: &str| {
            let text = format!(
                "{MINIMAL}\n[channels.push]\nprovider = \"fcm\"\nbase_url = \"https://fcm.googleapis.com\"\nproject_id = \"p\"\n{creds}\n"
            );
            Config::parse(&text).unwrap().validate()
        };
        let none = fcm("");
        assert_eq!(none.len(), 1, "{none:?}");
        assert!(
            none[0].contains("needs credentials: `service_account_file"),
            "{none:?}"
        );
        let missing = fcm("service_account_file = \"/surely/not/here.json\"");
        assert_eq!(
            missing,
            ["channels.push: service-account key /surely/not/here.json is not a readable file"]
        );
        let both = fcm("service_account_file = \"/k.json\"\ntoken_env = \"PATH\"");
        assert!(both.iter().any(|p| p.contains("not several")), "{both:?}");
    }
}
