//! Unit tests of the policy steps, each with an injected clock.
use super::*;
use crate::config::ChannelConfig;

fn console(name: &str) -> Channel {
    let circuit = prometheus::IntGauge::new("circuit", "circuit").unwrap();
    Channel::from_config(
        name,
        &ChannelConfig::console(),
        reqwest::Client::new(),
        circuit,
    )
    .unwrap()
}

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn subject<'a>(category: &'a str, rule_policy: &'a RulePolicy, event_ms: i64) -> Subject<'a> {
    Subject {
        rule: "r",
        category,
        rule_policy,
        event_ms,
    }
}

fn profile(zone: &str) -> Profile {
    let mut p = Profile {
        user_id: "u1".into(),
        time_zone: Some(zone.into()),
        ..Profile::default()
    };
    p.consent.insert("push".into(), true);
    p
}

#[test]
fn every_reason_code_has_a_metric_handle() {
    let cap = "1/day".parse().unwrap();
    let all = [
        Suppression::NoProfile,
        Suppression::NoConsent {
            channel: "c".into(),
        },
        Suppression::CategoryOff {
            category: "c".into(),
        },
        Suppression::Stale { age_s: 1, max_s: 0 },
        Suppression::QuietHours {
            window: "21:00-08:00".parse().unwrap(),
            zone: "UTC".into(),
            until_ms: 0,
        },
        Suppression::NoAddress {
            channel: "c".into(),
        },
        Suppression::DeadTokens {
            channel: "c".into(),
        },
        Suppression::InvalidPhone {
            channel: "c".into(),
        },
        Suppression::Capped(CapHit::All(cap)),
        Suppression::Duplicate,
        Suppression::UnknownAfterCrash,
        Suppression::SuppressedBy {
            engagement: "email_opened".into(),
        },
        Suppression::InvalidTimeZone,
    ];
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.code_index(), i, "{} is out of place in CODES", s.code());
    }
    assert_eq!(all.len(), Suppression::CODES.len());
    let texts: Vec<String> = all.iter().map(Suppression::text).collect();
    assert_eq!(
        texts,
        [
            "no_profile",
            "no_consent:c",
            "category_off:c",
            "stale:1s>0s",
            "quiet_hours:21:00-08:00 UTC",
            "no_address:c",
            "dead_tokens:c",
            "invalid_phone:c",
            "cap:all:1/day",
            "duplicate",
            "unknown_after_crash",
            "suppressed_by:email_opened",
            "invalid_time_zone",
        ]
    );
    let more = [
        Suppression::OptedOut {
            channel: "sms".into(),
        },
        Suppression::Capped(CapHit::Category(
            "marketing".into(),
            "12/week".parse().unwrap(),
        )),
        Suppression::Capped(CapHit::Rule("fraud".into(), "3/hour".parse().unwrap())),
        Suppression::Stale {
            age_s: -5,
            max_s: 300,
        },
        Suppression::QuietHours {
            window: "07:05-23:59".parse().unwrap(),
            zone: "Asia/Kolkata".into(),
            until_ms: 0,
        },
    ];
    let texts: Vec<String> = more.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        texts,
        [
            "no_consent:sms:opted_out",
            "cap:marketing:12/week",
            "cap:rule:fraud:3/hour",
            "stale:-5s>300s",
            "quiet_hours:07:05-23:59 Asia/Kolkata",
        ]
    );
}

#[test]
fn consent_and_preferences_come_first() {
    let policy = Policy::default();
    let ch = console("push");
    let none = RulePolicy::default();
    let now = ms("2026-07-01T15:00:00Z");
    let s = subject("fraud", &none, now);
    assert_eq!(
        policy
            .admit(None, &s, &ch, now, false)
            .unwrap_err()
            .to_string(),
        "no_profile"
    );
    let mut p = Profile {
        user_id: "u1".into(),
        ..Profile::default()
    };
    assert_eq!(
        policy
            .admit(Some(&p), &s, &ch, now, false)
            .unwrap_err()
            .to_string(),
        "no_consent:push"
    );
    p.consent.insert("push".into(), true);
    p.preferences.insert("marketing".into(), false);
    let m = subject("marketing", &none, now);
    assert_eq!(
        policy
            .admit(Some(&p), &m, &ch, now, false)
            .unwrap_err()
            .to_string(),
        "category_off:marketing"
    );
    assert!(policy.admit(Some(&p), &s, &ch, now, false).is_ok());
    assert_eq!(
        address(&p, &console("sms"), &ProfileTable::default())
            .unwrap()
            .masked()
            .len(),
        17
    );
}

