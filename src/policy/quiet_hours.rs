//! Policy step: quiet hours in the recipient's time zone — drop the message, or hold it until they end.

use super::freshness::max_age_s;
use super::step::{Context, DigestRole, Draft, Step, Verdict};
use super::{Bypass, QuietAction, QuietHours, QuietHoursSetting, Suppression};

/// The window is the rule's (`quiet_hours`, or `off`), else its category's
/// unless the category bypasses quiet hours; the user's own window replaces
/// whichever applies but never adds one. A held message is released when the
/// window ends, if it will still be fresh then; otherwise it is dropped now.
/// A digest's send is always held, never dropped.
pub struct QuietHoursStep;

impl Step for QuietHoursStep {
    fn name(&self) -> &'static str {
        "quiet_hours"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        let Some(profile) = draft.profile else {
            return Verdict::Continue;
        };
        let category = cx.settings.category(draft.category);
        let quiet = match &draft.rule_policy.quiet_hours {
            Some(QuietHoursSetting::Off) => None,
            None if category.bypass.contains(&Bypass::QuietHours) => None,
            Some(QuietHoursSetting::Window(w)) => Some(*w),
            None => category.quiet_hours,
        };
        let Some(window) = quiet.map(|w| profile.quiet_hours.unwrap_or(w)) else {
            return Verdict::Continue;
        };
        if profile.time_zone_invalid {
            return Verdict::Suppress(Suppression::InvalidTimeZone);
        }
        let zone = profile.time_zone.as_deref().unwrap_or("UTC");
        let tz = crate::util::time_zone(zone).unwrap_or(jiff::tz::TimeZone::UTC);
        let now =
            jiff::Timestamp::from_millisecond(draft.now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        // The zone is looked up once: its offset now gives the local time.
        let local = tz.to_offset(now).to_datetime(now);
        if !window.contains(local.hour() as u16 * 60 + local.minute() as u16) {
            return Verdict::Continue;
        }
        let until_ms = quiet_end_ms(local.date(), &tz, draft.now_ms, window);
        let because = Suppression::QuietHours {
            window,
            zone: zone.to_string(),
            until_ms,
        };
        let action = draft
            .rule_policy
            .on_quiet_hours
            .unwrap_or(category.on_quiet_hours);
        let fresh_then = max_age_s(cx.settings, draft)
            .is_none_or(|max| until_ms - draft.event_ms <= max as i64 * 1000);
        // A digest is held through quiet hours whatever `on_quiet_hours`
        // says: dropping it would drop every item it collected.
        if draft.digest == DigestRole::Send || (action == QuietAction::Hold && fresh_then) {
            Verdict::Defer { until_ms, because }
        } else {
            Verdict::Suppress(because)
        }
    }
}

/// When the quiet window that `date` (local, now) falls in ends: the next
/// local `end` time, in zone `tz`. A local time skipped by a daylight-saving change
/// resolves to the instant after the gap.
fn quiet_end_ms(
    date: jiff::civil::Date,
    tz: &jiff::tz::TimeZone,
    now_ms: i64,
    window: QuietHours,
) -> i64 {
    let end = jiff::civil::time((window.end / 60) as i8, (window.end % 60) as i8, 0, 0);
    let at = |date: jiff::civil::Date| {
        date.to_datetime(end)
            .to_zoned_datetime(tz.clone())
            .map(|z| z.timestamp().as_millisecond())
    };
    let today = at(date).unwrap_or(i64::MAX);
    if today > now_ms {
        return today;
    }
    date.tomorrow()
        .ok()
        .and_then(|d| at(d).ok())
        .unwrap_or(i64::MAX)
}
