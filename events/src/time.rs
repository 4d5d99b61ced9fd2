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
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
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
    fn negative_times_floor_to_millis() {
        assert_eq!(Timestamp::from_micros(-1).as_millis(), -1);
    }
}
