//! `herald simulate` on the real broker: it publishes what it says, keyed as
//! DESIGN.md says, and the same seed gives the same events.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn simulate(topics: &Topics, locations: &str, seed: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "simulate",
            "--brokers",
            &brokers(),
            "--count",
            "60",
            "--rate",
            "2000",
            "--users",
            "20",
            "--sites",
            "2",
            "--seed",
            seed,
        ])
        .args([
            "--profiles-topic",
            &topics.profiles,
            "--transactions-topic",
            &topics.transactions,
        ])
        .args([
            "--sensors-topic",
            &topics.sensors,
            "--locations-topic",
            locations,
        ])
        .output()
        .expect("herald simulate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_profiles_and_a_repeatable_stream() {
    let a = Topics::create(1).await;
    let b = Topics::create(1).await;
    // Each set's (unused) outcomes topic serves as its locations topic.
    let report = simulate(&a, &a.outcomes, "9");
    assert!(report.contains("published 22 profiles"), "{report}");
    assert!(report.contains("sent 60 events"), "{report}");
    simulate(&b, &b.outcomes, "9");

    let read = |t: &Topics| {
        let (quiet, limit) = (Duration::from_millis(700), Duration::from_secs(10));
        let mut all = read_all_json(&t.transactions, quiet, limit);
        all.extend(read_all_json(&t.sensors, quiet, limit));
        all.extend(read_all_json(&t.outcomes, quiet, limit));
        all
    };
    let (first, second) = (read(&a), read(&b));
    assert_eq!(first.len(), 60, "every event reached the broker");
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        for time in ["ts", "produced_ms"] {
            v.as_object_mut().unwrap().remove(time);
        }
        v.to_string()
    };
    let mut x: Vec<String> = first.iter().map(strip).collect();
    let mut y: Vec<String> = second.iter().map(strip).collect();
    x.sort();
    y.sort();
    assert_eq!(x, y, "same seed, same events (times aside)");
    let swipe = first
        .iter()
        .find(|e| e.get("card_last4").is_some())
        .expect("a card swipe");
    for field in [
        "user_id",
        "merchant",
        "amount",
        "currency",
        "country",
        "status",
        "balance_after",
    ] {
        assert!(swipe.get(field).is_some(), "swipe has {field}: {swipe}");
    }
    let profiles = read_json(&a.profiles, 22, Duration::from_secs(10), |_| true);
    assert_eq!(profiles.len(), 22);
    for p in profiles {
        let user = p["user_id"].as_str().unwrap().to_string();
        let (_, problems) =
            herald::profile::Profile::parse(&user, p.to_string().as_bytes()).expect("a profile");
        assert!(problems.is_empty(), "{problems:?}");
    }
}
