//! The live rules page in headless Chromium (installed by scripts/install-deps.sh):
//! the numbers it shows are the ones `/metrics` counts, latency percentiles
//! are the measured ones of the outcomes, the operator's strip shows
//! readiness, dead letters, consumer lag and held messages, a screenshot is
//! taken, and a failed reload is shown in full.

use std::process::Command;
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;

/// Headless Chromium on `url` with `what` (`--dump-dom`, `--screenshot=…`):
/// its standard output.
fn chromium(url: &str, what: &[&str]) -> Vec<u8> {
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
        ])
        .args(what)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium is installed (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The page's DOM after its scripts ran, as headless Chromium renders it.
fn rendered(url: &str) -> String {
    String::from_utf8_lossy(&chromium(url, &["--dump-dom"])).into_owned()
}

/// A screenshot of the page as headless Chromium draws it at 1280×900, PNG.
fn screenshot(url: &str, path: &std::path::Path) -> Vec<u8> {
    let target = format!("--screenshot={}", path.display());
    chromium(
        url,
        &["--hide-scrollbars", "--window-size=1280,900", &target],
    );
    std::fs::read(path).expect("the screenshot was written")
}

/// The inner HTML of the element with `id`, up to its closing tag.
fn element(dom: &str, id: &str) -> String {
    let marker = format!(r#"id="{id}">"#);
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"))
        + marker.len();
    let end = start + dom[start..].find("</div>").unwrap();
    dom[start..end].to_string()
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
    publish(&p, &topics.transactions, "u-9", b"not json at all").await;
    let outcomes = read_json(&topics.outcomes, 3, Duration::from_secs(20), |_| true);
    read_json(&topics.dlq, 1, Duration::from_secs(20), |_| true);
    // librdkafka reports lag every 5 s.
    eventually(Duration::from_secs(20), || {
        let text = running.metrics().render();
        text.contains("herald_consumer_lag{").then_some(())
    })
    .await
    .expect("consumer lag is reported");

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
    // Measured percentiles of the two sends, not bucket bounds.
    let mut latencies: Vec<i64> = outcomes
        .iter()
        .filter(|o| o["status"] == "sent")
        .map(|o| {
            let t = &o["timings"];
            t["request_sent_ms"]
                .as_i64()
                .unwrap()
                .max(t["matched_ms"].as_i64().unwrap())
                - t["event_ms"].as_i64().unwrap()
        })
        .collect();
    latencies.sort_unstable();
    assert_eq!(
        cell(&dom, "purchase-notice", "latency"),
        format!("{} / {} ms", latencies[0], latencies[1])
    );
    assert_eq!(cell(&dom, "purchase-notice", "held"), "0");
    assert!(element(&dom, "readiness").contains("ready"), "{dom}");
    assert!(!element(&dom, "readiness").contains("not ready"), "{dom}");
    assert_eq!(element(&dom, "dead-letters"), "not_json 1");
    let lag = element(&dom, "lag");
    for partition in 0..2 {
        assert!(
            lag.contains(&format!("{}[{partition}] 0", topics.transactions)),
            "every owned partition with its lag: {lag}"
        );
    }
    assert_eq!(element(&dom, "held"), "0");
    let shot = std::env::temp_dir().join(format!("herald-page-{}.png", std::process::id()));
    let png = screenshot(&format!("http://{addr}/"), &shot);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1280, 900));
    assert!(
        png.len() > 20_000,
        "the page is drawn, not blank: {} bytes",
        png.len()
    );
    eprintln!("screenshot of the live page: {}", shot.display());
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
