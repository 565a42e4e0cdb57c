//! Unit tests of the policy steps, each with an injected clock.
use super::*;
use crate::config::ChannelConfig;
use crate::deliver::Channel;
use crate::profile::{Profile, ProfileTable};

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

/// A Twilio channel (never sent to here), for steps that care about SMS.
fn twilio(name: &str) -> Channel {
    let circuit = prometheus::IntGauge::new("circuit", "circuit").unwrap();
    std::env::set_var("HERALD_POLICY_TEST_SID", "AC0000");
    std::env::set_var("HERALD_POLICY_TEST_TOKEN", "secret");
    let config = ChannelConfig::Twilio(crate::config::TwilioConfig {
        account_sid_env: "HERALD_POLICY_TEST_SID".into(),
        auth_token_env: "HERALD_POLICY_TEST_TOKEN".into(),
        from: Some("+15005550006".into()),
        ..Default::default()
    });
    Channel::from_config(name, &config, reqwest::Client::new(), circuit).unwrap()
}

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// What one decision is about (the rule's side of a draft).
struct Subject<'a> {
    rule: &'a str,
    category: &'a str,
    rule_policy: &'a RulePolicy,
    event_ms: i64,
}

fn subject<'a>(category: &'a str, rule_policy: &'a RulePolicy, event_ms: i64) -> Subject<'a> {
    Subject {
        rule: "r",
        category,
        rule_policy,
        event_ms,
    }
}

fn draft<'a>(
    profile: Option<&'a Profile>,
    s: &'a Subject<'a>,
    channel: &'a Channel,
    now_ms: i64,
) -> Draft<'a> {
    Draft {
        rule: s.rule,
        category: s.category,
        rule_policy: s.rule_policy,
        campaign: None,
        user: profile.map_or("u1", |p| &*p.user_id),
        event_ms: s.event_ms,
        profile,
        channel,
        now_ms,
        address: None,
        reservation: None,
        digest: crate::policy::DigestRole::None,
    }
}

/// The verdict of the chain's steps from `from` up to (not including)
/// `until`, by name, in the chain's order, with no broker behind the
/// feedback state.
fn verdict(
    policy: &Policy,
    feedback: &FeedbackState,
    d: &mut Draft<'_>,
    from: &str,
    until: &str,
) -> Verdict {
    let table = ProfileTable::default();
    let cx = policy.context(feedback, &table, std::time::Duration::ZERO);
    policy
        .steps
        .iter()
        .skip_while(|s| s.name() != from)
        .take_while(|s| s.name() != until)
        .map(|s| s.check(d, &cx))
        .find(|v| *v != Verdict::Continue)
        .unwrap_or(Verdict::Continue)
}

/// The steps before the address (consent, category, freshness, quiet
/// hours); a deferral reads as its reason.
fn admit(
    policy: &Policy,
    profile: Option<&Profile>,
    s: &Subject<'_>,
    ch: &Channel,
    now: i64,
) -> Result<(), Suppression> {
    let feedback = FeedbackState::offline(86_400_000);
    match verdict(
        policy,
        &feedback,
        &mut draft(profile, s, ch, now),
        "consent",
        "address",
    ) {
        Verdict::Continue => Ok(()),
        Verdict::Suppress(s) | Verdict::Defer { because: s, .. } => Err(s),
        Verdict::Fail(..) => panic!("no step fails offline"),
        Verdict::Digest => panic!("no rule of these tests digests"),
    }
}

/// The caps step alone: `Some` when it took a place under a cap.
fn reserve(
    policy: &Policy,
    profile: &Profile,
    s: &Subject<'_>,
    now: i64,
) -> Result<Option<Reservation>, Suppression> {
    let feedback = FeedbackState::offline(86_400_000);
    let ch = console("push");
    let mut d = draft(Some(profile), s, &ch, now);
    match verdict(policy, &feedback, &mut d, "caps", "") {
        Verdict::Continue => Ok(d.reservation),
        Verdict::Suppress(s) => Err(s),
        other => panic!("caps only suppress, got {other:?}"),
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
        Suppression::Paused {
            until: "2026-12-24T00:00:00Z".into(),
        },
        Suppression::Withdrawn {
            by: "transactions/3/1187".into(),
        },
        Suppression::Holdout {
            experiment: "cashback-copy".into(),
        },
    ];
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.code_index(), i, "{} is out of place in ALL", s.code());
        assert_eq!(SuppressionCode::ALL[i].as_str(), s.code());
    }
    assert_eq!(all.len(), SuppressionCode::ALL.len());
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
            "paused:2026-12-24T00:00:00Z",
            "withdrawn:transactions/3/1187",
            "holdout:cashback-copy",
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
        admit(&policy, None, &s, &ch, now).unwrap_err().to_string(),
        "no_profile"
    );
    let mut p = Profile {
        user_id: "u1".into(),
        ..Profile::default()
    };
    assert_eq!(
        admit(&policy, Some(&p), &s, &ch, now)
            .unwrap_err()
            .to_string(),
        "no_consent:push"
    );
    p.consent.insert("push".into(), true);
    p.preferences.insert("marketing".into(), false);
    let m = subject("marketing", &none, now);
    assert_eq!(
        admit(&policy, Some(&p), &m, &ch, now)
            .unwrap_err()
            .to_string(),
        "category_off:marketing"
    );
    assert!(admit(&policy, Some(&p), &s, &ch, now).is_ok());
    assert_eq!(
        address(&p, &console("sms"), &ProfileTable::default())
            .unwrap()
            .masked()
            .len(),
        17
    );
}

