//! Rate-limit meters: a sliding window kept in slots, and a token bucket with integer
//! refill arithmetic. Each meter answers "does this amount fit?", takes reservations,
//! settles them to real usage and folds in history. Owns the algorithms and their error
//! bounds; must not lock, evaluate rules or build events.
//!
//! **Sliding window.** The window `W` is split into [`SLOTS`] slots of `W / SLOTS`. A
//! check at `now` sums the `SLOTS + 1` slots overlapping `[now − W, now]`, plus
//! reservations in flight. Because whole slots are counted, the sum covers *more* than
//! the window, never less: no window of length `W` ever admits more than `limit`
//! (token units: more than `limit` plus the overruns of requests that used more than
//! they reserved), and a request may be refused up to one slot (`W / 20`) early.
//!
//! **Token bucket.** Capacity `limit`, refilled continuously at `limit / W`. The level
//! is kept in units of `token × W-microseconds`, so refill is exact integer arithmetic.

use chrono_tz::Tz;
use tally_events::Timestamp;

use crate::policy::file::Unit;
use crate::policy::period::{format_instant, format_window};

/// Slots per sliding window.
pub(crate) const SLOTS: usize = 20;

/// What a meter reports when an amount does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Usage counted before this request (settled, plus reservations in flight).
    pub(crate) used: i64,
    /// Of which reservations in flight.
    pub(crate) in_flight: i64,
    /// When the amount would fit, if other requests stop; `None` if it never can.
    pub(crate) retry_at: Option<Timestamp>,
}

/// A sliding window of `SLOTS + 1` slot counters plus reservations in flight.
#[derive(Clone, Debug)]
pub(crate) struct SlidingWindow {
    window_us: i64,
    slot_us: i64,
    slots: [i64; SLOTS + 1],
    /// Absolute slot number (`t / slot_us`) of the newest slot.
    head: i64,
    pub(crate) in_flight: i64,
}

impl SlidingWindow {
    pub(crate) fn new(window_us: i64, now: Timestamp) -> Self {
        let slot_us = (window_us / SLOTS as i64).max(1);
        Self {
            window_us,
            slot_us,
            slots: [0; SLOTS + 1],
            head: now.as_micros().div_euclid(slot_us),
            in_flight: 0,
        }
    }

    fn ring(abs: i64) -> usize {
        // rem_euclid of a positive modulus is in 0..=SLOTS.
        usize::try_from(abs.rem_euclid(SLOTS as i64 + 1)).unwrap_or(0)
    }

    /// Move the newest slot to `now`'s, clearing slots that fell out. Times before the
    /// newest slot do not move it back.
    fn advance(&mut self, now: Timestamp) {
        let n = now.as_micros().div_euclid(self.slot_us);
        if n <= self.head {
            return;
        }
        let gap = n - self.head;
        if gap > SLOTS as i64 {
            self.slots = [0; SLOTS + 1];
        } else {
            for abs in self.head + 1..=n {
                self.slots[Self::ring(abs)] = 0;
            }
        }
        self.head = n;
    }

    /// Settled usage in the slots overlapping `[now − W, now]`.
    pub(crate) fn settled(&mut self, now: Timestamp) -> i64 {
        self.advance(now);
        self.slots.iter().sum()
    }

    /// Whether `amount` fits under `limit` at `now`.
    pub(crate) fn check(&mut self, limit: i64, amount: i64, now: Timestamp) -> Result<(), Refusal> {
        let settled = self.settled(now);
        let used = settled.saturating_add(self.in_flight);
        if used.saturating_add(amount) <= limit {
            return Ok(());
        }
        let need = used.saturating_add(amount) - limit;
        let mut retry_at = None;
        if amount <= limit {
            // Oldest slot first: when enough of them slid out, there is room.
            let mut freed = 0i64;
            for abs in self.head - SLOTS as i64..=self.head {
                freed = freed.saturating_add(self.slots[Self::ring(abs)]);
                if freed >= need {
                    let slot_end = (abs + 1).saturating_mul(self.slot_us);
                    retry_at = Some(Timestamp::from_micros(
                        slot_end
                            .saturating_add(self.window_us)
                            .max(now.as_micros() + 1),
                    ));
                    break;
                }
            }
            if retry_at.is_none() {
                // Only reservations in flight stand in the way: they settle soon.
                retry_at = Some(now.plus_micros(self.slot_us));
            }
        }
        Err(Refusal {
            used,
            in_flight: self.in_flight,
            retry_at,
        })
    }

