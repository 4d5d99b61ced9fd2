//! Usage-cap meter: usage settled in the current calendar period plus reservations in
//! flight, checked against a limit in tokens or micro-USD; and the mid-stream check for
//! `on_exceed: cut`. Owns the cap arithmetic and the money/number formatting used in
//! reasons; must not lock, evaluate rules or build events.
//!
//! The admission check is `settled + in_flight + reservation ≤ limit`. A reservation is
//! later replaced by the real usage, so within one period
//! `settled ≤ limit + Σ max(0, real − reserved)` over the admitted requests.

use chrono_tz::Tz;
use tally_events::Timestamp;

use crate::policy::file::Unit;
use crate::policy::period::{Period, bounds, format_instant};
use crate::policy::rate_limit::Facts;

/// A cap's counter for the current period.
#[derive(Clone, Debug)]
pub(crate) struct CapMeter {
    pub(crate) period_start: Timestamp,
    pub(crate) period_end: Timestamp,
    pub(crate) settled: i64,
    pub(crate) in_flight: i64,
}

impl CapMeter {
    pub(crate) fn new(period: Period, tz: Tz, now: Timestamp) -> Self {
        let (period_start, period_end) = bounds(period, tz, now);
        Self {
            period_start,
            period_end,
            settled: 0,
            in_flight: 0,
        }
    }

    /// Start a new period when `now` is past the current one. Reservations in flight
    /// carry over: their requests are still running and settle into the new period.
    pub(crate) fn roll(&mut self, period: Period, tz: Tz, now: Timestamp) {
        if now >= self.period_end {
            let (s, e) = bounds(period, tz, now);
            self.period_start = s;
            self.period_end = e;
            self.settled = 0;
        }
    }

    /// `settled + in_flight + amount ≤ limit`.
    pub(crate) fn fits(&self, limit: i64, amount: i64) -> bool {
        self.settled
            .saturating_add(self.in_flight)
            .saturating_add(amount)
            <= limit
    }

    pub(crate) fn reserve(&mut self, amount: i64) {
        self.in_flight = self.in_flight.saturating_add(amount);
    }

    /// Replace a reservation by real usage counted at `now` (which must already be
    /// rolled to). Usage stamped before the current period belongs to a period that is
    /// over and is not counted.
    pub(crate) fn settle(&mut self, reserved: i64, actual: i64, now: Timestamp) {
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
        if now >= self.period_start {
            self.settled = self.settled.saturating_add(actual);
        }
    }

    /// Give a reservation back without counting usage.
    pub(crate) fn release(&mut self, reserved: i64) {
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
    }

    /// Whether a running request would take the cap past its limit:
    /// `settled + (in_flight − own reservation) + running > limit`.
    pub(crate) fn stream_exceeds(&self, limit: i64, own_reserved: i64, running: i64) -> bool {
        let others = self.in_flight.saturating_sub(own_reserved).max(0);
        self.settled.saturating_add(others).saturating_add(running) > limit
    }

    pub(crate) fn idle(&self) -> bool {
        self.in_flight == 0 && self.settled == 0
    }
}

fn budget_name(f: &Facts<'_>, period: Period) -> String {
    let what = match f.unit {
        Unit::UsdMicros => "budget",
        Unit::InputTokens => "input-token budget",
        Unit::OutputTokens => "output-token budget",
        Unit::Tokens | Unit::Requests => "token budget",
    };
    format!(
        "{} {what} of {} for {}",
        period.adjective(),
        f.unit.amount(f.limit),
        f.subject
    )
}

fn spent(f: &Facts<'_>, settled: i64) -> String {
    match f.unit {
        Unit::UsdMicros => format!("{} spent", f.unit.amount(settled)),
        _ => format!("{} used", f.unit.amount(settled)),
    }
}

fn resets(f: &Facts<'_>, tz: Tz) -> String {
    f.reset_at
        .map(|at| format!("; resets {}", format_instant(at, tz)))
        .unwrap_or_default()
}

/// Why a cap refused (or admitted) a request.
pub(crate) fn reason(f: &Facts<'_>, period: Period, tz: Tz, fits: bool) -> String {
    let name = budget_name(f, period);
    let settled = f.used.saturating_sub(f.in_flight);
    let flight = if f.in_flight > 0 {
        format!(
            " + {} reserved by requests in flight",
            f.unit.amount(f.in_flight)
        )
    } else {
        String::new()
    };
    if fits {
        return format!(
            "within the {name}: {}{flight}, {}",
            spent(f, settled),
            f.this_request()
        );
    }
    if f.amount > f.limit {
        return format!(
            "the {name} can never admit this request: {}, more than the whole budget; lower max_tokens or ask for a higher limit",
            f.this_request()
        );
    }
    let state = if f.used >= f.limit {
        "is exhausted"
    } else {
        "would be exceeded"
    };
    format!(
        "the {name} {state}: {}{flight} + {} > {}{}",
        spent(f, settled),
        f.this_request(),
        f.unit.amount(f.limit),
        resets(f, tz)
    )
}

