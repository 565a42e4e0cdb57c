//! No card number in clear at rest: Luhn-valid card numbers, as keys and as
//! fields, through every pattern kind; then every record of every topic
//! herald wrote is scanned for them, and the sealed pattern state is read
//! back after a restart.

use std::time::Duration;

use serde_json::json;

use crate::support::provider::Provider;
use crate::support::*;

/// Luhn-valid test numbers (Visa, Mastercard, Amex, Visa).
const CARDS: [&str; 4] = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "4012888888881881",
];

const FENCE: &str = r#"{"type": "FeatureCollection", "features": [{"type": "Feature", "id": "mall",
  "properties": {"name": "Mall"}, "geometry": {"type": "Polygon", "coordinates": [[
  [-122.4090, 37.7838], [-122.4060, 37.7838], [-122.4060, 37.7860], [-122.4090, 37.7860], [-122.4090, 37.7838]]]}}]}"#;

/// One rule per pattern kind, each left open by the events below (their
/// state stays in the changelog), the first keyed by card number through
/// `key:`, the rest by the Kafka key (the card number too).
fn rules() -> String {
    let rule = |id: &str, sources: &str, pattern: &str| {
        format!(
            r#"  - id: {id}
    sources: [{sources}]
    pattern: {pattern}
    channels: [push]
    category: fraud
    template: {{ body: "{id} on {{{{ event.card | mask_card }}}}" }}
"#
        )
    };
    let mut yaml = String::from("rules:\n");
    yaml.push_str(&rule(
        "count",
        "TX",
        "{ window: { count: 4, within: 1h } }\n    key: event.card",
    ));
    yaml.push_str(&rule(
        "distinct-cards",
        "TX",
        "{ window: { distinct: card, at_least: 50, within: 1h } }\n    key: event.user_id",
    ));
    yaml.push_str(&rule(
        "sum",
        "TX",
        "{ window: { sum: amount, at_least: 1000000, within: 1h } }",
    ));
    yaml.push_str(&rule("consecutive", "TX", "{ consecutive: 50 }"));
    yaml.push_str(&rule(
        "sequence",
        "TX",
        "\n      sequence:\n        within: 1h\n        steps:\n          - { name: first, match: { status: approved } }\n          - { name: then, match: { status: refunded } }",
    ));
    yaml.push_str(&rule(
        "absence",
        "TX",
        "\n      absence:\n        after: { name: bought, match: { status: approved } }\n        missing: { name: refund, match: { status: refunded } }\n        within: 1h",
    ));
    yaml.push_str(&rule(
        "crossing",
        "TX",
        "{ crossing: { value: balance_after, below: 10, rearm: 50 } }",
    ));
    yaml.push_str(&rule(
        "dwell",
        "LOC",
        "{ geofence: { file: fence.geojson, on: dwell, dwell: 1h } }",
    ));
    yaml
}

/// Every record of `topic`, keys and values, as raw bytes.
fn raw_records(topic: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for (key, value) in read_all_records(topic, Duration::from_millis(500), Duration::from_secs(3))
    {
        all.extend(key.unwrap_or_default());
        all.push(b'\n');
        all.extend(value.unwrap_or_default());
        all.push(b'\n');
    }
    all
}

fn topics_named(prefixes: &[&str]) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_topic_herald_writes_holds_a_card_number_in_clear_and_sealed_state_reads_back() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("fence.geojson"), FENCE).unwrap();
    std::fs::write(
        rules_dir.join("rules.yaml"),
        rules()
            .replace("TX", &topics.transactions)
            .replace("LOC", &topics.locations),
    )
    .unwrap();
    publish(
        &producer(),
        &topics.profiles,
        "u-1",
        &profile("u-1", true, true),
    )
    .await;
    let text = config_text(&topics, &rules_dir, &provider.base_url(), "");
    let (_, config) = load_config(dir.path(), &text);
    let group = config.kafka.group_id.clone();
    let running = herald::start(config.clone()).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;

    let now = herald::util::now_ms();
    for (i, card) in CARDS.iter().enumerate() {
        for n in 0..3 {
            let swipe = json!({
                "user_id": "u-1", "ts": now + n, "card": card, "card_last4": &card[card.len() - 4..],
                "status": "approved", "amount": 12.5, "balance_after": 500 - i as i64,
                "merchant": format!("shop paid with {card}"),
            });
            publish(
                &producer(),
                &topics.transactions,
                card,
                swipe.to_string().as_bytes(),
            )
            .await;
        }
        let ping =
            json!({"user_id": "u-1", "ts": now, "card": card, "lat": 37.7849, "lon": -122.4075});
        publish(
            &producer(),
            &topics.locations,
            card,
            ping.to_string().as_bytes(),
        )
        .await;
    }
    let changelogs = [
        config.pattern_changelog(&topics.transactions),
        config.pattern_changelog(&topics.locations),
    ];
    // Every event handled, then every key's state is in its changelog once
    // herald has stopped.
    for (topic, n) in [(&topics.transactions, 12), (&topics.locations, 4)] {
        let line = format!("herald_events_consumed_total{{topic=\"{topic}\"}} {n}");
        let seen = admin_until(running.admin_addr(), "/metrics", |_, body| {
            body.contains(&line)
        })
        .await;
        assert!(seen.is_some(), "{line}");
    }
    running.stop().await;
    for changelog in &changelogs {
        // A quiet of 2 s: on a loaded machine a partition's records can
        // follow the last one's by more than half a second.
        let records = read_all_records(changelog, Duration::from_secs(2), Duration::from_secs(20));
        assert!(
            records.len() >= 4,
            "{changelog} has the patterns' state: {} records",
            records.len()
        );
    }

    // The sealed state reads back: after a restart with its state rebuilt
    // from the changelog (the instance's tables deleted; the deployment's
    // key kept, as HERALD_STATE_KEY would be), the fourth swipe of a card
    // completes its count.
    std::fs::remove_dir_all(dir.path().join("herald-state/instance-1")).unwrap();
    let running = herald::start(config).await.expect("herald starts again");
    wait_ready(running.admin_addr()).await;
    let card = CARDS[0];
    let swipe = json!({
        "user_id": "u-1", "ts": now + 10, "card": card, "card_last4": "1111",
        "status": "approved", "amount": 12.5, "balance_after": 400,
    });
    publish(
        &producer(),
        &topics.transactions,
        card,
        swipe.to_string().as_bytes(),
    )
    .await;
    let fired = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["rule"] == "count"
    });
    assert_eq!(fired[0]["status"], "sent", "{fired:?}");
    running.stop().await;

    // No topic herald wrote shows a card number: the test's topics and
    // herald's own (intents, changelogs, held).
    let prefix = topics
        .transactions
        .trim_end_matches("transactions")
        .to_string();
    let scanned = topics_named(&[&prefix, &format!("{group}.")]);
    assert!(scanned.len() >= 12, "{scanned:?}");
    for topic in &scanned {
        if *topic == topics.transactions || *topic == topics.locations {
            continue; // the payment system's own events
        }
        let bytes = raw_records(topic);
        for card in CARDS {
            assert!(
                !bytes.windows(card.len()).any(|w| w == card.as_bytes()),
                "{topic} holds {card} in clear"
            );
        }
    }
}
