//! Signed token and request figures that can be added, subtracted and priced, shared by
//! the matcher and the classifier. Must not know where figures come from.

use std::ops::{Add, AddAssign, Neg, Sub};

use serde::{Deserialize, Serialize};
use tally_enforcer::pricing::PriceTable;

/// Requests and tokens by kind. Signed, so a difference is a `Figures` too. Token
/// conventions are the gateway's: `input` includes `cached` and `cache_write`, `output`
/// includes reasoning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Figures {
    pub requests: i64,
    pub input: i64,
    pub cached: i64,
    pub cache_write: i64,
    pub output: i64,
    pub audio_input: i64,
    pub audio_output: i64,
}

impl Figures {
    /// Every figure is zero.
    pub fn is_zero(&self) -> bool {
        *self == Figures::default()
    }

    /// The token figures only (requests zeroed).
    pub fn tokens_only(self) -> Figures {
        Figures {
            requests: 0,
            ..self
        }
    }

    /// Token kinds as (name, value) pairs, in a fixed order.
    pub fn token_kinds(&self) -> [(&'static str, i64); 6] {
        [
            ("input", self.input),
            ("cached", self.cached),
            ("cache_write", self.cache_write),
            ("output", self.output),
            ("audio_input", self.audio_input),
            ("audio_output", self.audio_output),
        ]
    }

    /// No token figure is negative.
    pub fn tokens_non_negative(&self) -> bool {
        self.token_kinds().iter().all(|(_, v)| *v >= 0)
    }

    /// The largest absolute token figure.
    pub fn max_abs_tokens(&self) -> i64 {
        self.token_kinds()
            .iter()
            .map(|(_, v)| v.saturating_abs())
            .max()
            .unwrap_or(0)
    }

    /// Cost in pico-dollars (µ$ × 10⁻⁶) at `prices` for `model`, or `None` for a model
    /// the table does not know. Linear in the figures, so the cost of a difference is the
    /// difference of the costs, exactly. Uncached input is `input − cached − cache_write`.
    pub fn cost_pico(&self, prices: &PriceTable, model: &str) -> Option<i128> {
        let p = prices.price(model)?;
        let uncached =
            i128::from(self.input) - i128::from(self.cached) - i128::from(self.cache_write);
        Some(
            uncached * i128::from(p.input)
                + i128::from(self.cached) * i128::from(p.cached_input)
                + i128::from(self.cache_write) * i128::from(p.cache_write)
                + i128::from(self.output) * i128::from(p.output),
        )
    }
}

/// Pico-dollars to micro-dollars, rounding half away from zero.
pub fn pico_to_micros(pico: i128) -> i64 {
    let half = 500_000;
    let m = if pico >= 0 {
        (pico + half) / 1_000_000
    } else {
        -((-pico + half) / 1_000_000)
    };
    i64::try_from(m).unwrap_or(if m > 0 { i64::MAX } else { i64::MIN })
}

impl Add for Figures {
    type Output = Figures;
    fn add(self, o: Figures) -> Figures {
        Figures {
            requests: self.requests + o.requests,
            input: self.input + o.input,
            cached: self.cached + o.cached,
            cache_write: self.cache_write + o.cache_write,
            output: self.output + o.output,
            audio_input: self.audio_input + o.audio_input,
            audio_output: self.audio_output + o.audio_output,
        }
    }
}

impl AddAssign for Figures {
    fn add_assign(&mut self, o: Figures) {
        *self = *self + o;
    }
}

impl Neg for Figures {
    type Output = Figures;
    fn neg(self) -> Figures {
        Figures::default() - self
    }
}

impl Sub for Figures {
    type Output = Figures;
    fn sub(self, o: Figures) -> Figures {
        Figures {
            requests: self.requests - o.requests,
            input: self.input - o.input,
            cached: self.cached - o.cached,
            cache_write: self.cache_write - o.cache_write,
            output: self.output - o.output,
            audio_input: self.audio_input - o.audio_input,
            audio_output: self.audio_output - o.audio_output,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(pico_to_micros(1_499_999), 1);
        assert_eq!(pico_to_micros(1_500_000), 2);
        assert_eq!(pico_to_micros(-1_500_000), -2);
        assert_eq!(pico_to_micros(-1_499_999), -1);
        assert_eq!(pico_to_micros(0), 0);
    }

    #[test]
    fn cost_of_a_difference_is_the_difference_of_costs() {
        let prices = PriceTable::built_in();
        let a = Figures {
            input: 1000,
            cached: 200,
            output: 50,
            ..Default::default()
        };
        let b = Figures {
            input: 700,
            cached: 300,
            output: 90,
            ..Default::default()
        };
        let ca = a.cost_pico(&prices, "gpt-4o-mini").unwrap();
        let cb = b.cost_pico(&prices, "gpt-4o-mini").unwrap();
        assert_eq!((a - b).cost_pico(&prices, "gpt-4o-mini").unwrap(), ca - cb);
        // gpt-4o-mini: 800 × 0.15 + 200 × 0.075 + 50 × 0.60 = 120 + 15 + 30 µ$.
        assert_eq!(pico_to_micros(ca), 165);
        assert!(a.cost_pico(&prices, "no-such-model").is_none());
    }
}
