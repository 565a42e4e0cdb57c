//! `herald experiment report`: per arm of an experiment, the users exposed, the messages (or would-be messages), the users who converted and the rate, and each arm's lift over the control arm with a 95 % confidence interval — from outcome and conversion records (the topics, or a replay's output) — as a table and as an SVG chart.
//!
//! The statistics, so a reader can check them by hand:
//! - a user is **exposed** in an arm when an outcome of the experiment says
//!   a message was sent to them (not a shadow's) or, in the control arm,
//!   would have been (`holdout`); a user **converted** when a conversion
//!   record of the experiment names them in that arm. Rates are per user:
//!   `p = converted / exposed`, so a user who converts twice counts once.
//! - the lift of an arm is `p_arm − p_control` (absolute) and
//!   `p_arm / p_control − 1` (relative). The absolute difference has a Wald
//!   interval, `± 1.96 · √(p₁(1−p₁)/n₁ + p₀(1−p₀)/n₀)`; the relative lift the
//!   log-ratio (Katz) interval, `exp(ln(p₁/p₀) ± 1.96 · √((1−p₁)/c₁ + (1−p₀)/c₀)) − 1`;
//!   the p-value is the two-sided two-proportion z-test with the pooled rate.
//! - each arm's own rate has a Wilson score interval (the chart's whiskers).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The 97.5th percentile of the standard normal distribution.
const Z: f64 = 1.959_963_984_540_054;

/// One arm's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmFigures {
    pub arm: String,
    /// Its decisions were holdouts: the control arm.
    pub control: bool,
    pub users: u64,
    /// Messages sent (or, in the control arm, that would have been).
    pub sends: u64,
    /// Users who converted.
    pub conversions: u64,
    pub rate: f64,
    /// Wilson 95 % interval of the rate.
    pub rate_low: f64,
    pub rate_high: f64,
    /// Against the control arm (none for the control arm itself, or
    /// without one).
    pub lift: Option<Lift>,
}

/// An arm against the control arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lift {
    pub absolute: f64,
    pub absolute_low: f64,
    pub absolute_high: f64,
    /// `None` when the control arm or the arm has no conversion (the ratio
    /// and its interval are undefined).
    pub relative: Option<(f64, f64, f64)>,
    pub p_value: f64,
}

/// An experiment's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub experiment: String,
    pub arms: Vec<ArmFigures>,
    /// Conversion records of users never exposed in their arm (ignored).
    pub unattributed: u64,
}

/// The report of `experiment` over outcome and conversion records (any
/// order; others are ignored).
pub fn report(experiment: &str, records: impl IntoIterator<Item = Value>) -> Report {
    let mut exposed: BTreeMap<String, (bool, BTreeSet<String>, u64)> = BTreeMap::new();
    let mut converted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in records {
        if r["kind"] == "conversion" {
            if r["experiment"] == experiment {
                if let (Some(arm), Some(user)) = (r["arm"].as_str(), r["user"].as_str()) {
                    converted.entry(arm.into()).or_default().insert(user.into());
                }
            }
            continue;
        }
        let e = &r["experiment"];
        if e["id"] != experiment {
            continue;
        }
        let (Some(arm), Some(user)) = (e["arm"].as_str(), r["user"].as_str()) else {
            continue;
        };
        let holdout = r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("holdout:"));
        let sent = r["status"] == "sent" && r["shadow"] != true;
        if !(sent || holdout) {
            continue;
        }
        let entry = exposed.entry(arm.into()).or_default();
        entry.0 |= holdout;
        entry.1.insert(user.into());
        entry.2 += 1;
    }
    let mut unattributed = 0;
    let mut arms: Vec<ArmFigures> = exposed
        .iter()
        .map(|(arm, (control, users, sends))| {
            let conv = converted.get(arm).map_or(0, |c| {
                let (inside, outside): (Vec<_>, Vec<_>) =
                    c.iter().partition(|u| users.contains(*u));
                unattributed += outside.len() as u64;
                inside.len() as u64
            });
            let n = users.len() as u64;
            let rate = ratio(conv, n);
            let (rate_low, rate_high) = wilson(conv, n);
            ArmFigures {
                arm: arm.clone(),
                control: *control,
                users: n,
                sends: *sends,
                conversions: conv,
                rate,
                rate_low,
                rate_high,
                lift: None,
            }
        })
        .collect();
    for (arm, c) in &converted {
        if !exposed.contains_key(arm) {
            unattributed += c.len() as u64;
        }
    }
    if let Some(control) = arms.iter().find(|a| a.control).cloned() {
        for a in arms.iter_mut().filter(|a| !a.control) {
            a.lift = Some(lift(
                (control.conversions, control.users),
                (a.conversions, a.users),
            ));
        }
    }
    // The control arm first, then by name.
    arms.sort_by(|a, b| b.control.cmp(&a.control).then(a.arm.cmp(&b.arm)));
    Report {
        experiment: experiment.to_string(),
        arms,
        unattributed,
    }
}

