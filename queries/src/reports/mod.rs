//! Canned reports built on the engine: `why` (one request's decisions and attempts) and
//! `usage` (where the tokens and dollars went, and `top`). This module owns what they
//! share: time ranges, reading typed values out of result batches and rendering aligned
//! text. Reports only run SELECTs through [`crate::QueryEngine`], so they are read-only
//! and tenant-scoped like any query; they must not build SQL from user text (values are
//! bound as parameters, dimensions come from a closed list).

pub mod canned;
pub mod history;
pub mod html;
pub mod usage;
pub mod why;

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use datafusion::common::ScalarValue;
use serde::Serialize;
use tally_events::Timestamp;

use crate::error::QueryError;

/// The start of a report's time range: a span back from now, or an instant.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// This long before now.
    Ago(#[serde(with = "duration_secs")] Duration),
    /// From this instant.
    At(Timestamp),
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl Since {
    /// Parse `30m`, `24h`, `7d`, `2w`, an RFC 3339 instant or a `YYYY-MM-DD` day (UTC).
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let t = text.trim();
        let bad = || {
            QueryError::BadRequest(format!(
                "`since` must be a span like 30m, 24h, 7d or 2w, an RFC 3339 time or a YYYY-MM-DD day; got `{t}`"
            ))
        };
        if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic())
            && let Ok(n) = t[..t.len() - 1].parse::<u64>()
        {
            let secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return Err(bad()),
            };
            return Ok(Since::Ago(Duration::from_secs(n.saturating_mul(secs))));
        }
        if let Ok(ts) = Timestamp::parse(t) {
            return Ok(Since::At(ts));
        }
        if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            let micros = day
                .and_hms_opt(0, 0, 0)
                .map(|d| d.and_utc().timestamp_micros())
                .ok_or_else(bad)?;
            return Ok(Since::At(Timestamp::from_micros(micros)));
        }
        Err(bad())
    }

    /// The instant the range starts at, given the current time.
    pub fn start(&self, now: Timestamp) -> Timestamp {
        match self {
            Since::Ago(d) => now.plus_micros(-(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
            Since::At(t) => *t,
        }
    }
}

/// The bound parameters of a time range: `$1` the start instant (compared with
/// `occurred_at`), `$2` its UTC day (compared with the `day` partition column, to prune).
pub(crate) fn range_params(start: Timestamp) -> Vec<ScalarValue> {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let day = i32::try_from(start.as_micros().div_euclid(MICROS_PER_DAY)).unwrap_or(i32::MIN);
    vec![
        ScalarValue::TimestampMicrosecond(Some(start.as_micros()), Some("UTC".into())),
        ScalarValue::Date32(Some(day)),
    ]
}

/// Typed access to one column of a result batch.
pub(crate) struct Col {
    array: arrow::array::ArrayRef,
}

impl Col {
    pub(crate) fn of(
        batch: &RecordBatch,
        name: &str,
        as_type: &DataType,
    ) -> Result<Col, QueryError> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            QueryError::Internal(format!("report query result lacks column {name}"))
        })?;
        let array = cast(c, as_type).map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(Col { array })
    }

    pub(crate) fn str(batch: &RecordBatch, name: &str) -> Result<Col, QueryError> {
        Col::of(batch, name, &DataType::Utf8)
    }

    pub(crate) fn int(batch: &RecordBatch, name: &str) -> Result<Col, QueryError> {
        Col::of(batch, name, &DataType::Int64)
    }

    pub(crate) fn time(batch: &RecordBatch, name: &str) -> Result<Col, QueryError> {
        Col::of(
            batch,
            name,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )
    }

    pub(crate) fn bool(batch: &RecordBatch, name: &str) -> Result<Col, QueryError> {
        Col::of(batch, name, &DataType::Boolean)
    }

    pub(crate) fn get_str(&self, i: usize) -> Option<String> {
        let a = self.array.as_string_opt::<i32>()?;
        (!a.is_null(i)).then(|| a.value(i).to_owned())
    }

    pub(crate) fn get_int(&self, i: usize) -> Option<i64> {
        let a = self.array.as_primitive_opt::<Int64Type>()?;
        (!a.is_null(i)).then(|| a.value(i))
    }

    pub(crate) fn get_time(&self, i: usize) -> Option<Timestamp> {
        let a = self.array.as_primitive_opt::<TimestampMicrosecondType>()?;
        (!a.is_null(i)).then(|| Timestamp::from_micros(a.value(i)))
    }

    pub(crate) fn get_bool(&self, i: usize) -> Option<bool> {
        let a = self.array.as_boolean_opt()?;
        (!a.is_null(i)).then(|| a.value(i))
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// Micro-USD as dollars with six decimals: `1500` → `$0.001500`.
pub(crate) fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", thousands_u(m / 1_000_000), m % 1_000_000)
}

fn thousands_u(v: u64) -> String {
    thousands(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Short human form: `99_500_000` → `99.5M`, `100_000_000` → `100M`, `950` → `950`.
pub(crate) fn human(v: i64) -> String {
    let a = v.unsigned_abs() as f64;
    let sign = if v < 0 { "-" } else { "" };
    let (scaled, suffix) = if a >= 1e12 {
        (a / 1e12, "T")
    } else if a >= 1e9 {
        (a / 1e9, "B")
    } else if a >= 1e6 {
        (a / 1e6, "M")
    } else if a >= 1e4 {
        (a / 1e3, "K")
    } else {
        return v.to_string();
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{sign}{text}{suffix}")
}

/// A UTC instant to the minute: `2026-12-01T00:00Z`.
pub(crate) fn minute(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%dT%H:%MZ").to_string()
}

/// A UTC instant to the second: `2026-11-25T10:00:01Z`.
pub(crate) fn second(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An aligned text table: numbers (columns flagged in `right`) right-aligned.
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_instants_parse() {
        assert_eq!(
            Since::parse("7d").ok(),
            Some(Since::Ago(Duration::from_secs(604_800)))
        );
        assert_eq!(
            Since::parse("30m").ok(),
            Some(Since::Ago(Duration::from_secs(1_800)))
        );
        assert_eq!(
            Since::parse("2026-11-01")
                .ok()
                .map(|s| s.start(Timestamp::now()).to_string()),
            Some("2026-11-01T00:00:00.000000Z".to_owned())
        );
        assert!(Since::parse("2026-11-01T10:00:00Z").is_ok());
        assert!(Since::parse("7 days").is_err());
        assert!(Since::parse("7y").is_err());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human(99_500_000), "99.5M");
        assert_eq!(human(100_000_000), "100M");
        assert_eq!(human(950), "950");
        assert_eq!(human(12_345), "12.35K");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(usd(1_500), "$0.001500");
        assert_eq!(usd(12_345_678_901), "$12,345.678901");
    }

    #[test]
    fn tables_align() {
        let t = render_table(
            &["NAME", "N"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long".into(), "100".into()],
            ],
            &[false, true],
        );
        assert_eq!(t, "NAME    N\na       1\nlong  100\n");
    }
}