/// Why a stream was (or would have been) cut: `running` is this response's usage so
/// far in the cap's unit, `used` (in `f`) the settled usage plus other requests' holds.
pub(crate) fn cut_reason(
    f: &Facts<'_>,
    period: Period,
    tz: Tz,
    running: i64,
    output_tokens: u64,
) -> String {
    let name = budget_name(f, period);
    let settled = f.used.saturating_sub(f.in_flight);
    let flight = if f.in_flight > 0 {
        format!(
            " + {} reserved by other requests in flight",
            f.unit.amount(f.in_flight)
        )
    } else {
        String::new()
    };
    format!(
        "the {name} ran out while this response was streaming: {}{flight} + {} used by this response so far > {}; the stream was cut at {} output tokens (on_exceed: cut){}",
        spent(f, settled),
        f.unit.amount(running),
        f.unit.amount(f.limit),
        format_count(i64::try_from(output_tokens).unwrap_or(i64::MAX)),
        resets(f, tz)
    )
}

/// Micro-USD for people: `$100.00`, `$99.87`, `$0.0042` (at least two decimals, more
/// only when needed).
pub(crate) fn format_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let frac = format!("{:06}", m % 1_000_000);
    let trimmed = frac.trim_end_matches('0');
    let frac = if trimmed.len() < 2 {
        &frac[..2]
    } else {
        trimmed
    };
    format!("{sign}${}.{frac}", group(m / 1_000_000))
}

/// A count for people: `1,000,000`.
pub(crate) fn format_count(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(n.unsigned_abs()))
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn formats() {
        assert_eq!(format_usd(100_000_000), "$100.00");
        assert_eq!(format_usd(99_870_000), "$99.87");
        assert_eq!(format_usd(4_200), "$0.0042");
        assert_eq!(format_usd(0), "$0.00");
        assert_eq!(format_usd(1_234_567_890_000), "$1,234,567.89");
        assert_eq!(format_usd(-500_000), "-$0.50");
        assert_eq!(format_count(1_000_000), "1,000,000");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(-1234), "-1,234");
    }

    #[test]
    fn reasons_read_well() {
        let f = Facts {
            subject: "tenant acme",
            unit: Unit::UsdMicros,
            limit: 100_000_000,
            used: 99_870_000,
            in_flight: 0,
            amount: 420_000,
            now: ts("2026-11-25T10:00:00Z"),
            reset_at: Some(ts("2026-12-01T00:00:00Z")),
        };
        assert_eq!(
            reason(&f, Period::Month, Tz::UTC, false),
            "the monthly budget of $100.00 for tenant acme would be exceeded: $99.87 spent + $0.42 reserved by this request (estimated input + max output) > $100.00; resets 2026-12-01T00:00:00Z"
        );
        let f = Facts {
            used: 100_000_000,
            in_flight: 500_000,
            ..f
        };
        assert_eq!(
            reason(&f, Period::Month, Tz::UTC, false),
            "the monthly budget of $100.00 for tenant acme is exhausted: $99.50 spent + $0.50 reserved by requests in flight + $0.42 reserved by this request (estimated input + max output) > $100.00; resets 2026-12-01T00:00:00Z"
        );
        let t = Facts {
            unit: Unit::Tokens,
            limit: 1_000,
            used: 900,
            in_flight: 0,
            amount: 50,
            ..f
        };
        assert_eq!(
            cut_reason(&t, Period::Day, Tz::UTC, 120, 70),
            "the daily token budget of 1,000 tokens for tenant acme ran out while this response was streaming: 900 tokens used + 120 tokens used by this response so far > 1,000 tokens; the stream was cut at 70 output tokens (on_exceed: cut); resets 2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn cap_rolls_over_keeping_reservations() {
        let now = ts("2026-11-30T23:00:00Z");
        let mut c = CapMeter::new(Period::Month, Tz::UTC, now);
        c.reserve(40);
        c.settle(0, 50, now);
        assert!(c.fits(100, 10));
        assert!(!c.fits(100, 11));
        let dec = ts("2026-12-01T00:00:01Z");
        c.roll(Period::Month, Tz::UTC, dec);
        assert_eq!((c.settled, c.in_flight), (0, 40));
        assert_eq!(c.period_start, ts("2026-12-01T00:00:00Z"));
        c.settle(40, 30, dec);
        assert_eq!((c.settled, c.in_flight), (30, 0));
        // Usage stamped in a period that is over is not counted.
        c.settle(0, 5, now);
        assert_eq!(c.settled, 30);
    }

    #[test]
    fn stream_check_ignores_its_own_reservation() {
        let mut c = CapMeter::new(Period::Day, Tz::UTC, ts("2026-11-30T10:00:00Z"));
        c.settled = 60;
        c.reserve(30); // this stream
        c.reserve(5); // another request
        assert!(!c.stream_exceeds(100, 30, 35));
        assert!(c.stream_exceeds(100, 30, 36));
    }
}
