//! Hot reload on the real broker: a broken rule file never replaces working rules; a fix does.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;

fn rule(id: &str, topic: &str, title: &str) -> String {
    format!(
        r#"rules:
  - id: {id}
    sources: [{topic}]
    channels: [push]
    category: transactional
    template:
      title: "{title}"
      body: "{{{{ event.amount | money(event.currency) }}}}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rule_file_keeps_old_rules_and_a_fix_takes_effect() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("a.yaml"),
        rule("old-rule", &topics.transactions, "old"),
    )
    .unwrap();
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", true, true)).await;
    let conf_dir = tempfile::tempdir().unwrap();
    let (_, config) = load_config(
        conf_dir.path(),
        &config_text(&topics, rules.path(), &provider.base_url(), ""),
    );
    let running = herald::start(config).await.unwrap();
    wait_ready(running.admin_addr()).await;

    // A broken file dropped into the watched folder.
    let broken = format!(
        "rules:\n  - id: new-rule\n    sources: [{}]\n    channels: [push]\n    category: fraud\n    condition: event.amount >\n    template: {{ body: \"x\" }}\n",
        topics.transactions
    );
    std::fs::write(rules.path().join("b.yaml"), broken).unwrap();
    let addr = running.admin_addr();
    let mut shown = None;
    for _ in 0..60 {
        let (_, body) = admin_get(addr, "/rules").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !v["last_reload_error"].is_null() {
            shown = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = shown.expect("the reload error shows on /rules within 6 s");
    let error = v["last_reload_error"][0].as_str().unwrap();
    assert!(error.ends_with("b.yaml:6:30: rule \"new-rule\": condition: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"), "{error}");
    assert_eq!(v["rules"].as_array().unwrap().len(), 1);
    assert_eq!(v["rules"][0]["id"], "old-rule");
    let (_, metrics) = admin_get(addr, "/metrics").await;
    assert!(
        metrics.contains("herald_rule_reloads_total{result=\"error\"}"),
        "{metrics}"
    );

    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 5.0, "approved", "US"),
    )
    .await;
    let first = eventually(Duration::from_secs(20), || {
        let r = provider.received_by("fcm");
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("the old rules keep sending");
    assert_eq!(first[0].json["message"]["notification"]["title"], "old");

    // Fixing the file: the new rule loads and sends, beside the old one.
    std::fs::write(
        rules.path().join("b.yaml"),
        rule("new-rule", &topics.transactions, "new"),
    )
    .unwrap();
    let mut loaded = None;
    for _ in 0..60 {
        let (_, body) = admin_get(addr, "/rules").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["rules"].as_array().unwrap().len() == 2 && v["last_reload_error"].is_null() {
            loaded = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded.is_some(), "the fixed file is loaded within 6 s");
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 6.0, "approved", "US"),
    )
    .await;
    let titles = eventually(Duration::from_secs(20), || {
        let titles: Vec<String> = provider
            .received_by("fcm")
            .iter()
            .map(|r| {
                r.json["message"]["notification"]["title"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (titles.len() >= 3).then_some(titles)
    })
    .await
    .expect("both rules send for the second event");
    assert_eq!(titles[0], "old");
    let mut rest = titles[1..].to_vec();
    rest.sort();
    assert_eq!(rest, vec!["new", "old"]);
    running.stop().await;
}