#[test]
fn a_pause_silences_all_but_the_categories_that_bypass_it_until_it_ends() {
    let policy = Policy::default();
    let ch = console("push");
    let none = RulePolicy::default();
    let now = ms("2026-07-01T15:00:00Z");
    let mut p = Profile {
        user_id: "u1".into(),
        paused_until: Some("2026-07-10T00:00:00Z".into()),
        ..Profile::default()
    };
    p.consent.insert("push".into(), true);
    let purchase = subject("transactional", &none, now);
    assert_eq!(
        admit(&policy, Some(&p), &purchase, &ch, now)
            .unwrap_err()
            .to_string(),
        "paused:2026-07-10T00:00:00Z"
    );
    let fraud = subject("fraud", &none, now);
    assert!(
        admit(&policy, Some(&p), &fraud, &ch, now).is_ok(),
        "fraud bypasses the pause"
    );
    let later = ms("2026-07-10T00:00:01Z");
    let purchase = subject("transactional", &none, later);
    assert!(
        admit(&policy, Some(&p), &purchase, &ch, later).is_ok(),
        "the pause has ended"
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
        admit(&policy, Some(&p), &s, &ch, event + 30_000).is_ok(),
        "exactly at the limit is fresh"
    );
    let late = admit(&policy, Some(&p), &s, &ch, event + 42_000).unwrap_err();
    assert_eq!(late.to_string(), "stale:42s>30s");
    // Without a rule override, the category's ten minutes apply.
    let none = RulePolicy::default();
    let s = subject("transactional", &none, event);
    assert!(admit(&policy, Some(&p), &s, &ch, event + 599_000).is_ok());
    assert_eq!(
        admit(&policy, Some(&p), &s, &ch, event + 601_000)
            .unwrap_err()
            .code(),
        "stale"
    );
}

