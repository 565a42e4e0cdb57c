//! deliver: one adapter per provider behind the [`Provider`] trait, with bounded
//! concurrency, connection reuse, timeouts and retries (see [`retry`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Semaphore;

use crate::config::{ChannelConfig, Delivery, ProviderKind};
use crate::profile::{Profile, ProfileTable};

mod apns;
pub mod breaker;
mod console;
mod fcm;
pub mod retry;
pub mod twilio;
mod webhook;

pub use retry::{send_with_retry, Attempted};

/// How urgent a message is; passed to the provider (FCM `android.priority`,
/// APNs `apns-priority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Delivered at once, waking the device (fraud, transactional).
    High,
    /// May be batched by the device to save power (marketing).
    #[default]
    Normal,
}

/// A rendered message, ready for a provider.
#[derive(Debug, Clone)]
pub struct Message {
    pub rule_id: Arc<str>,
    pub category: Arc<str>,
    pub priority: Priority,
    /// Push title (push only).
    pub title: Option<String>,
    /// Push body or SMS text.
    pub body: String,
    /// Replaces an earlier message with the same key on the device.
    pub collapse_key: Option<String>,
    pub ttl_seconds: Option<u32>,
    /// Interactive push: the category the app registered with its buttons
    /// (APNs `aps.category`, FCM `click_action`).
    pub action_category: Option<String>,
    /// Stable per (rule, event, channel, recipient): the same event never makes two keys.
    pub idempotency_key: Arc<str>,
    /// Extra key/value data for the app (push `data`, webhook JSON).
    pub data: MessageData,
    /// The user the message is for.
    pub user: Arc<str>,
}

/// The data a message carries for the app, each value a string as FCM's
/// `data` requires: the triggering event's time, its key, and the rule's
/// push buttons. Written as a map in name order (`actions`, `event_ms`,
/// `key`), the parts given only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageData {
    /// The event's time in epoch milliseconds, so the app (and the stand-in
    /// provider) can tell how fresh it is.
    pub event_ms: Option<i64>,
    /// The event's key, so a push action or reply names what it answers.
    pub key: Option<Arc<str>>,
    /// The rule's push buttons, comma-separated.
    pub actions: Option<Arc<str>>,
}

impl MessageData {
    /// Its entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, std::borrow::Cow<'_, str>)> {
        use std::borrow::Cow;
        let actions = self
            .actions
            .as_deref()
            .map(|a| ("actions", Cow::Borrowed(a)));
        let event_ms = self
            .event_ms
            .map(|ms| ("event_ms", Cow::Owned(ms.to_string())));
        let key = self.key.as_deref().map(|k| ("key", Cow::Borrowed(k)));
        actions.into_iter().chain(event_ms).chain(key)
    }
}

impl serde::Serialize for MessageData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some(actions) = &self.actions {
            map.serialize_entry("actions", &**actions)?;
        }
        if let Some(ms) = self.event_ms {
            // As a string, written without an allocation.
            map.serialize_entry("event_ms", &format_args!("{ms}"))?;
        }
        if let Some(key) = &self.key {
            map.serialize_entry("key", &**key)?;
        }
        map.end()
    }
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Address {
    /// A push registration token.
    Push(crate::profile::PushToken),
    /// A phone number in E.164.
    Phone(String),
    /// The user id (webhook, console).
    User(String),
}

impl Address {
    /// The address as it may appear in a log or an outcome: masked.
    pub fn masked(&self) -> String {
        match self {
            Address::Push(t) => crate::util::mask_token(&t.token),
            Address::Phone(p) => crate::util::mask_phone(p),
            Address::User(u) => format!("user:{}", crate::util::fingerprint(u)),
        }
    }
}

/// What the provider answered to an accepted request.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// The provider's id for the message (FCM `name`, Twilio `sid`).
    pub provider_message_id: Option<String>,
    /// What the provider said of the message on accepting it: Twilio's
    /// `status` (`queued`, `accepted`); `None` for providers that only accept.
    pub delivery: Option<String>,
}