    /// Count `amount` as used at `now` (requests, or history being rebuilt).
    pub(crate) fn add(&mut self, amount: i64, at: Timestamp) {
        let abs = at.as_micros().div_euclid(self.slot_us);
        self.advance(at);
        if abs > self.head - SLOTS as i64 - 1 && abs <= self.head {
            let i = Self::ring(abs);
            self.slots[i] = self.slots[i].saturating_add(amount);
        }
    }

    pub(crate) fn reserve(&mut self, amount: i64) {
        self.in_flight = self.in_flight.saturating_add(amount);
    }

    /// Replace a reservation by the real usage, counted at `now`.
    pub(crate) fn settle(&mut self, reserved: i64, actual: i64, now: Timestamp) {
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
        self.add(actual, now);
    }

    /// Give a reservation back without counting usage (an unsettled reservation).
    pub(crate) fn release(&mut self, reserved: i64) {
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
    }

    /// Whether the window holds nothing at `now` (the counter can be dropped).
    pub(crate) fn idle(&mut self, now: Timestamp) -> bool {
        self.in_flight == 0 && self.settled(now) == 0
    }
}

/// A token bucket of capacity `limit`, refilled at `limit` per window.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    window_us: i64,
    /// Tokens × window microseconds; may go negative when usage overran reservations.
    level: i128,
    last: i64,
    pub(crate) in_flight: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(limit: i64, window_us: i64, now: Timestamp) -> Self {
        Self {
            window_us,
            level: i128::from(limit) * i128::from(window_us),
            last: now.as_micros(),
            in_flight: 0,
        }
    }

    fn refill(&mut self, limit: i64, now: Timestamp) {
        let cap = i128::from(limit) * i128::from(self.window_us);
        let t = now.as_micros();
        if t > self.last {
            self.level = self
                .level
                .saturating_add(i128::from(limit) * i128::from(t - self.last));
            self.last = t;
        }
        self.level = self.level.min(cap);
    }

    /// Whole tokens available at `now`.
    pub(crate) fn available(&mut self, limit: i64, now: Timestamp) -> i64 {
        self.refill(limit, now);
        i64::try_from(self.level.div_euclid(i128::from(self.window_us))).unwrap_or(i64::MAX)
    }

    pub(crate) fn check(&mut self, limit: i64, amount: i64, now: Timestamp) -> Result<(), Refusal> {
        self.refill(limit, now);
        let need = i128::from(amount) * i128::from(self.window_us);
        if self.level >= need {
            return Ok(());
        }
        let available = self.available(limit, now);
        let retry_at = (amount <= limit && limit > 0).then(|| {
            let deficit = need - self.level;
            let wait = (deficit + i128::from(limit) - 1) / i128::from(limit);
            now.plus_micros(i64::try_from(wait).unwrap_or(i64::MAX))
        });
        Err(Refusal {
            used: limit.saturating_sub(available),
            in_flight: self.in_flight,
            retry_at,
        })
    }

    /// Take `amount` now; `reserved` says whether it is a reservation to settle later.
    pub(crate) fn take(&mut self, limit: i64, amount: i64, reserved: bool, now: Timestamp) {
        self.refill(limit, now);
        self.level -= i128::from(amount) * i128::from(self.window_us);
        if reserved {
            self.in_flight = self.in_flight.saturating_add(amount);
        }
    }

    /// Replace a reservation by the real usage: refund the difference, or take more.
    pub(crate) fn settle(&mut self, limit: i64, reserved: i64, actual: i64, now: Timestamp) {
        self.refill(limit, now);
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
        self.level += i128::from(reserved - actual) * i128::from(self.window_us);
        self.refill(limit, now);
    }

    /// Give a reservation back without counting usage, without moving the clock.
    pub(crate) fn release(&mut self, limit: i64, reserved: i64) {
        self.in_flight = self.in_flight.saturating_sub(reserved).max(0);
        let cap = i128::from(limit) * i128::from(self.window_us);
        self.level = (self.level + i128::from(reserved) * i128::from(self.window_us)).min(cap);
    }

    /// Used capacity (`limit − available`) at `now`.
    pub(crate) fn used(&mut self, limit: i64, now: Timestamp) -> i64 {
        limit.saturating_sub(self.available(limit, now))
    }

    pub(crate) fn idle(&mut self, limit: i64, now: Timestamp) -> bool {
        self.in_flight == 0 && self.used(limit, now) == 0
    }
}

