//! UTC timestamps with microsecond precision: the only time type in events.
//! Owns parsing/formatting (RFC 3339) and conversion to Arrow's microsecond unit;
//! must not know about wall-clock sources other than `Timestamp::now`.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds since the Unix epoch, always UTC.
///
/// On the wire it is an RFC 3339 string with exactly six fractional digits and a `Z`
/// suffix (`2026-11-25T10:00:00.123456Z`), so any JSON consumer can read it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time, truncated to microseconds.
    pub fn now() -> Self {
        Self(Utc::now().timestamp_micros())
    }

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch (truncated).
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The UTC day (`YYYY-MM-DD`) this instant falls in; the ledger's partition key.
    pub fn utc_day(self) -> String {
        self.to_datetime().format("%Y-%m-%d").to_string()
    }

    /// Parse an RFC 3339 timestamp with any offset; sub-microsecond digits are truncated.
    pub fn parse(s: &str) -> Result<Self, chrono::ParseError> {
        // The form every tally writer produces is read without chrono (it dominates the
        // cost of decoding an event); anything else goes through chrono's full parser.
        if let Some(micros) = parse_canonical(s.as_bytes()) {
            return Ok(Self(micros));
        }
        Ok(Self(DateTime::parse_from_rfc3339(s)?.timestamp_micros()))
    }

    /// As a chrono UTC datetime.
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The instant `micros` later (saturating).
    pub const fn plus_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (valid calendar date, seconds below 60) to Unix
/// microseconds; `None` for anything else (chrono decides those).
fn parse_canonical(b: &[u8]) -> Option<i64> {
    fn digits(b: &[u8], from: usize, n: usize) -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(from..from + n)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    }
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(10) != Some(&b'T')
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || b.last() != Some(&b'Z')
    {
        return None;
    }
    let (year, month, day) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    let (hour, minute, second) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let frac = b.get(19..b.len() - 1)?;
    let micros = match frac {
        [] => 0,
        [b'.', rest @ ..] if (1..=9).contains(&rest.len()) => {
            let mut v = 0i64;
            for (i, &c) in rest.iter().enumerate() {
                if !c.is_ascii_digit() {
                    return None;
                }
                if i < 6 {
                    v = v * 10 + i64::from(c - b'0');
                }
            }
            for _ in rest.len()..6 {
                v *= 10;
            }
            v
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `String`/`Cow`: no allocation for the (usual) string
        // without escapes.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Timestamp::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_z() {
        let t = Timestamp::from_micros(1_764_064_800_123_456);
        assert_eq!(t.to_string(), "2025-11-25T10:00:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()).ok(), Some(t));
        assert_eq!(t.utc_day(), "2025-11-25");
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = Timestamp::parse("2025-11-25T12:00:00.5+02:00").ok();
        assert_eq!(
            t.map(|t| t.to_string()).as_deref(),
            Some("2025-11-25T10:00:00.500000Z")
        );
    }

    #[test]
    fn the_fast_path_agrees_with_chrono() {
        for s in [
            "2026-11-01T00:00:00.000000Z",
            "2025-11-25T10:00:00.123456Z",
            "2024-02-29T23:59:59.999999Z",
            "1969-12-31T23:59:59.5Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.123456789Z",
            "2000-03-01T12:34:56.7Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(s).map(|d| d.timestamp_micros());
            assert_eq!(parse_canonical(s.as_bytes()), chrono.ok(), "{s}");
        }
        for s in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01T00:00:60Z",
            "2026-11-01 00:00:00Z",
            "2026-11-01T00:00:00.Z",
            "2026-11-01T00:00:00.1234567890Z",
            "2026-11-01T00:00:00+00:00",
            "+2026-11-01T00:00:00Z",
        ] {
            assert_eq!(parse_canonical(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn negative_times_floor_to_millis() {
        assert_eq!(Timestamp::from_micros(-1).as_millis(), -1);
    }
}