/// Why one request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// 429, 5xx, a timeout or a transport error: worth another attempt.
    #[error("retryable: {detail}")]
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Any other 4xx: the request itself is wrong; retrying will not help.
    #[error("rejected: {detail}")]
    Rejected { status: u16, detail: String },
    /// The push token is no longer registered (FCM `UNREGISTERED`).
    #[error("push token unregistered")]
    Unregistered,
    /// A final refusal with the provider's reason (APNs `BadCollapseId`, …).
    #[error("refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
    /// The provider says the number is not a valid phone number (Twilio
    /// 21211).
    #[error("invalid phone number ({provider_code})")]
    InvalidPhone { provider_code: &'static str },
    /// The number replied STOP to this sender at the provider (Twilio
    /// 21610): herald records it as the STOP it was.
    #[error("the number opted out at the provider ({provider_code})")]
    OptedOutAtProvider { provider_code: &'static str },
    /// The message is larger than the provider takes (FCM: 4,096 bytes of
    /// notification and data); found before sending.
    #[error("payload of {bytes} bytes, over the provider's {limit}")]
    TooLarge { bytes: usize, limit: usize },
    /// The provider's credentials were refused or could not be had (a wrong
    /// service-account key, a revoked key): final, with the reason.
    #[error("credentials refused: {detail}")]
    Auth { detail: String },
    /// Still failing when the message stopped being fresh (its `max_age_s`,
    /// or the channel's `retry_for_ms`): the provider was down or refusing.
    #[error("not sent while fresh; last failure: {last}")]
    Stale {
        /// The last failure's reason code, or `circuit_open` when the
        /// message never got a request out.
        last: String,
    },
}

impl SendError {
    /// The short reason code used in outcomes and dead-letter records.
    pub fn reason(&self) -> String {
        match self {
            SendError::Retryable {
                status: Some(s), ..
            } => format!("provider_status:{s}"),
            SendError::Retryable { status: None, .. } => "provider_unreachable".into(),
            SendError::Rejected { status, .. } => format!("provider_rejected:{status}"),
            SendError::Unregistered => "token_unregistered".into(),
            SendError::Stale { last } => format!("stale_after_outage:{last}"),
            SendError::Auth { .. } => "auth_failed".into(),
            SendError::Refused { status, reason } => format!("provider_rejected:{status}:{reason}"),
            SendError::InvalidPhone { .. } => "invalid_phone".into(),
            SendError::OptedOutAtProvider { .. } => "opted_out_at_provider".into(),
            SendError::TooLarge { .. } => "payload_too_large".into(),
        }
    }

    /// The bounded code of [`SendError::reason`], for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::Retryable {
                status: Some(_), ..
            } => "provider_status",
            SendError::Retryable { status: None, .. } => "provider_unreachable",
            SendError::Rejected { .. } | SendError::Refused { .. } => "provider_rejected",
            SendError::Unregistered => "token_unregistered",
            SendError::Stale { .. } => "stale_after_outage",
            SendError::Auth { .. } => "auth_failed",
            SendError::InvalidPhone { .. } => "invalid_phone",
            SendError::OptedOutAtProvider { .. } => "opted_out_at_provider",
            SendError::TooLarge { .. } => "payload_too_large",
        }
    }

    /// The failure of a message whose freshness ran out, after `last`.
    pub fn stale(last: Option<SendError>) -> SendError {
        SendError::Stale {
            last: last.map_or_else(|| "circuit_open".to_string(), |e| e.reason()),
        }
    }
}

/// A boxed send future, so providers can sit behind one trait object.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivered, SendError>> + Send + 'a>>;

/// One provider API. `send` makes exactly one request; retries are the caller's.
pub trait Provider: Send + Sync {
    /// Which API this is.
    fn kind(&self) -> ProviderKind;
    /// Makes one request.
    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a>;
}

/// A configured channel: its name, provider, concurrency bound, retry policy
/// and circuit breaker.
pub struct Channel {
    pub name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub permits: Arc<Semaphore>,
    pub policy: retry::RetryPolicy,
    pub breaker: Arc<breaker::Breaker>,
    /// A send in flight at a crash: repeated or not.
    pub on_unknown: crate::config::OnUnknown,
}

/// What kind of channel a provider is, which is all policy and stage 2 need
/// to know of it: how a recipient is addressed and which parts of a rule's
/// text it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Push to devices by token (title and body).
    Push,
    /// Text messages to a phone number (the rule's `text`, else its body).
    Sms,
    /// Delivered to the user id (a webhook, the console).
    User,
}