#[test]
fn stale_messages_are_dropped_by_event_age() {
    let policy = Policy::default();
    let ch = console("push");
    let p = profile("UTC");
    let event = ms("2026-07-01T15:00:00Z");
    let tight = RulePolicy {
        max_age_s: Some(30),
        ..RulePolicy::default()
    };
    let s = subject("transactional", &tight, event);
    assert!(
        policy
            .admit(Some(&p), &s, &ch, event + 30_000, false)
            .is_ok(),
        "exactly at the limit is fresh"
    );
    let late = policy
        .admit(Some(&p), &s, &ch, event + 42_000, false)
        .unwrap_err();
    assert_eq!(late.to_string(), "stale:42s>30s");
    // Without a rule override, the category's ten minutes apply.
    let none = RulePolicy::default();
    let s = subject("transactional", &none, event);
    assert!(policy
        .admit(Some(&p), &s, &ch, event + 599_000, false)
        .is_ok());
    assert_eq!(
        policy
            .admit(Some(&p), &s, &ch, event + 601_000, false)
            .unwrap_err()
            .code(),
        "stale"
    );
}

#[test]
fn a_number_that_said_stop_is_refused_as_consent_is_before_quiet_hours_and_caps() {
    let policy = Policy::default();
    let ch = console("push");
    let p = profile("America/Chicago");
    let none = RulePolicy::default();
    // 21:30 CDT: marketing is in quiet hours; the STOP decides first.
    let now = ms("2026-07-02T02:30:00Z");
    let s = subject("marketing", &none, now);
    assert_eq!(
        policy
            .admit(Some(&p), &s, &ch, now, false)
            .unwrap_err()
            .code(),
        "quiet_hours"
    );
    assert_eq!(
        policy
            .admit(Some(&p), &s, &ch, now, true)
            .unwrap_err()
            .to_string(),
        "no_consent:push:opted_out"
    );
}

#[test]
fn quiet_hours_follow_the_recipient_zone_across_daylight_saving() {
    let policy = Policy::default();
    let ch = console("push");
    let p = profile("America/Chicago");
    let none = RulePolicy::default();
    let at = |t: &str| {
        let now = ms(t);
        policy
            .admit(Some(&p), &subject("marketing", &none, now), &ch, now, false)
            .map(|_| ())
    };
    // 02:30 UTC on 8 March 2026 is 20:30 CST (UTC-6) the evening before: allowed.
    assert!(at("2026-03-08T02:30:00Z").is_ok());
    // 02:30 UTC on 9 March is 21:30 CDT (UTC-5), after the spring change: quiet.
    assert_eq!(
        at("2026-03-09T02:30:00Z").unwrap_err().to_string(),
        "quiet_hours:21:00-08:00 America/Chicago"
    );
    // 13:30 UTC is 08:30 CDT in summer (sendable) but 07:30 CST in winter (quiet).
    assert!(at("2026-07-01T13:30:00Z").is_ok());
    assert_eq!(
        at("2026-12-01T13:30:00Z").unwrap_err().code(),
        "quiet_hours"
    );
    // Fraud bypasses quiet hours explicitly; a rule can turn them off.
    let now = ms("2026-12-01T13:30:00Z");
    assert!(policy
        .admit(Some(&p), &subject("fraud", &none, now), &ch, now, false)
        .is_ok());
    let off = RulePolicy {
        quiet_hours: Some(QuietHoursSetting::Off),
        ..RulePolicy::default()
    };
    assert!(policy
        .admit(Some(&p), &subject("marketing", &off, now), &ch, now, false)
        .is_ok());
}

#[test]
fn caps_apply_unless_the_category_bypasses_them() {
    let user = profile("UTC");
    let policy = Policy::default();
    let none = RulePolicy::default();
    let t0 = ms("2026-07-01T15:00:00Z");
    let m = subject("marketing", &none, t0);
    assert!(policy.reserve(&user, &m, t0).unwrap().is_some());
    assert_eq!(
        policy
            .reserve(&user, &m, t0 + 1000)
            .unwrap_err()
            .to_string(),
        "cap:marketing:1/hour"
    );
    let f = subject("fraud", &none, t0);
    for i in 0..50 {
        assert!(
            policy.reserve(&user, &f, t0 + i).unwrap().is_none(),
            "fraud is never capped"
        );
    }
    let once = RulePolicy {
        caps: vec!["1/day".parse().unwrap()],
        ..RulePolicy::default()
    };
    let r = Subject {
        rule: "once",
        category: "fraud",
        rule_policy: &once,
        event_ms: t0,
    };
    assert!(
        policy.reserve(&user, &r, t0).unwrap().is_some(),
        "a rule's own cap applies even to fraud"
    );
    assert_eq!(
        policy.reserve(&user, &r, t0 + 5).unwrap_err().to_string(),
        "cap:rule:once:1/day"
    );
}

