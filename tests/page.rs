//! The live rules page in headless Chromium (installed by scripts/install-deps.sh):
//! the numbers it shows are the ones `/metrics` counts, and a failed reload
//! is shown in full.

mod support;

use std::process::Command;
use std::time::Duration;

use support::provider::Provider;
use support::*;

/// The page's DOM after its scripts ran, as headless Chromium renders it.
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium is installed (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the cell `data-rule=… data-field=…`.
fn cell(dom: &str, rule: &str, field: &str) -> String {
    let marker = format!(r#"data-rule="{rule}" data-field="{field}">"#);
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {rule}/{field} in {dom}"))
        + marker.len();
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].trim().to_string()
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_page_shows_what_metrics_count_and_the_last_reload_error() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let rules = sample_rules(&topics);
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", true, false)).await;
    publish(&p, &topics.profiles, "u-2", &profile("u-2", false, false)).await;
    let text = config_text(&topics, rules.path(), &provider.base_url(), "");
    let (_, config) = load_config(rules.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    let addr = running.admin_addr();
    wait_ready(addr).await;
    for (user, amount) in [("u-1", 12.0), ("u-1", 30.0), ("u-2", 5.0)] {
        publish(
            &p,
            &topics.transactions,
            user,
            &swipe(user, amount, "approved", "US"),
        )
        .await;
    }
    read_json(&topics.outcomes, 3, Duration::from_secs(20), |_| true);

    let dom = rendered(&format!("http://{addr}/"));
    let (_, metrics) = admin_get(addr, "/metrics").await;
    let sent = metric(
        &metrics,
        r#"herald_rule_decisions_total{rule="purchase-notice",status="sent"}"#,
    );
    let suppressed = metric(
        &metrics,
        r#"herald_rule_decisions_total{rule="purchase-notice",status="suppressed"}"#,
    );
    let matches = metric(
        &metrics,
        r#"herald_rule_matches_total{rule="purchase-notice"}"#,
    );
    assert_eq!((sent, suppressed, matches), (2, 1, 3));
    assert_eq!(
        cell(&dom, "purchase-notice", "sent"),
        format!("{sent} / {sent}")
    );
    assert_eq!(
        cell(&dom, "purchase-notice", "matches"),
        format!("{matches} / {matches}")
    );
    assert_eq!(
        cell(&dom, "purchase-notice", "suppressed"),
        format!("{suppressed} / {suppressed}")
    );
    assert!(dom.contains("no_consent 1"), "suppressions by reason");
    assert!(cell(&dom, "purchase-notice", "latency").starts_with('≤'));
    assert_eq!(cell(&dom, "declined-velocity", "sent"), "0 / 0");
    assert!(
        dom.contains(r#"<pre id="reload-error" hidden="">"#),
        "no reload error yet"
    );

    std::fs::write(
        rules.path().join("broken.yaml"),
        "rules:\n  - id: broken\n    sources: [x]\n    channels: [push]\n    category: fraud\n    template: { body: \"{{ event.x \" }\n",
    )
    .unwrap();
    // The reload (300 ms debounce) fails and keeps the running rules.
    eventually(Duration::from_secs(10), || {
        let reloads = running
            .metrics()
            .rule_reloads
            .with_label_values(&["error"])
            .get();
        (reloads > 0).then_some(())
    })
    .await
    .expect("the broken file was seen");
    let dom = rendered(&format!("http://{addr}/"));
    assert!(
        dom.contains("The last reload failed; the rules below are still running."),
        "{dom}"
    );
    assert!(
        dom.contains(r#"broken.yaml:6:"#) && dom.contains(r#"rule "broken""#)
            || dom.contains("rule &quot;broken&quot;"),
        "{dom}"
    );
    assert_eq!(
        cell(&dom, "purchase-notice", "sent"),
        format!("{sent} / {sent}")
    );
    running.stop().await;
}