fn ratio(c: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        c as f64 / n as f64
    }
}

/// The Wilson score 95 % interval of `c` successes in `n`.
pub fn wilson(c: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (n, p) = (n as f64, c as f64 / n as f64);
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// An arm (`c₁` of `n₁`) against the control arm (`c₀` of `n₀`).
pub fn lift((c0, n0): (u64, u64), (c1, n1): (u64, u64)) -> Lift {
    let (p0, p1) = (ratio(c0, n0), ratio(c1, n1));
    let (f0, f1) = (n0.max(1) as f64, n1.max(1) as f64);
    let se = (p1 * (1.0 - p1) / f1 + p0 * (1.0 - p0) / f0).sqrt();
    let absolute = p1 - p0;
    let relative = (c0 > 0 && c1 > 0).then(|| {
        let log = (p1 / p0).ln();
        let se = ((1.0 - p1) / c1 as f64 + (1.0 - p0) / c0 as f64).sqrt();
        (
            p1 / p0 - 1.0,
            (log - Z * se).exp() - 1.0,
            (log + Z * se).exp() - 1.0,
        )
    });
    let pooled = ratio(c0 + c1, n0 + n1);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / f0 + 1.0 / f1)).sqrt();
    let p_value = if se0 > 0.0 {
        2.0 * (1.0 - normal_cdf((absolute / se0).abs()))
    } else {
        1.0
    };
    Lift {
        absolute,
        absolute_low: absolute - Z * se,
        absolute_high: absolute + Z * se,
        relative,
        p_value,
    }
}

/// The standard normal CDF (W. J. Cody's erfc rational approximation via
/// `erfc(x) = …`, Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() / std::f64::consts::SQRT_2);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-(x * x) / 2.0).exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn signed_pct(x: f64) -> String {
    format!("{:+.2} %", x * 100.0)
}

/// The report as a table for the terminal.
pub fn text(r: &Report) -> String {
    let mut out = format!("experiment {}\n", r.experiment);
    out.push_str(&format!(
        "{:<16} {:>8} {:>8} {:>11} {:>9}  {:<28} {:<34} {:>8}\n",
        "arm",
        "users",
        "sends",
        "conversions",
        "rate",
        "lift (abs, 95 % CI)",
        "lift (relative, 95 % CI)",
        "p"
    ));
    for a in &r.arms {
        let name = if a.control {
            format!("{} (control)", a.arm)
        } else {
            a.arm.clone()
        };
        let (abs, rel, p) = match &a.lift {
            None => ("—".to_string(), "—".to_string(), "—".to_string()),
            Some(l) => (
                format!(
                    "{} [{}, {}]",
                    signed_pct(l.absolute),
                    signed_pct(l.absolute_low),
                    signed_pct(l.absolute_high)
                ),
                match l.relative {
                    Some((v, lo, hi)) => {
                        format!("{} [{}, {}]", signed_pct(v), signed_pct(lo), signed_pct(hi))
                    }
                    None => "— (no conversion in an arm)".into(),
                },
                format!("{:.4}", l.p_value),
            ),
        };
        out.push_str(&format!(
            "{:<16} {:>8} {:>8} {:>11} {:>9}  {:<28} {:<34} {:>8}\n",
            name,
            a.users,
            a.sends,
            a.conversions,
            pct(a.rate),
            abs,
            rel,
            p
        ));
    }
    if !r.arms.iter().any(|a| a.control) {
        out.push_str("no control arm: no lift\n");
    }
    if r.unattributed > 0 {
        out.push_str(&format!(
            "{} conversions of users with no exposure in their arm here (outside the records read) are left out\n",
            r.unattributed
        ));
    }
    out
}

