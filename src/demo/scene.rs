//! The demo's scripted scenes: a cardholder subscribes to purchase alerts at 20 USD through the preference API, gets one for a 45 USD purchase, raises the amount to 100 USD, and gets none for the next 45 USD purchase but one for 150 USD; another earns cashback at three shops, one purchase is reversed, and one push says what is left.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use super::RunTopics;

/// The scene's cardholder.
const USER: &str = "demo-alice";
/// The sample subscription rule the scene uses.
const RULE: &str = "purchase-over-my-threshold";

/// Runs the scene against a ready instance on `admin`; the demo's decision
/// printer shows what herald sent. Says what it does as it goes.
pub async fn threshold(
    producer: &FutureProducer,
    topics: &RunTopics,
    admin: std::net::SocketAddr,
    api_token: &str,
) -> Result<(), String> {
    let profile = json!({
        "user_id": USER,
        "push_tokens": [{"token": "fcm:demo-alice:7f3c", "platform": "ios"}],
        "time_zone": "America/New_York",
        "locale": "en-US",
        "consent": {"push": true, "sms": false},
    });
    send(producer, &topics.profiles, USER, &profile).await?;
    let client = reqwest::Client::new();
    let url = format!("http://{admin}/api/v1/users/{USER}/preferences");
    let set = |amount: &'static str| {
        let client = client.clone();
        let url = url.clone();
        let body = json!({"subscriptions": {RULE: {"on": true, "channels": ["push"], "parameters": {"threshold": amount}}}});
        async move {
            let r = client
                .put(&url)
                .bearer_auth(api_token)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("preference API: {e}"))?;
            if !r.status().is_success() {
                let status = r.status();
                return Err(format!(
                    "preference API answered {status}: {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            Ok::<(), String>(())
        }
    };
    // The profile and the preferences reach the tables through their topics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("\n== {USER} subscribes to purchase alerts at 20 USD (PUT {url})");
    set("20 USD").await?;
    wait_for(&client, &url, api_token, "20 USD").await?;
    purchase(producer, topics, 1, 45.0, "Whole Foods").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("\n== {USER} raises her alert to 100 USD through the preference API");
    set("100 USD").await?;
    wait_for(&client, &url, api_token, "100 USD").await?;
    println!("   a 45 USD purchase: no alert now; a 150 USD one: an alert");
    purchase(producer, topics, 2, 45.0, "Whole Foods").await?;
    purchase(producer, topics, 3, 150.0, "Best Buy").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("\n== the generated stream");
    Ok(())
}

/// The cashback scene's cardholder.
const SAVER: &str = "demo-bob";
/// The sample experiment the demo reports on at its end.
pub const EXPERIMENT: &str = "coffee-offer-2026-12";
/// The sample digest rule the cashback scene shows.
pub const DIGEST_RULE: &str = "cashback-digest";
/// How long the demo's cashback digest collects (08:00 local in the sample rule).
pub const DIGEST_WINDOW: &str = "12s";

/// Three purchases with cashback and a reversal of the second: collected
/// into the cashback digest, which goes [`DIGEST_WINDOW`] after the first
/// as one push naming the two left. The cardholder lives where it is day
/// now, so marketing's quiet hours do not hold it.
pub async fn cashback(producer: &FutureProducer, topics: &RunTopics) -> Result<(), String> {
    let zone = daytime_zone();
    let profile = json!({
        "user_id": SAVER,
        "push_tokens": [{"token": "fcm:demo-bob:9a1e", "platform": "android"}],
        "time_zone": zone,
        "consent": {"push": true},
        "preferences": {"marketing": true},
    });
    send(producer, &topics.profiles, SAVER, &profile).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("\n== {SAVER} ({zone}) earns cashback at three shops; the second purchase is reversed. One push, {DIGEST_WINDOW} after the first (08:00 local outside the demo):");
    let shops = [
        ("c-1", "Blue Bottle", 0.25),
        ("c-2", "Target", 2.0),
        ("c-3", "Fnac", 1.5),
    ];
    for (txn, merchant, cashback) in shops {
        let now = crate::util::now_ms();
        let event = json!({
            "user_id": SAVER, "ts": now, "produced_ms": now, "txn_id": txn, "card_last4": "5100",
            "merchant": merchant, "category": "shopping", "amount": cashback * 50.0,
            "cashback": cashback, "currency": "USD", "country": "US", "home_country": "US",
            "status": "approved", "balance_after": 1800.0,
        });
        send(producer, &topics.transactions, "card-5100-bob", &event).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let now = crate::util::now_ms();
    let reversal = json!({
        "user_id": SAVER, "ts": now, "txn_id": "c-9", "reverses": "c-2", "merchant": "Target",
        "currency": "USD", "status": "reversed",
    });
    send(producer, &topics.transactions, "card-5100-bob", &reversal).await
}

/// A zone where it is between 09:00 and 20:00 now.
fn daytime_zone() -> &'static str {
    const ZONES: [&str; 7] = [
        "Pacific/Honolulu",
        "America/Los_Angeles",
        "America/New_York",
        "Europe/Paris",
        "Asia/Kolkata",
        "Asia/Tokyo",
        "Australia/Sydney",
    ];
    let now = jiff::Timestamp::now();
    ZONES
        .into_iter()
        .find(|z| {
            crate::util::time_zone(z)
                .map(|tz| (9..20).contains(&now.to_zoned_datetime(tz).hour()))
                .unwrap_or(false)
        })
        .unwrap_or("UTC")
}

/// Waits until the instance's table has the threshold (it follows the topic).
async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    api_token: &str,
    amount: &str,
) -> Result<(), String> {
    for _ in 0..100 {
        let view: serde_json::Value = match client.get(url).bearer_auth(api_token).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if view["preferences"]["subscriptions"][RULE]["parameters"]["threshold"] == amount {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the preference for {amount} did not reach herald in 5 s"
    ))
}

async fn purchase(
    producer: &FutureProducer,
    topics: &RunTopics,
    n: u32,
    amount: f64,
    merchant: &str,
) -> Result<(), String> {
    let now = crate::util::now_ms();
    let event = json!({
        "seq": n, "user_id": USER, "ts": now, "produced_ms": now, "card_last4": "4417",
        "merchant": merchant, "category": "shopping", "amount": amount, "currency": "USD",
        "country": "US", "home_country": "US", "status": "approved", "balance_after": 2400.0,
    });
    send(producer, &topics.transactions, "card-4417-alice", &event).await
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &serde_json::Value,
) -> Result<(), String> {
    let payload = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("publishing to {topic}: {e}"))
}