impl ChannelKind {
    /// The kind of a provider's channel.
    pub fn of(provider: ProviderKind) -> ChannelKind {
        match provider {
            ProviderKind::Fcm | ProviderKind::Apns => ChannelKind::Push,
            ProviderKind::Twilio => ChannelKind::Sms,
            ProviderKind::Webhook | ProviderKind::Console => ChannelKind::User,
        }
    }
}

/// Why a user cannot be reached on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAddress {
    /// No push token, no phone…
    Missing,
    /// Every push token was found unregistered.
    AllTokensDead,
}

/// Why a configured channel cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channels.{channel}: credential variable not named")]
    CredentialNotNamed { channel: String },
    #[error("channels.{channel}: environment variable {var} is not set")]
    CredentialNotSet { channel: String, var: String },
    /// A key file (FCM service account, APNs `.p8`) that cannot be used.
    #[error("channels.{channel}: {detail}")]
    Key { channel: String, detail: String },
    /// A provider address that is not a URL.
    #[error("channels.{channel}: `{url}` is not a URL: {detail}")]
    Url {
        channel: String,
        url: String,
        detail: String,
    },
}

impl Channel {
    /// Builds a channel from its config, reading credentials from the
    /// environment; `circuit` is its breaker's gauge (1 while open).
    pub fn from_config(
        name: &str,
        config: &ChannelConfig,
        http: reqwest::Client,
        circuit: prometheus::IntGauge,
    ) -> Result<Channel, ChannelError> {
        let provider: Arc<dyn Provider> = match config {
            ChannelConfig::Fcm(c) => fcm::build(name, c, http)?,
            ChannelConfig::Apns(c) => apns::build(name, c)?,
            ChannelConfig::Twilio(c) => twilio::build(name, c, http)?,
            ChannelConfig::Webhook(c) => webhook::build(name, c, http)?,
            ChannelConfig::Console(_) => Arc::new(console::Console),
        };
        Ok(Channel::new(name, provider, config.delivery(), circuit))
    }

    /// A channel of `provider` with its delivery bounds.
    pub fn new(
        name: &str,
        provider: Arc<dyn Provider>,
        delivery: Delivery,
        circuit: prometheus::IntGauge,
    ) -> Channel {
        Channel {
            name: name.into(),
            provider,
            permits: Arc::new(Semaphore::new(delivery.concurrency.max(1))),
            policy: retry::RetryPolicy::from_delivery(&delivery),
            breaker: Arc::new(breaker::Breaker::new(
                delivery.breaker_failures,
                delivery.max_backoff,
                circuit,
            )),
            on_unknown: delivery.on_unknown,
        }
    }

    /// What kind of channel this is.
    pub fn kind(&self) -> ChannelKind {
        ChannelKind::of(self.provider.kind())
    }

    /// The address to use for `profile` on this channel.
    pub fn address(&self, profile: &Profile, table: &ProfileTable) -> Result<Address, NoAddress> {
        match self.provider.kind() {
            kind @ (ProviderKind::Fcm | ProviderKind::Apns) => {
                // An APNs channel named by a rule reaches ios devices only.
                let usable = |t: &&crate::profile::PushToken| {
                    kind == ProviderKind::Fcm || t.platform == crate::profile::Platform::Ios
                };
                if !profile.push_tokens.iter().any(|t| usable(&t)) {
                    return Err(NoAddress::Missing);
                }
                profile
                    .push_tokens
                    .iter()
                    .filter(usable)
                    .find(|t| !table.is_token_dead(&t.token))
                    .cloned()
                    .map(Address::Push)
                    .ok_or(NoAddress::AllTokensDead)
            }
            ProviderKind::Twilio => profile
                .phone
                .clone()
                .map(Address::Phone)
                .ok_or(NoAddress::Missing),
            ProviderKind::Webhook | ProviderKind::Console => {
                Ok(Address::User(profile.user_id.clone()))
            }
        }
    }
}

/// Sends ios tokens to APNs and every other token to FCM: what an FCM
/// channel becomes when an APNs channel is configured, so one rule with
/// `channels: [push]` reaches every device the way its platform prefers.
pub struct PushRouter {
    pub fcm: Arc<dyn Provider>,
    pub apns: Arc<dyn Provider>,
}