fn quiet(
    policy: &Policy,
    p: &Profile,
    category: &str,
    rule: &RulePolicy,
    now: i64,
) -> Result<(), Suppression> {
    policy
        .admit(
            Some(p),
            &subject(category, rule, now),
            &console("push"),
            now,
            false,
        )
        .map(|_| ())
}

#[test]
fn a_users_own_quiet_hours_replace_the_window_but_never_add_one() {
    let policy = Policy::default();
    let none = RulePolicy::default();
    let mut p = profile("America/Chicago");
    p.quiet_hours = Some("22:00-07:00".parse().unwrap());
    // 21:30 CST (03:30Z): quiet by the default 21:00 start, not by the user's 22:00.
    assert!(quiet(&policy, &p, "marketing", &none, ms("2026-12-02T03:30:00Z")).is_ok());
    assert_eq!(
        quiet(&policy, &p, "marketing", &none, ms("2026-12-02T04:30:00Z"))
            .unwrap_err()
            .to_string(),
        "quiet_hours:22:00-07:00 America/Chicago"
    );
    // 07:30 CST: the user's window ended, the default (08:00) would still be quiet.
    assert!(quiet(&policy, &p, "marketing", &none, ms("2026-12-02T13:30:00Z")).is_ok());
    // Fraud bypasses quiet hours; the user's window does not bring them back.
    assert!(quiet(&policy, &p, "fraud", &none, ms("2026-12-02T05:00:00Z")).is_ok());
}

fn until(result: Result<(), Suppression>) -> i64 {
    match result {
        Err(Suppression::QuietHours { until_ms, .. }) => until_ms,
        other => panic!("expected quiet hours, got {other:?}"),
    }
}

#[test]
fn quiet_hours_end_at_local_time_across_daylight_saving_changes() {
    let policy = Policy::default();
    let none = RulePolicy::default();
    let p = profile("America/Chicago");
    // Fall back: 22:00 CDT on 31 October; 08:00 the next morning is CST (UTC-6).
    let t = ms("2026-11-01T03:00:00Z");
    assert_eq!(
        until(quiet(&policy, &p, "marketing", &none, t)),
        ms("2026-11-01T14:00:00Z")
    );
    // Spring forward: 22:00 CST on 7 March; 08:00 the next morning is CDT (UTC-5).
    let t = ms("2026-03-08T04:00:00Z");
    assert_eq!(
        until(quiet(&policy, &p, "marketing", &none, t)),
        ms("2026-03-08T13:00:00Z")
    );
    // After midnight the end is the same morning, not the next.
    let t = ms("2026-03-08T07:30:00Z"); // 01:30 CST
    assert_eq!(
        until(quiet(&policy, &p, "marketing", &none, t)),
        ms("2026-03-08T13:00:00Z")
    );
    // A window ending inside the skipped hour (02:30 does not exist on 8 March)
    // ends at the first instant after the gap, 03:30 CDT.
    let late = RulePolicy {
        quiet_hours: Some(QuietHoursSetting::Window("21:00-02:30".parse().unwrap())),
        ..RulePolicy::default()
    };
    let t = ms("2026-03-08T05:00:00Z"); // 23:00 CST
    assert_eq!(
        until(quiet(&policy, &p, "marketing", &late, t)),
        ms("2026-03-08T08:30:00Z")
    );
}

#[test]
fn a_held_message_is_released_at_the_end_unless_it_went_stale() {
    let policy = Policy::default();
    let p = profile("America/Chicago");
    let hold = RulePolicy {
        on_quiet_hours: Some(QuietAction::Hold),
        max_age_s: Some(12 * 3600),
        ..RulePolicy::default()
    };
    let event = ms("2026-12-02T04:00:00Z"); // 22:00 CST
    let s = subject("marketing", &hold, event);
    assert!(policy.holds(&s));
    assert!(
        !policy.holds(&subject("marketing", &RulePolicy::default(), event)),
        "drop by default"
    );
    let end = until(quiet(&policy, &p, "marketing", &hold, event));
    assert_eq!(end, ms("2026-12-02T14:00:00Z"));
    // At release the same steps run again: a minute before the end it is still quiet,
    // at the end it passes.
    let check = |now| {
        policy
            .admit(Some(&p), &s, &console("push"), now, false)
            .map(|_| ())
    };
    assert_eq!(check(end - 60_000).unwrap_err().code(), "quiet_hours");
    assert!(check(end).is_ok());
    // With a freshness limit shorter than the night, the held message is stale at release.
    let short = RulePolicy {
        on_quiet_hours: Some(QuietAction::Hold),
        max_age_s: Some(3600),
        ..RulePolicy::default()
    };
    let s = subject("marketing", &short, event);
    assert_eq!(
        policy
            .admit(Some(&p), &s, &console("push"), end, false)
            .unwrap_err()
            .to_string(),
        "stale:36000s>3600s"
    );
}