/// The numbers behind a limit or cap decision, for its reason sentence.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts<'a> {
    /// `tenant acme`, `key_id k1`.
    pub(crate) subject: &'a str,
    pub(crate) unit: Unit,
    pub(crate) limit: i64,
    /// Settled usage plus reservations in flight, before this request.
    pub(crate) used: i64,
    /// Of `used`, the reservations in flight.
    pub(crate) in_flight: i64,
    /// What this request counts or reserves.
    pub(crate) amount: i64,
    pub(crate) now: Timestamp,
    pub(crate) reset_at: Option<Timestamp>,
}

impl Facts<'_> {
    /// `4,096 tokens reserved by this request (estimated input + max output)`.
    pub(crate) fn this_request(&self) -> String {
        let what = match self.unit {
            Unit::Requests => return "1 for this request".to_owned(),
            Unit::Tokens | Unit::UsdMicros => "estimated input + max output",
            Unit::InputTokens => "estimated input",
            Unit::OutputTokens => "max output",
        };
        format!(
            "{} reserved by this request ({what})",
            self.unit.amount(self.amount)
        )
    }

    /// `; retry in 12s (at 2026-11-25T10:00:12Z)`, or nothing when unknown.
    fn retry(&self) -> String {
        match self.reset_at {
            Some(at) => format!(
                "; retry in {}s (at {})",
                retry_after_secs(self.now, at),
                format_instant(at, Tz::UTC)
            ),
            None => String::new(),
        }
    }
}

