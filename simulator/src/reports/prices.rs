//! The simulated providers' price list (`simulator/src/prices.yaml`, loaded once) and the
//! configured price changes; it owns model-name matching for prices and must not
//! aggregate or round costs.
//!
//! Prices are read as US dollars per million tokens and kept as integer micro-dollars
//! per million tokens, so `tokens × price` is an exact integer in pico-dollars.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::config::{ReportsConfig, parse_moment};

const BUILT_IN: &str = include_str!("../prices.yaml");

/// Prices of one model in micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Price {
    pub(crate) input: u64,
    pub(crate) cached_input: u64,
    pub(crate) cache_write: u64,
    pub(crate) output: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[allow(dead_code)]
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
    #[allow(dead_code)]
    batch_discount_pct: u8,
}

/// Dollars per million tokens → micro-dollars per million tokens (6 decimals are
/// meaningful; rounding makes 0.075 exactly 75,000). Out-of-range values give 0.
fn micros(dollars: f64) -> u64 {
    if dollars.is_finite() && (0.0..=1e6).contains(&dollars) {
        (dollars * 1e6).round() as u64
    } else {
        0
    }
}

fn price_of(input: f64, cached: Option<f64>, write: Option<f64>, output: f64) -> Price {
    let input = micros(input);
    Price {
        input,
        cached_input: cached.map_or(input, micros),
        cache_write: write.map_or(input, micros),
        output: micros(output),
    }
}

fn parse(text: &str) -> Result<BTreeMap<String, Price>, String> {
    let raw: RawTable = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    Ok(raw
        .models
        .into_iter()
        .map(|(name, p)| {
            let price = price_of(p.input, p.cached_input, p.cache_write, p.output);
            (name, price)
        })
        .collect())
}

/// The built-in table, parsed on first use (`Simulator::new` forces it at start). The
/// file is tested; should it ever fail to parse, the table is empty and nothing is priced.
pub(crate) fn table() -> &'static BTreeMap<String, Price> {
    static TABLE: OnceLock<BTreeMap<String, Price>> = OnceLock::new();
    TABLE.get_or_init(|| {
        parse(BUILT_IN).unwrap_or_else(|e| {
            tracing::error!(error = %e, "simulator prices.yaml does not parse; nothing is priced");
            BTreeMap::new()
        })
    })
}

/// Whether the price entry `name` applies to `model`: the same name, or `name` followed
/// by `-` (dated snapshots), ignoring a `models/` prefix.
fn matches(name: &str, model: &str) -> bool {
    let model = model.strip_prefix("models/").unwrap_or(model);
    model == name
        || (model.len() > name.len()
            && model.starts_with(name)
            && model.as_bytes().get(name.len()) == Some(&b'-'))
}

/// The price of `model` at `at_micros`: the latest configured change in effect (the
/// most specific model name wins among changes of the same moment), else the table's
/// most specific entry, else none. A change never reaches a more specific family: a
/// change of `gpt-4o` applies to `gpt-4o-2024-08-06`, not to `gpt-4o-mini`.
pub(crate) fn price_at(cfg: &ReportsConfig, model: &str, at_micros: i64) -> Option<Price> {
    let family_len = table()
        .keys()
        .filter(|name| matches(name, model))
        .map(String::len)
        .max()
        .unwrap_or(0);
    let change = cfg
        .price_changes
        .iter()
        .filter(|c| matches(&c.model, model) && c.model.len() >= family_len)
        .filter_map(|c| parse_moment(&c.effective_from).map(|t| (t, c)))
        .filter(|(t, _)| *t <= at_micros)
        .max_by_key(|(t, c)| (*t, c.model.len()));
    if let Some((_, c)) = change {
        return Some(price_of(c.input, c.cached_input, c.cache_write, c.output));
    }
    table()
        .iter()
        .filter(|(name, _)| matches(name, model))
        .max_by_key(|(name, _)| name.len())
        .map(|(_, p)| *p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::reports::config::PriceChange;

    #[test]
    fn built_in_table_parses() {
        let t = parse(BUILT_IN).unwrap();
        assert!(t.len() > 15);
        assert_eq!(
            t["gpt-4o-mini"],
            Price {
                input: 150_000,
                cached_input: 75_000,
                cache_write: 150_000,
                output: 600_000
            }
        );
        assert_eq!(t["claude-sonnet-4-5"].cache_write, 3_750_000);
    }

    #[test]
    fn snapshots_use_the_family_price_and_changes_apply_from_their_moment() {
        let mut cfg = ReportsConfig::default();
        let base = price_at(&cfg, "gpt-4o-mini-2024-07-18", 0).unwrap();
        assert_eq!(base.input, 150_000);
        assert_ne!(price_at(&cfg, "gpt-4o-2024-08-06", 0), Some(base));
        assert_eq!(price_at(&cfg, "gpt-4oxyz", 0), None);
        cfg.price_changes.push(PriceChange {
            model: "gpt-4o-mini".into(),
            effective_from: "2026-10-15T12:00:00Z".into(),
            input: 0.30,
            cached_input: None,
            cache_write: None,
            output: 1.2,
        });
        let at = parse_moment("2026-10-15T12:00:00Z").unwrap();
        assert_eq!(price_at(&cfg, "gpt-4o-mini-2024-07-18", at - 1), Some(base));
        let new = price_at(&cfg, "gpt-4o-mini-2024-07-18", at).unwrap();
        assert_eq!(
            (new.input, new.cached_input, new.output),
            (300_000, 300_000, 1_200_000)
        );
        // Another family is untouched.
        assert_eq!(price_at(&cfg, "gpt-4o", at).unwrap().input, 2_500_000);
        // A change of a shorter family name stops at more specific families.
        cfg.price_changes.push(PriceChange {
            model: "gpt-4o".into(),
            effective_from: "2026-10-15T12:00:00Z".into(),
            input: 3.0,
            cached_input: None,
            cache_write: None,
            output: 12.0,
        });
        assert_eq!(
            price_at(&cfg, "gpt-4o-2024-08-06", at).unwrap().input,
            3_000_000
        );
        assert_eq!(price_at(&cfg, "gpt-4o-mini", at).unwrap().input, 300_000);
    }
}