impl Provider for PushRouter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        match to {
            Address::Push(t) if t.platform == crate::profile::Platform::Ios => {
                self.apns.send(message, to)
            }
            _ => self.fcm.send(message, to),
        }
    }
}

/// Hands the ios tokens of every FCM channel to the first APNs channel, if
/// one is configured (channels in name order).
pub fn route_ios_tokens(channels: &mut std::collections::BTreeMap<String, Channel>) {
    let Some(apns) = channels
        .values()
        .find(|c| c.provider.kind() == ProviderKind::Apns)
        .map(|c| Arc::clone(&c.provider))
    else {
        return;
    };
    for channel in channels.values_mut() {
        if channel.provider.kind() == ProviderKind::Fcm {
            channel.provider = Arc::new(PushRouter {
                fcm: Arc::clone(&channel.provider),
                apns: Arc::clone(&apns),
            });
        }
    }
}

/// The credential in the environment variable `var` names, for channel `name`.
fn secret(name: &str, var: Option<&str>) -> Result<SecretString, ChannelError> {
    let var = var.ok_or_else(|| ChannelError::CredentialNotNamed {
        channel: name.into(),
    })?;
    std::env::var(var)
        .map(SecretString::from)
        .map_err(|_| ChannelError::CredentialNotSet {
            channel: name.into(),
            var: var.to_string(),
        })
}

/// An HTTP/2-only client (APNs): prior knowledge over plain TCP, ALPN `h2`
/// over TLS.
fn http2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .pool_idle_timeout(Duration::from_secs(600))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// One HTTP client for every provider: pooled keep-alive connections.
///
/// `idle_per_host` bounds the connections kept open to one host between
/// requests; give it the channels' concurrency summed
/// ([`idle_connections_for`]). With fewer, every burst beyond the bound
/// closes its extra connections as their answers arrive and opens them
/// again for the next requests (a drain at 256 concurrent pushes opened a
/// connection every ~26 pushes with 64).
pub fn http_client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host.max(1))
        .tcp_nodelay(true)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// How many idle connections per host the shared client keeps: every
/// channel's concurrency, summed, since channels may share a host.
pub fn idle_connections_for<'a>(channels: impl IntoIterator<Item = &'a ChannelConfig>) -> usize {
    channels.into_iter().map(|c| c.delivery().concurrency).sum()
}

/// Reads a `Retry-After` header given in seconds (HTTP dates are treated as absent).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Classifies a non-success HTTP status: 429 and 5xx retry, other 4xx are final.
pub(crate) fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    detail: String,
) -> SendError {
    if status.as_u16() == 429 || status.is_server_error() {
        SendError::Retryable {
            status: Some(status.as_u16()),
            retry_after: retry_after(headers),
            detail,
        }
    } else {
        SendError::Rejected {
            status: status.as_u16(),
            detail,
        }
    }
}

/// A transport error (connect, timeout) as a retryable failure.
pub(crate) fn transport(e: reqwest::Error) -> SendError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    SendError::Retryable {
        status: None,
        retry_after: None,
        detail: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A keep-alive HTTP/1.1 server that answers each request once `round`
    /// requests wait together, and counts the connections it accepts.
    async fn counting_server(round: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(round));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        read.extend_from_slice(&buf[..n]);
                        while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                            read.drain(..end + 4);
                            barrier.wait().await;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// A provider's connections are opened once: a channel sending at its
    /// full concurrency, round after round, keeps them all open between
    /// rounds. (With the pool bounded below the concurrency, each round
    /// closed the connections beyond the bound and opened them again.)
    #[tokio::test]
    async fn a_channel_at_full_concurrency_keeps_its_connections_between_rounds() {
        const CONCURRENCY: usize = 150;
        let channels: std::collections::BTreeMap<String, ChannelConfig> = toml::from_str(&format!(
            "[push]\nprovider = \"console\"\nconcurrency = {CONCURRENCY}\n"
        ))
        .unwrap();
        let http = http_client(idle_connections_for(channels.values()));
        let (url, accepted) = counting_server(CONCURRENCY).await;
        for round in 1..=3 {
            let requests = (0..CONCURRENCY).map(|_| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let answer = http.get(&url).send().await.unwrap();
                    assert_eq!(answer.text().await.unwrap(), "ok");
                }
            });
            futures::future::join_all(requests).await;
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                CONCURRENCY,
                "connections opened by round {round}"
            );
        }
    }
}