#[test]
fn a_number_that_said_stop_is_refused_as_consent_is_before_quiet_hours_and_caps() {
    let policy = Policy::default();
    let sms = twilio("sms");
    let mut p = profile("America/Chicago");
    p.consent.insert("sms".into(), true);
    p.phone = Some("+14155552671".into());
    let none = RulePolicy::default();
    // 21:30 CDT: marketing is in quiet hours; the STOP decides first.
    let now = ms("2026-07-02T02:30:00Z");
    let s = subject("marketing", &none, now);
    let feedback = FeedbackState::offline(86_400_000);
    let chain = |feedback: &FeedbackState| {
        let mut d = draft(Some(&p), &s, &sms, now);
        let consent = policy.steps.iter().find(|s| s.name() == "consent").unwrap();
        let reads = consent.reads_feedback(&d);
        (
            reads,
            verdict(&policy, feedback, &mut d, "consent", "address"),
        )
    };
    let (reads, before) = chain(&feedback);
    assert_eq!(
        reads,
        Some(Unknown::Consent),
        "the STOP list is read for SMS"
    );
    let Verdict::Suppress(quiet) = before else {
        panic!("marketing at 21:30 is dropped by default, got {before:?}");
    };
    assert_eq!(quiet.code(), "quiet_hours");
    feedback.set_opt_out("+14155552671", true, now - 1);
    assert_eq!(
        chain(&feedback).1,
        Verdict::Suppress(Suppression::OptedOut {
            channel: "sms".into()
        })
    );
    assert_eq!(
        Suppression::OptedOut {
            channel: "sms".into()
        }
        .to_string(),
        "no_consent:sms:opted_out"
    );
    // A push channel has no phone: the STOP list is neither read nor waited for.
    let push = console("push");
    assert_eq!(
        policy.steps[0].reads_feedback(&draft(Some(&p), &s, &push, now)),
        None
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
        admit(
            &policy,
            Some(&p),
            &subject("marketing", &none, now),
            &ch,
            now,
        )
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
    assert!(admit(&policy, Some(&p), &subject("fraud", &none, now), &ch, now).is_ok());
    let off = RulePolicy {
        quiet_hours: Some(QuietHoursSetting::Off),
        ..RulePolicy::default()
    };
    assert!(admit(
        &policy,
        Some(&p),
        &subject("marketing", &off, now),
        &ch,
        now
    )
    .is_ok());
}

#[test]
fn caps_apply_unless_the_category_bypasses_them() {
    let user = profile("UTC");
    let policy = Policy::default();
    let none = RulePolicy::default();
    let t0 = ms("2026-07-01T15:00:00Z");
    let m = subject("marketing", &none, t0);
    assert!(reserve(&policy, &user, &m, t0).unwrap().is_some());
    assert_eq!(
        reserve(&policy, &user, &m, t0 + 1000)
            .unwrap_err()
            .to_string(),
        "cap:marketing:1/hour"
    );
    let f = subject("fraud", &none, t0);
    for i in 0..50 {
        assert!(
            reserve(&policy, &user, &f, t0 + i).unwrap().is_none(),
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
        reserve(&policy, &user, &r, t0).unwrap().is_some(),
        "a rule's own cap applies even to fraud"
    );
    assert_eq!(
        reserve(&policy, &user, &r, t0 + 5).unwrap_err().to_string(),
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
    admit(
        policy,
        Some(p),
        &subject(category, rule, now),
        &console("push"),
        now,
    )
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
    let feedback = FeedbackState::offline(86_400_000);
    let push = console("push");
    let quiet_step = |s: &Subject<'_>| {
        verdict(
            &policy,
            &feedback,
            &mut draft(Some(&p), s, &push, event),
            "quiet_hours",
            "address",
        )
    };
    assert!(matches!(quiet_step(&s), Verdict::Defer { .. }), "held");
    assert!(
        matches!(
            quiet_step(&subject("marketing", &RulePolicy::default(), event)),
            Verdict::Suppress(Suppression::QuietHours { .. })
        ),
        "drop by default"
    );
    let end = until(quiet(&policy, &p, "marketing", &hold, event));
    assert_eq!(end, ms("2026-12-02T14:00:00Z"));
    // At release the same steps run again: a minute before the end it is still quiet,
    // at the end it passes.
    let check = |now| admit(&policy, Some(&p), &s, &console("push"), now).map(|_| ());
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
        admit(&policy, Some(&p), &s, &console("push"), end)
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
    reserve(&policy, &user, &m, t0).unwrap();
    assert_eq!(
        reserve(&policy, &user, &m, t0 + 3_599_999)
            .unwrap_err()
            .to_string(),
        "cap:marketing:1/hour",
        "one millisecond inside the hour"
    );
    assert!(
        reserve(&policy, &user, &m, t0 + 3_600_000)
            .unwrap()
            .is_some(),
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
    reserve(&policy, &strict, &m, t0).unwrap();
    assert_eq!(
        reserve(&policy, &strict, &m, t0 + 7_200_000)
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
    assert!(reserve(&policy, &strict, &c, t0 + 1).unwrap().is_some());
    assert_eq!(
        reserve(&policy, &strict, &c, t0 + 2)
            .unwrap_err()
            .to_string(),
        "cap:all:2/day",
        "the user's own cap across categories"
    );
    assert!(
        reserve(&policy, &strict, &t, t0 + 3).unwrap().is_none(),
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
    let push = console("push");
    let engaged = |user: &str, campaign: Option<&str>, now: i64| -> Result<(), Suppression> {
        let s = subject("marketing", &rule, now);
        let mut d = draft(None, &s, &push, now);
        d.user = user;
        d.campaign = campaign;
        match verdict(&policy, &feedback, &mut d, "engagement", "caps") {
            Verdict::Continue => Ok(()),
            Verdict::Suppress(s) => Err(s),
            other => panic!("engagement only suppresses, got {other:?}"),
        }
    };
    let check = |campaign| engaged("u1", campaign, now);
    assert!(check(Some("spring")).is_ok());
    feedback.engaged_now("u1", "email_opened", Some("spring"), now - 7_200_000);
    assert_eq!(
        check(Some("spring")).unwrap_err().to_string(),
        "suppressed_by:email_opened",
        "exactly two hours ago is within"
    );
    assert!(check(Some("autumn")).is_ok(), "another campaign");
    assert!(engaged("u2", Some("spring"), now).is_ok(), "another user");
    assert!(
        engaged("u1", Some("spring"), now + 1).is_ok(),
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

#[test]
fn the_documented_order_is_the_order_the_chain_runs() {
    let doc = include_str!("../../docs/analysts/policy.md");
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let number = cells.next()?;
            let name = cells.next()?;
            (number.parse::<u32>().is_ok() && name.starts_with('`')).then(|| name.trim_matches('`'))
        })
        .collect();
    assert_eq!(documented, Policy::default().step_names());
}
