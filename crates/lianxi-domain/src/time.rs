//! Timestamp arithmetic that never panics and never reads a clock.
//!
//! Event times come from agencies and may be anything; `check_envelope`
//! rejects absurd ones, but `apply` and `evaluate` must stay total even on
//! input that skipped it, so everything here saturates instead of overflowing.

use std::cmp::Ordering;

use chrono::{DateTime, Months, Utc};
use lianxi_proto::Timestamp;

const NANOS_PER_SECOND: i128 = 1_000_000_000;
pub(crate) const SECONDS_PER_MINUTE: i64 = 60;
pub(crate) const SECONDS_PER_HOUR: i64 = 3_600;
pub(crate) const SECONDS_PER_DAY: i64 = 86_400;
/// China Standard Time is UTC+8 all year (no daylight saving).
const CST_OFFSET_SECONDS: i64 = 8 * SECONDS_PER_HOUR;

/// 2000-01-01T00:00:00Z, the earliest event time accepted.
pub(crate) const EARLIEST_SECONDS: i64 = 946_684_800;
/// 2201-01-01T00:00:00Z, the first instant after the latest accepted year.
pub(crate) const AFTER_LATEST_SECONDS: i64 = 7_289_654_400;

/// A total order on timestamps, including ones with out-of-range nanos.
pub(crate) fn key(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * NANOS_PER_SECOND + i128::from(t.nanos)
}

pub(crate) fn cmp(a: &Timestamp, b: &Timestamp) -> Ordering {
    key(a).cmp(&key(b))
}

pub(crate) fn before(a: &Timestamp, b: &Timestamp) -> bool {
    cmp(a, b) == Ordering::Less
}

/// Within the accepted years and with nanos in `0..1e9`.
pub(crate) fn is_sane(t: &Timestamp) -> bool {
    (0..1_000_000_000).contains(&t.nanos)
        && t.seconds >= EARLIEST_SECONDS
        && t.seconds < AFTER_LATEST_SECONDS
}

pub(crate) fn plus_seconds(t: &Timestamp, seconds: i64) -> Timestamp {
    Timestamp {
        seconds: t.seconds.saturating_add(seconds),
        nanos: t.nanos,
    }
}

pub(crate) fn plus_minutes(t: &Timestamp, minutes: u32) -> Timestamp {
    plus_seconds(t, i64::from(minutes).saturating_mul(SECONDS_PER_MINUTE))
}

pub(crate) fn plus_hours(t: &Timestamp, hours: u32) -> Timestamp {
    plus_seconds(t, i64::from(hours).saturating_mul(SECONDS_PER_HOUR))
}

pub(crate) fn plus_days(t: &Timestamp, days: u32) -> Timestamp {
    plus_seconds(t, i64::from(days).saturating_mul(SECONDS_PER_DAY))
}

fn to_chrono(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::from_timestamp(t.seconds, nanos)
}

/// Calendar months, as a court counts an order's term: 31 August plus six
/// months is the last day of February. Out of chrono's range the result
/// saturates at 31 days a month, which only matters for absurd input.
pub(crate) fn plus_months(t: &Timestamp, months: u32) -> Timestamp {
    match to_chrono(t).and_then(|d| d.checked_add_months(Months::new(months))) {
        Some(d) => Timestamp {
            seconds: d.timestamp(),
            nanos: t.nanos,
        },
        None => plus_days(t, months.saturating_mul(31)),
    }
}

/// Monday is 0, Sunday 6, for the calendar day in China Standard Time.
fn cst_weekday(seconds: i64) -> i64 {
    let days = seconds
        .saturating_add(CST_OFFSET_SECONDS)
        .div_euclid(SECONDS_PER_DAY);
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    (days + 3).rem_euclid(7)
}

/// `n` working days (Monday to Friday in China Standard Time) after `t`, at
/// the same time of day. The day of `t` itself does not count, so an
/// application on Friday with 7 working days is due on the Tuesday of the
/// week after next. Public holidays and adjusted working weekends are not
/// modelled.
pub(crate) fn plus_working_days_cst(t: &Timestamp, n: u32) -> Timestamp {
    let mut seconds = t.seconds;
    let mut counted = 0u32;
    // At most 7 calendar days per 5 working days, plus a weekend; the bound
    // keeps the loop finite even if `seconds` saturates.
    let mut budget = u64::from(n).saturating_mul(2).saturating_add(7);
    while counted < n && budget > 0 {
        seconds = seconds.saturating_add(SECONDS_PER_DAY);
        if cst_weekday(seconds) < 5 {
            counted += 1;
        }
        budget -= 1;
    }
    Timestamp {
        seconds,
        nanos: t.nanos,
    }
}

/// "2026-03-04 10:00 UTC", the form used in plain-language lines.
pub(crate) fn format(t: &Timestamp) -> String {
    match to_chrono(t) {
        Some(d) => d.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => format!("an out-of-range time ({}s)", t.seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn bounds_are_the_accepted_years() {
        assert_eq!(format(&ts(EARLIEST_SECONDS)), "2000-01-01 00:00 UTC");
        assert_eq!(format(&ts(AFTER_LATEST_SECONDS)), "2201-01-01 00:00 UTC");
    }

    #[test]
    fn weekday_in_cst() {
        // 2026-03-06 is a Friday; 20:00 UTC Friday is already Saturday 04:00 CST.
        let friday_noon_utc = 1_772_798_400;
        assert_eq!(format(&ts(friday_noon_utc)), "2026-03-06 12:00 UTC");
        assert_eq!(cst_weekday(friday_noon_utc), 4);
        assert_eq!(cst_weekday(friday_noon_utc + 8 * SECONDS_PER_HOUR), 5);
    }

    #[test]
    fn saturates() {
        assert_eq!(plus_days(&ts(i64::MAX), 10).seconds, i64::MAX);
        assert_eq!(plus_months(&ts(i64::MAX), 6).seconds, i64::MAX);
        let _ = plus_working_days_cst(&ts(i64::MAX), 365);
        let _ = plus_working_days_cst(&ts(i64::MIN), 365);
        assert!(format(&ts(i64::MIN)).contains("out-of-range"));
    }
}