/// Whole seconds from `now` until `at`, rounded up, at least 1.
pub(crate) fn retry_after_secs(now: Timestamp, at: Timestamp) -> u64 {
    let us = at.as_micros().saturating_sub(now.as_micros()).max(0);
    u64::try_from((us + 999_999) / 1_000_000)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Why a sliding-window or token-bucket limit refused (or admitted) a request.
pub(crate) fn reason(f: &Facts<'_>, window_us: i64, bucket: bool, fits: bool) -> String {
    let w = format_window(window_us);
    let name = format!(
        "rate limit of {} per {w}{} for {}",
        f.unit.amount(f.limit),
        if bucket { " (token bucket)" } else { "" },
        f.subject
    );
    if fits {
        return format!(
            "within the {name}: {} used before this request, {}",
            f.unit.amount(f.used),
            f.this_request()
        );
    }
    if f.amount > f.limit {
        return format!(
            "the {name} can never admit this request: {}, more than the limit; lower max_tokens or ask for a higher limit",
            f.this_request()
        );
    }
    if bucket {
        return format!(
            "the {name} is reached: {} available, {}{}",
            f.unit.amount(f.limit.saturating_sub(f.used)),
            f.this_request(),
            f.retry()
        );
    }
    let flight = if f.in_flight > 0 {
        format!(
            " (of which {} reserved by requests in flight)",
            f.unit.amount(f.in_flight)
        )
    } else {
        String::new()
    };
    format!(
        "the {name} is reached: {} in the last {w}{flight} + {} > {}{}",
        f.unit.amount(f.used),
        f.this_request(),
        f.unit.amount(f.limit),
        f.retry()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000_000;

    fn t(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn window_admits_exactly_the_limit_then_reopens() {
        let mut w = SlidingWindow::new(MIN, t(0));
        for i in 0..10 {
            assert!(w.check(10, 1, t(i * 1000)).is_ok());
            w.add(1, t(i * 1000));
        }
        let r = w.check(10, 1, t(20_000)).unwrap_err();
        assert_eq!(r.used, 10);
        // The slot holding the requests leaves the window one window after it ends.
        assert_eq!(r.retry_at, Some(t(MIN + MIN / SLOTS as i64)));
        assert!(w.check(10, 1, t(MIN + MIN / SLOTS as i64 - 1)).is_err());
        assert!(w.check(10, 1, t(MIN + MIN / SLOTS as i64)).is_ok());
    }

    #[test]
    fn window_counts_reservations_and_settles_to_real_usage() {
        let mut w = SlidingWindow::new(MIN, t(0));
        w.reserve(600);
        assert!(w.check(1000, 500, t(1)).is_err());
        assert!(w.check(1000, 400, t(1)).is_ok());
        w.settle(600, 100, t(2));
        assert_eq!(w.in_flight, 0);
        assert_eq!(w.settled(t(3)), 100);
        assert!(w.check(1000, 900, t(3)).is_ok());
        // A request larger than the limit can never pass.
        assert_eq!(w.check(1000, 1001, t(3)).unwrap_err().retry_at, None);
    }

    #[test]
    fn bucket_refills_continuously() {
        let mut b = TokenBucket::new(60, MIN, t(0));
        for _ in 0..60 {
            assert!(b.check(60, 1, t(0)).is_ok());
            b.take(60, 1, false, t(0));
        }
        let r = b.check(60, 1, t(0)).unwrap_err();
        assert_eq!(r.used, 60);
        assert_eq!(r.retry_at, Some(t(1_000_000)));
        assert!(b.check(60, 1, t(999_999)).is_err());
        assert!(b.check(60, 1, t(1_000_000)).is_ok());
        assert_eq!(b.available(60, t(10 * MIN)), 60);
    }

    #[test]
    fn bucket_settles_refunds_and_debts() {
        let mut b = TokenBucket::new(1000, MIN, t(0));
        b.take(1000, 800, true, t(0));
        assert_eq!(b.available(1000, t(0)), 200);
        b.settle(1000, 800, 100, t(0));
        assert_eq!(b.available(1000, t(0)), 900);
        b.take(1000, 900, true, t(0));
        b.settle(1000, 900, 1500, t(0));
        assert_eq!(b.available(1000, t(0)), -600);
        assert_eq!(
            b.check(1000, 1, t(0)).unwrap_err().retry_at,
            Some(t(36_060_000))
        );
    }

    #[test]
    fn reasons_read_well() {
        let f = Facts {
            subject: "key_id k1",
            unit: Unit::Requests,
            limit: 60,
            used: 60,
            in_flight: 0,
            amount: 1,
            now: t(0),
            reset_at: Some(t(11_500_000)),
        };
        assert_eq!(
            reason(&f, MIN, false, false),
            "the rate limit of 60 requests per 1m for key_id k1 is reached: 60 requests in the last 1m + 1 for this request > 60 requests; retry in 12s (at 1970-01-01T00:00:11Z)"
        );
        let f = Facts {
            unit: Unit::Tokens,
            limit: 100_000,
            used: 98_000,
            in_flight: 2_000,
            amount: 4_096,
            ..f
        };
        assert_eq!(
            reason(&f, MIN, false, false),
            "the rate limit of 100,000 tokens per 1m for key_id k1 is reached: 98,000 tokens in the last 1m (of which 2,000 tokens reserved by requests in flight) + 4,096 tokens reserved by this request (estimated input + max output) > 100,000 tokens; retry in 12s (at 1970-01-01T00:00:11Z)"
        );
        assert!(reason(&f, MIN, true, false).contains("2,000 tokens available"));
        let f = Facts {
            amount: 200_000,
            reset_at: None,
            ..f
        };
        assert!(reason(&f, MIN, false, false).contains("can never admit"));
    }

    proptest! {
        /// No window of length W ever holds more than `limit` admitted requests.
        #[test]
        fn sliding_window_never_exceeds_the_limit(
            gaps in proptest::collection::vec(0i64..5_000_000, 1..400),
            limit in 1i64..30,
        ) {
            let mut w = SlidingWindow::new(MIN, t(0));
            let mut now = 0i64;
            let mut admitted: Vec<i64> = Vec::new();
            for g in gaps {
                now += g;
                if w.check(limit, 1, t(now)).is_ok() {
                    w.add(1, t(now));
                    admitted.push(now);
                    let in_window = admitted.iter().filter(|&&a| a > now - MIN).count();
                    prop_assert!(in_window as i64 <= limit);
                }
            }
        }

        /// Nothing is refused that an exact limiter with a window one slot longer admits.
        #[test]
        fn sliding_window_refuses_at_most_one_slot_early(
            gaps in proptest::collection::vec(0i64..5_000_000, 1..400),
            limit in 1i64..30,
        ) {
            let mut w = SlidingWindow::new(MIN, t(0));
            let mut now = 0i64;
            let mut admitted: Vec<i64> = Vec::new();
            let longer = MIN + MIN / SLOTS as i64;
            for g in gaps {
                now += g;
                let exact_longer = admitted.iter().filter(|&&a| a > now - longer).count() as i64;
                match w.check(limit, 1, t(now)) {
                    Ok(()) => { w.add(1, t(now)); admitted.push(now); }
                    Err(_) => prop_assert!(exact_longer + 1 > limit),
                }
            }
        }
    }
}
