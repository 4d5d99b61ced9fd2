//! The versioned price table and cost computation in integer micro-US-dollars. Owns
//! model-name matching and rounding; must not estimate tokens or know about requests.
//!
//! Prices are read once as dollars per million tokens and turned into integer
//! micro-dollars per million tokens; from then on all arithmetic is integer. A cost is
//! `Σ tokens_k × price_k / 1,000,000`, rounded half-up to a whole micro-dollar per event.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tally_events::TokenCounts;

const BUILT_IN: &str = include_str!("prices.yaml");

/// Prices of one model, micro-USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    pub batch_discount_pct: u8,
}

/// A price table with its version.
#[derive(Clone, Debug)]
pub struct PriceTable {
    version: String,
    models: BTreeMap<String, ModelPrice>,
}

/// Failure to load a price table.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("prices.read: cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "prices.parse: {0}. Expected `version:` and `models: {{name: {{input, cached_input, cache_write, output}}}}` in dollars per million tokens"
    )]
    Parse(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    models: BTreeMap<String, RawPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
    output: f64,
    #[serde(default)]
    batch_discount_pct: u8,
}

fn micros(dollars: f64, model: &str, field: &str) -> Result<u64, PriceError> {
    if !dollars.is_finite() || !(0.0..=1e6).contains(&dollars) {
        return Err(PriceError::Parse(format!(
            "{model}.{field}: {dollars} is not a price"
        )));
    }
    // At most 6 decimal places are meaningful; rounding makes 0.075 exactly 75,000.
    Ok((dollars * 1e6).round() as u64)
}

impl PriceTable {
    /// The table shipped with tally.
    pub fn built_in() -> Self {
        // The built-in table is tested; fall back to an empty table rather than panic.
        Self::parse(BUILT_IN).unwrap_or_else(|_| Self {
            version: "empty".into(),
            models: BTreeMap::new(),
        })
    }

    /// Load a YAML table from a file.
    pub fn load(path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parse a YAML table.
    pub fn parse(text: &str) -> Result<Self, PriceError> {
        let raw: RawTable =
            serde_yaml_ng::from_str(text).map_err(|e| PriceError::Parse(e.to_string()))?;
        let mut models = BTreeMap::new();
        for (name, p) in raw.models {
            let input = micros(p.input, &name, "input")?;
            let price = ModelPrice {
                input,
                cached_input: match p.cached_input {
                    Some(v) => micros(v, &name, "cached_input")?,
                    None => input,
                },
                cache_write: match p.cache_write {
                    Some(v) => micros(v, &name, "cache_write")?,
                    None => input,
                },
                output: micros(p.output, &name, "output")?,
                batch_discount_pct: p.batch_discount_pct.min(100),
            };
            models.insert(name, price);
        }
        Ok(Self {
            version: raw.version,
            models,
        })
    }

    /// The table's version, recorded with every cost.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Prices for a model: exact name, else the longest configured name that is a
    /// prefix followed by `-` (dated snapshots), else none.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        let model = model.strip_prefix("models/").unwrap_or(model);
        self.models
            .iter()
            .filter(|(name, _)| {
                model.len() > name.len()
                    && model.starts_with(name.as_str())
                    && model.as_bytes().get(name.len()) == Some(&b'-')
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    }

    /// Cost of the given tokens in micro-USD, or None for an unknown model.
    pub fn cost_micros(&self, model: &str, tokens: &TokenCounts, batch: bool) -> Option<i64> {
        let p = self.price(model)?;
        let cached = tokens.cached_input_tokens.min(tokens.input_tokens);
        let written = tokens.cache_write_tokens.min(tokens.input_tokens - cached);
        let uncached = tokens.input_tokens - cached - written;
        let pico: u128 = u128::from(uncached) * u128::from(p.input)
            + u128::from(cached) * u128::from(p.cached_input)
            + u128::from(written) * u128::from(p.cache_write)
            + u128::from(tokens.output_tokens) * u128::from(p.output);
        let pico = if batch {
            pico * u128::from(100 - p.batch_discount_pct) / 100
        } else {
            pico
        };
        let rounded = (pico + 500_000) / 1_000_000;
        Some(i64::try_from(rounded).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: u64, cached: u64, write: u64, output: u64) -> TokenCounts {
        TokenCounts {
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_tokens: write,
            output_tokens: output,
            ..TokenCounts::default()
        }
    }

    #[test]
    fn built_in_table_parses_and_is_versioned() {
        let t = PriceTable::parse(BUILT_IN).map_err(|e| e.to_string());
        assert!(t.as_ref().is_ok_and(|t| t.models.len() > 15), "{t:?}");
        assert_eq!(PriceTable::built_in().version(), "2026-11-01");
    }

    #[test]
    fn costs_are_exact_integers() {
        let t = PriceTable::built_in();
        // gpt-4o-mini: 1000 uncached in × $0.15/M + 1000 out × $0.60/M = 150 + 600 µ$.
        assert_eq!(
            t.cost_micros("gpt-4o-mini", &tokens(1000, 0, 0, 1000), false),
            Some(750)
        );
        // Snapshot names use their family's price.
        assert_eq!(
            t.cost_micros("gpt-4o-mini-2024-07-18", &tokens(1000, 0, 0, 1000), false),
            Some(750)
        );
        // 2048 cached of 3000 input at $0.075/M: 952×0.15 + 2048×0.075 = 142.8 + 153.6 = 296.4 → 296.
        assert_eq!(
            t.cost_micros("gpt-4o-mini", &tokens(3000, 2048, 0, 0), false),
            Some(296)
        );
        // Anthropic cache writes: 100 uncached×3 + 200 read×0.3 + 1000 write×3.75 + 10 out×15
        // = 300 + 60 + 3750 + 150 = 4260.
        assert_eq!(
            t.cost_micros(
                "claude-sonnet-4-5-20250929",
                &tokens(1300, 200, 1000, 10),
                false
            ),
            Some(4260)
        );
        assert_eq!(
            t.cost_micros("gpt-4o-mini", &tokens(1000, 0, 0, 1000), true),
            Some(375)
        );
        assert_eq!(
            t.cost_micros("no-such-model", &tokens(1, 0, 0, 1), false),
            None
        );
    }

    #[test]
    fn prefix_match_needs_a_dash_and_prefers_the_longest() {
        let t = PriceTable::built_in();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18"), t.price("gpt-4o-mini"));
        assert_ne!(t.price("gpt-4o-mini-2024-07-18"), t.price("gpt-4o"));
        assert!(t.price("gpt-4oxyz").is_none());
        assert_eq!(
            t.price("models/gemini-2.5-flash-001"),
            t.price("gemini-2.5-flash")
        );
    }

    #[test]
    fn bad_tables_are_rejected_with_a_code() {
        for bad in [
            "models: {}",
            "version: x\nmodels: {m: {input: -1, output: 1}}",
            "version: x\nmodels: {m: {inptu: 1, output: 1}}",
        ] {
            let err = PriceTable::parse(bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.starts_with("prices.parse")),
                "{bad}: {err:?}"
            );
        }
    }
}