#[test]
fn caps_count_up_to_their_exact_boundary_and_users_can_tighten_them() {
    let policy = Policy::default();
    let none = RulePolicy::default();
    let t0 = ms("2026-07-01T15:00:00Z");
    let m = subject("marketing", &none, t0);
    let user = profile("UTC");
    policy.reserve(&user, &m, t0).unwrap();
    assert_eq!(
        policy
            .reserve(&user, &m, t0 + 3_599_999)
            .unwrap_err()
            .to_string(),
        "cap:marketing:1/hour",
        "one millisecond inside the hour"
    );
    assert!(
        policy.reserve(&user, &m, t0 + 3_600_000).unwrap().is_some(),
        "exactly one hour later the first send has left the window"
    );
    let mut strict = profile("UTC");
    strict.user_id = "u2".into();
    strict
        .caps
        .insert("marketing".into(), vec!["1/day".parse().unwrap()]);
    strict
        .caps
        .insert("all".into(), vec!["2/day".parse().unwrap()]);
    policy.reserve(&strict, &m, t0).unwrap();
    assert_eq!(
        policy
            .reserve(&strict, &m, t0 + 7_200_000)
            .unwrap_err()
            .to_string(),
        "cap:marketing:1/day",
        "the user's own cap replaces 1/hour"
    );
    let t = subject("transactional", &none, t0);
    let capped = RulePolicy {
        caps: vec!["10/day".parse().unwrap()],
        ..RulePolicy::default()
    };
    let c = subject("news", &capped, t0);
    assert!(policy.reserve(&strict, &c, t0 + 1).unwrap().is_some());
    assert_eq!(
        policy.reserve(&strict, &c, t0 + 2).unwrap_err().to_string(),
        "cap:all:2/day",
        "the user's own cap across categories"
    );
    assert!(
        policy.reserve(&strict, &t, t0 + 3).unwrap().is_none(),
        "transactional still bypasses caps"
    );
}

#[test]
fn engagement_elsewhere_suppresses_within_its_window() {
    let policy = Policy::default();
    let feedback = crate::feedback::FeedbackState::new(
        rdkafka::ClientConfig::new(),
        "f".into(),
        "c".into(),
        86_400_000,
    );
    let rule: RulePolicy = serde_json::from_value(serde_json::json!({
        "suppress_if": [{ "engaged": "email_opened", "within": "2h" }]
    }))
    .unwrap();
    let now = ms("2026-07-01T15:00:00Z");
    let check = |campaign| policy.engaged_elsewhere(&feedback, "u1", &rule, campaign, now);
    assert!(check(Some("spring")).is_ok());
    feedback.engaged_now("u1", "email_opened", Some("spring"), now - 7_200_000);
    assert_eq!(
        check(Some("spring")).unwrap_err().to_string(),
        "suppressed_by:email_opened",
        "exactly two hours ago is within"
    );
    assert!(check(Some("autumn")).is_ok(), "another campaign");
    assert!(
        policy
            .engaged_elsewhere(&feedback, "u2", &rule, Some("spring"), now)
            .is_ok(),
        "another user"
    );
    let later = now + 1;
    assert!(
        policy
            .engaged_elsewhere(&feedback, "u1", &rule, Some("spring"), later)
            .is_ok(),
        "a millisecond past the window"
    );
}

#[test]
fn a_bad_time_zone_suppresses_only_what_quiet_hours_govern() {
    let policy = Policy::default();
    let none = RulePolicy::default();
    let (p, _) = Profile::parse(
        "u1",
        br#"{"time_zone":"Mars/Olympus","consent":{"push":true}}"#,
    )
    .unwrap();
    let now = ms("2026-07-01T15:00:00Z");
    assert_eq!(
        quiet(&policy, &p, "marketing", &none, now)
            .unwrap_err()
            .to_string(),
        "invalid_time_zone"
    );
    assert!(
        quiet(&policy, &p, "fraud", &none, now).is_ok(),
        "fraud bypasses quiet hours, so the zone is not needed"
    );
}
