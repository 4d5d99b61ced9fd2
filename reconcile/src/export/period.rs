//! Billing periods: a UTC calendar month (`2026-10`), an inclusive range of UTC days
//! (`2026-10-01..2026-10-15`) or one UTC day (`2026-10-01`), as a half-open interval of
//! instants; and the hour/day
//! buckets events are pre-aggregated in. Must not read data.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use super::ExportError;

/// A billing period: `[start, end)` in UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// As the user wrote it, normalized (`2026-10`, `2026-10-01..2026-10-15`).
    pub label: String,
    /// First instant (inclusive).
    pub start: DateTime<Utc>,
    /// First instant after the period (exclusive).
    pub end: DateTime<Utc>,
}

fn day(s: &str) -> Result<NaiveDate, ExportError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|e| {
        ExportError::Period(format!(
            "`{s}` is not a day ({e}); write YYYY-MM-DD, e.g. 2026-10-01"
        ))
    })
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN))
}

impl Period {
    /// Parse `YYYY-MM` (the whole UTC month), `YYYY-MM-DD..YYYY-MM-DD` (both days
    /// included) or `YYYY-MM-DD` (one day, the same period as `D..D` and labelled so, so
    /// both spellings export the same bytes).
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        let s = s.trim();
        let one_day = (s.len() == 10 && !s.contains(".."))
            .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .flatten();
        if let Some(d) = one_day {
            return Self::parse(&format!("{d}..{d}"));
        }
        if let Some((a, b)) = s.split_once("..") {
            let (first, last) = (day(a)?, day(b)?);
            if last < first {
                return Err(ExportError::Period(format!(
                    "`{s}` ends before it starts; write FIRST..LAST with FIRST <= LAST"
                )));
            }
            let end = last.succ_opt().ok_or_else(|| {
                ExportError::Period(format!("`{s}` ends after the last representable day"))
            })?;
            return Ok(Self {
                label: format!("{first}..{last}"),
                start: midnight(first),
                end: midnight(end),
            });
        }
        let first = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").map_err(|_| {
            ExportError::Period(format!(
                "`{s}` is not a period; write a month (2026-10), a day range (2026-10-01..2026-10-15) or a day (2026-10-01)"
            ))
        })?;
        let next = if first.month() == 12 {
            NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
        }
        .ok_or_else(|| ExportError::Period(format!("`{s}` is out of range")))?;
        Ok(Self {
            label: format!("{:04}-{:02}", first.year(), first.month()),
            start: midnight(first),
            end: midnight(next),
        })
    }

    /// Start as microseconds since the Unix epoch.
    pub fn start_micros(&self) -> i64 {
        self.start.timestamp_micros()
    }

    /// End as microseconds since the Unix epoch.
    pub fn end_micros(&self) -> i64 {
        self.end.timestamp_micros()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Width of the buckets billing events are pre-aggregated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One event per customer and meter per UTC hour.
    #[default]
    Hour,
    /// One event per customer and meter per UTC day.
    Day,
}

impl Granularity {
    /// Parse `hour` or `day`.
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        match s {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            other => Err(ExportError::Format(format!(
                "granularity `{other}` is not known; use `hour` or `day`"
            ))),
        }
    }

    /// `hour` or `day`.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    fn width_micros(self) -> i64 {
        match self {
            Granularity::Hour => Duration::hours(1)
                .num_microseconds()
                .unwrap_or(3_600_000_000),
            Granularity::Day => Duration::days(1)
                .num_microseconds()
                .unwrap_or(86_400_000_000),
        }
    }

    /// The start of the bucket holding `micros` (UTC; both widths divide a day).
    pub fn bucket_start(self, micros: i64) -> i64 {
        let w = self.width_micros();
        micros.div_euclid(w) * w
    }

    /// The end (exclusive) of the bucket starting at `start`.
    pub fn bucket_end(self, start: i64) -> i64 {
        start + self.width_micros()
    }
}

/// RFC 3339 UTC with second precision (`2026-10-01T00:00:00Z`) of Unix microseconds.
pub(crate) fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_ranges() {
        let p = Period::parse("2026-10").unwrap();
        assert_eq!(p.start.to_rfc3339(), "2026-10-01T00:00:00+00:00");
        assert_eq!(p.end.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        let p = Period::parse("2026-12").unwrap();
        assert_eq!(p.end.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        let p = Period::parse("2026-10-01..2026-10-15").unwrap();
        assert_eq!(p.end.to_rfc3339(), "2026-10-16T00:00:00+00:00");
        let day = Period::parse("2026-10-31").unwrap();
        assert_eq!(day, Period::parse("2026-10-31..2026-10-31").unwrap());
        assert_eq!(day.label, "2026-10-31..2026-10-31");
        assert_eq!(day.end.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(
            Period::parse("2026-10-32").unwrap_err().code(),
            "export.period"
        );
        assert_eq!(
            Period::parse("2026-13").unwrap_err().code(),
            "export.period"
        );
        assert_eq!(
            Period::parse("2026-10-15..2026-10-01").unwrap_err().code(),
            "export.period"
        );
        assert_eq!(
            Period::parse("october").unwrap_err().code(),
            "export.period"
        );
    }

    #[test]
    fn buckets() {
        let t = Period::parse("2026-10").unwrap().start_micros() + 3_600_000_000 * 25 + 5;
        let h = Granularity::Hour.bucket_start(t);
        assert_eq!(rfc3339(h), "2026-10-02T01:00:00Z");
        assert_eq!(
            rfc3339(Granularity::Day.bucket_start(t)),
            "2026-10-02T00:00:00Z"
        );
        assert_eq!(
            rfc3339(Granularity::Hour.bucket_end(h)),
            "2026-10-02T02:00:00Z"
        );
    }
}