/// The report as an SVG bar chart: each arm's conversion rate with its
/// Wilson 95 % interval, the control arm grey.
pub fn svg(r: &Report) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 30.0, 60.0, 90.0);
    let top_rate = r
        .arms
        .iter()
        .map(|a| a.rate_high)
        .fold(0.0_f64, f64::max)
        .max(0.01)
        * 1.15;
    let plot_h = h - top - bottom;
    let y = |rate: f64| top + plot_h * (1.0 - rate / top_rate);
    let slot = (w - left - right) / r.arms.len().max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, sans-serif">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{left}" y="30" font-size="18">Experiment {}: conversion rate per arm (95 % CI)</text>
"#,
        escape(&r.experiment)
    );
    for i in 0..=4 {
        let rate = top_rate * i as f64 / 4.0;
        let yy = y(rate);
        s.push_str(&format!(
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="12" text-anchor="end">{}</text>
"##,
            w - right,
            left - 8.0,
            yy + 4.0,
            pct(rate)
        ));
    }
    for (i, a) in r.arms.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.6;
        let colour = if a.control { "#9e9e9e" } else { "#1f77b4" };
        let (y0, y1) = (y(a.rate), y(0.0));
        let cx = x + bw / 2.0;
        let lift = match &a.lift {
            Some(l) => format!("{} vs control", signed_pct(l.absolute)),
            None => String::new(),
        };
        s.push_str(&format!(
            r##"<rect x="{x:.1}" y="{y0:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"/>
<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>
<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>
<text x="{cx:.1}" y="{:.1}" font-size="13" text-anchor="middle">{}</text>
<text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{} · {} users</text>
<text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>
"##,
            (y1 - y0).max(0.0),
            y(a.rate_high),
            y(a.rate_low),
            cx - 8.0,
            cx + 8.0,
            y(a.rate_high),
            y(a.rate_high),
            cx - 8.0,
            cx + 8.0,
            y(a.rate_low),
            y(a.rate_low),
            h - bottom + 22.0,
            escape(&if a.control { format!("{} (control)", a.arm) } else { a.arm.clone() }),
            h - bottom + 40.0,
            pct(a.rate),
            a.users,
            h - bottom + 58.0,
            escape(&lift)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Every record of `topic` (JSON values), from its start to its end now.
pub fn read_topic(config: &crate::config::Config, topic: &str) -> Result<Vec<Value>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::time::Duration;
    let mut client = crate::kafka::profile_reader_config(&config.kafka);
    client.set("group.id", "herald-experiment-report");
    let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let partitions = crate::kafka::follow::partition_ids(&metadata);
    if partitions.is_empty() {
        return Err(format!("topic `{topic}` does not exist"));
    }
    let ends = crate::kafka::offsets::assign_to_ends(
        &consumer,
        topic,
        &partitions,
        Duration::from_secs(10),
        |_, low, _| low,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let unread = crate::kafka::offsets::read_to_ends(
        &consumer,
        ends,
        crate::kafka::offsets::ReadLimit::Quiet(Duration::from_secs(30)),
        |m| {
            if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        },
    )
    .map_err(|e| e.to_string())?;
    if !unread.is_empty() {
        return Err(format!(
            "`{topic}` was not read to its end (no record for 30 s)"
        ));
    }
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    /// 1,000 users per arm; control converts 100, the arm 130. By hand:
    /// p₀ = 0.10, p₁ = 0.13, difference 0.03;
    /// SE = √(0.13·0.87/1000 + 0.10·0.90/1000) = √0.0002031 = 0.014251,
    /// CI 0.03 ± 1.96·0.014251 = [0.002068, 0.057932];
    /// relative 0.30, ln 1.3 = 0.262364, SE = √(0.87/130 + 0.90/100) = 0.125269,
    /// CI exp(0.262364 ± 0.245527) − 1 = [0.016980, 0.661750];
    /// pooled 0.115, SE₀ = √(0.115·0.885·0.002) = 0.014267, z = 2.1028, p = 0.0355.
    #[test]
    fn the_lift_and_its_interval_are_those_computed_by_hand() {
        let l = lift((100, 1000), (130, 1000));
        assert!(close(l.absolute, 0.03), "{l:?}");
        assert!(close(l.absolute_low, 0.002068), "{l:?}");
        assert!(close(l.absolute_high, 0.057932), "{l:?}");
        let (rel, lo, hi) = l.relative.unwrap();
        assert!(
            close(rel, 0.30) && close(lo, 0.016980) && close(hi, 0.661750),
            "{l:?}"
        );
        assert!((l.p_value - 0.0355).abs() < 5e-4, "{l:?}");
        // Wilson for 100 of 1,000: [0.0829, 0.1203].
        let (lo, hi) = wilson(100, 1000);
        assert!(
            (lo - 0.0829).abs() < 5e-4 && (hi - 0.1203).abs() < 5e-4,
            "{lo} {hi}"
        );
    }

    #[test]
    fn users_exposures_and_conversions_are_counted_per_arm_from_the_records() {
        let sent = |user: &str, arm: &str| json!({"user": user, "status": "sent", "experiment": {"id": "e", "arm": arm}});
        let holdout = |user: &str| json!({"user": user, "status": "suppressed", "reason": "holdout:e", "experiment": {"id": "e", "arm": "control"}});
        let conv = |user: &str, arm: &str| json!({"kind": "conversion", "experiment": "e", "arm": arm, "user": user});
        let records = vec![
            holdout("a"),
            holdout("b"),
            holdout("b"),
            sent("c", "new"),
            sent("d", "new"),
            sent("c", "new"),
            // Not exposures: suppressed by policy, a shadow, another experiment.
            json!({"user": "e", "status": "suppressed", "reason": "no_consent:push", "experiment": {"id": "e", "arm": "new"}}),
            json!({"user": "f", "status": "sent", "shadow": true, "experiment": {"id": "e", "arm": "new"}}),
            json!({"user": "g", "status": "sent", "experiment": {"id": "other", "arm": "new"}}),
            conv("a", "control"),
            conv("c", "new"),
            conv("c", "new"),
            conv("d", "new"),
            conv("z", "new"),
        ];
        let r = report("e", records);
        assert_eq!(r.arms.len(), 2);
        let (control, new) = (&r.arms[0], &r.arms[1]);
        assert!(control.control && control.arm == "control");
        assert_eq!(
            (control.users, control.sends, control.conversions),
            (2, 3, 1)
        );
        assert_eq!((new.users, new.sends, new.conversions), (2, 3, 2));
        assert!(close(new.rate, 1.0) && close(control.rate, 0.5));
        assert!(close(new.lift.unwrap().absolute, 0.5));
        assert_eq!(r.unattributed, 1, "z was never exposed");
        let table = text(&r);
        assert!(table.contains("control (control)"), "{table}");
        let chart = svg(&r);
        assert!(
            chart.starts_with("<svg") && chart.contains("new"),
            "{chart}"
        );
    }
}
