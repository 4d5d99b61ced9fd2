//! Time arithmetic for policies: rate-limit window durations (`30s`, `1m`, `1h`, `1d`)
//! and calendar periods (hour, day, month) in an IANA time zone, including the odd days
//! daylight-saving time makes (23 and 25 hours long). Owns parsing and bounds; must not
//! know about counters, rules or requests.

use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike,
};
use chrono_tz::Tz;
use serde::Deserialize;
use tally_events::Timestamp;

const MICROS_PER_SEC: i64 = 1_000_000;

/// The shortest and longest rate-limit windows accepted.
pub(crate) const MIN_WINDOW_MICROS: i64 = MICROS_PER_SEC;
pub(crate) const MAX_WINDOW_MICROS: i64 = 31 * 86_400 * MICROS_PER_SEC;

/// Parse a window such as `1s`, `30s`, `1m`, `90m`, `1h`, `1d` into microseconds.
pub(crate) fn parse_window(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = "write a whole number followed by s, m, h or d, e.g. 30s, 1m, 1h, 1d";
    let Ok(n) = digits.parse::<i64>() else {
        return Err(format!("`{text}` is not a duration; {hint}"));
    };
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` has an unknown unit `{unit}`; {hint}")),
    };
    let micros = n.saturating_mul(secs).saturating_mul(MICROS_PER_SEC);
    if !(MIN_WINDOW_MICROS..=MAX_WINDOW_MICROS).contains(&micros) {
        return Err(format!(
            "`{text}` is out of range; a window must be between 1s and 31d"
        ));
    }
    Ok(micros)
}

/// A window length for people: `1m`, `90s`, `1h`, `2d`.
pub(crate) fn format_window(micros: i64) -> String {
    let secs = micros / MICROS_PER_SEC;
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3_600 == 0 {
        format!("{}h", secs / 3_600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A calendar period of a usage cap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    /// `hourly`, `daily`, `monthly`: for reason sentences.
    pub(crate) fn adjective(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        })
    }
}

/// Parse an IANA time zone name (`UTC`, `Europe/Paris`).
pub(crate) fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "`{name}` is not an IANA time zone name; use one like UTC, Europe/Paris or America/New_York"
        )
    })
}

fn to_ts<Z: TimeZone>(dt: &DateTime<Z>) -> Timestamp {
    Timestamp::from_micros(dt.timestamp_micros())
}

/// The instant a local wall-clock time first occurs in `tz`. A time skipped by a DST
/// jump resolves to the first existing instant after it.
fn local_instant(tz: Tz, naive: NaiveDateTime) -> DateTime<Tz> {
    let mut probe = naive;
    // DST gaps are at most a few hours; step by 15 minutes until the wall clock exists.
    for _ in 0..16 {
        if let Some(dt) = tz.from_local_datetime(&probe).earliest() {
            return dt;
        }
        probe += Duration::minutes(15);
    }
    // Unreachable for real zone data; treat the wall clock as UTC rather than fail.
    tz.from_utc_datetime(&naive)
}

fn midnight(d: NaiveDate) -> NaiveDateTime {
    d.and_time(NaiveTime::MIN)
}

/// The calendar period containing `now`: `[start, end)` in UTC instants.
pub(crate) fn bounds(period: Period, tz: Tz, now: Timestamp) -> (Timestamp, Timestamp) {
    let local = now.to_datetime().with_timezone(&tz);
    match period {
        Period::Hour => {
            // The local clock's current hour: strip minutes and seconds as shown locally.
            let into_hour = i64::from(local.minute()) * 60 * MICROS_PER_SEC
                + i64::from(local.second()) * MICROS_PER_SEC
                + i64::from(local.nanosecond() / 1_000).min(MICROS_PER_SEC - 1);
            let start = now.plus_micros(-into_hour);
            (start, start.plus_micros(3_600 * MICROS_PER_SEC))
        }
        Period::Day => {
            let day = local.date_naive();
            let next = day.succ_opt().unwrap_or(day);
            (
                to_ts(&local_instant(tz, midnight(day))),
                to_ts(&local_instant(tz, midnight(next))),
            )
        }
        Period::Month => {
            let first = local.date_naive().with_day(1).unwrap_or(local.date_naive());
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            }
            .unwrap_or(first);
            (
                to_ts(&local_instant(tz, midnight(first))),
                to_ts(&local_instant(tz, midnight(next))),
            )
        }
    }
}

/// An instant for people: UTC as `2026-12-01T00:00:00Z`, other zones with their offset
/// (`2026-12-01T00:00:00+01:00`).
pub(crate) fn format_instant(t: Timestamp, tz: Tz) -> String {
    let utc = t.to_datetime();
    if tz == Tz::UTC {
        utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    } else {
        utc.with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn windows_parse_and_format() {
        assert_eq!(parse_window("1s"), Ok(1_000_000));
        assert_eq!(parse_window("30s"), Ok(30_000_000));
        assert_eq!(parse_window("1m"), Ok(60_000_000));
        assert_eq!(parse_window("1h"), Ok(3_600_000_000));
        assert_eq!(parse_window("1d"), Ok(86_400_000_000));
        for bad in [
            "",
            "m",
            "1",
            "1w",
            "0s",
            "-1m",
            "1.5m",
            "32d",
            "99999999999999999d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert_eq!(format_window(60_000_000), "1m");
        assert_eq!(format_window(90_000_000), "90s");
        assert_eq!(format_window(86_400_000_000), "1d");
    }

    #[test]
    fn utc_periods() {
        let now = ts("2026-11-25T10:17:03.5Z");
        assert_eq!(
            bounds(Period::Hour, Tz::UTC, now),
            (ts("2026-11-25T10:00:00Z"), ts("2026-11-25T11:00:00Z"))
        );
        assert_eq!(
            bounds(Period::Day, Tz::UTC, now),
            (ts("2026-11-25T00:00:00Z"), ts("2026-11-26T00:00:00Z"))
        );
        assert_eq!(
            bounds(Period::Month, Tz::UTC, now),
            (ts("2026-11-01T00:00:00Z"), ts("2026-12-01T00:00:00Z"))
        );
        let dec = ts("2026-12-31T23:59:59Z");
        assert_eq!(
            bounds(Period::Month, Tz::UTC, dec),
            (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn zoned_periods_follow_the_local_calendar() {
        let paris = parse_tz("Europe/Paris").unwrap();
        // 2026-11-30T23:30Z is already December 1st in Paris.
        let now = ts("2026-11-30T23:30:00Z");
        assert_eq!(
            bounds(Period::Month, paris, now),
            (ts("2026-11-30T23:00:00Z"), ts("2026-12-31T23:00:00Z"))
        );
        // DST: 2026-03-29 has 23 hours in Paris, 2026-10-25 has 25.
        let (s, e) = bounds(Period::Day, paris, ts("2026-03-29T12:00:00Z"));
        assert_eq!(e.as_micros() - s.as_micros(), 23 * 3_600_000_000);
        let (s, e) = bounds(Period::Day, paris, ts("2026-10-25T12:00:00Z"));
        assert_eq!(e.as_micros() - s.as_micros(), 25 * 3_600_000_000);
        // Half-hour offsets: Kolkata's hours start at :30 UTC.
        let kolkata = parse_tz("Asia/Kolkata").unwrap();
        assert_eq!(
            bounds(Period::Hour, kolkata, ts("2026-11-25T10:17:00Z")),
            (ts("2026-11-25T09:30:00Z"), ts("2026-11-25T10:30:00Z"))
        );
        assert_eq!(
            format_instant(ts("2026-11-30T23:00:00Z"), paris),
            "2026-12-01T00:00:00+01:00"
        );
        assert_eq!(
            format_instant(ts("2026-12-01T00:00:00Z"), Tz::UTC),
            "2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn midnight_skipped_by_dst_resolves_to_the_first_existing_instant() {
        // America/Santiago skips 00:00-01:00 on 2026-09-06.
        let santiago = parse_tz("America/Santiago").unwrap();
        let (s, _) = bounds(Period::Day, santiago, ts("2026-09-06T18:00:00Z"));
        assert_eq!(s, ts("2026-09-06T04:00:00Z"));
        assert!(parse_tz("Mars/Olympus").is_err());
    }
}
