//! The pricing file (YAML): per tenant the customer's name, Stripe customer id, markup
//! and optional per-model prices, with a default for every tenant; the Stripe meters and
//! CloudEvents source; and the one money rule: a line's billed amount is computed exactly
//! (integer arithmetic, no floats) and rounded once, half away from zero, to the µ$.
//! Must not read ledger data or format output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::ExportError;
use super::lines::Figures;

/// Most decimal places a price or markup may have.
const MAX_SCALE: u32 = 9;

/// An exact decimal number (`units / 10^scale`), read from YAML numbers or strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dec {
    units: i128,
    scale: u32,
}

impl Dec {
    /// Parse `12`, `12.5`, `-0.075`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        {
            return Err(format!("`{s}` is not a decimal number"));
        }
        let frac = frac.trim_end_matches('0');
        let scale = u32::try_from(frac.len()).unwrap_or(u32::MAX);
        if scale > MAX_SCALE {
            return Err(format!("`{s}` has more than {MAX_SCALE} decimal places"));
        }
        let all = format!("{int}{frac}");
        let units: i128 = if all.is_empty() {
            0
        } else {
            all.parse().map_err(|_| format!("`{s}` is too large"))?
        };
        Ok(Self {
            units: if neg { -units } else { units },
            scale,
        })
    }

    /// The value scaled to `10^MAX_SCALE` (exact).
    fn nanos(self) -> i128 {
        self.units * 10i128.pow(MAX_SCALE - self.scale)
    }

    fn is_negative(self) -> bool {
        self.units < 0
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.units);
        }
        let p = 10i128.pow(self.scale);
        let sign = if self.units < 0 { "-" } else { "" };
        let a = self.units.abs();
        write!(
            f,
            "{sign}{}.{:0width$}",
            a / p,
            a % p,
            width = self.scale as usize
        )
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number such as 12.5 or \"0.075\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dec, E> {
                Ok(Dec {
                    units: i128::from(v),
                    scale: 0,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dec, E> {
                Ok(Dec {
                    units: i128::from(v),
                    scale: 0,
                })
            }
            // A YAML float: its shortest round-trip text is the decimal as written (for
            // up to 15 significant digits), which is then read exactly.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dec, E> {
                if !v.is_finite() {
                    return Err(E::custom("not a finite number"));
                }
                Dec::parse(&format!("{v}")).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dec, E> {
                Dec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `num / den` rounded half away from zero (`den > 0`).
pub fn round_half_away(num: i128, den: i128) -> i128 {
    let q = num / den;
    let r = num % den;
    if 2 * r.abs() >= den {
        q + num.signum()
    } else {
        q
    }
}

/// Prices of one model in US dollars per million tokens (= µ$ per token).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrices {
    /// Uncached input tokens (input − cached − cache writes).
    pub input: Dec,
    /// Output tokens (reasoning included).
    pub output: Dec,
    /// Cached input tokens; default: `input`.
    #[serde(default)]
    pub cached_input: Option<Dec>,
    /// Cache write tokens; default: `input`.
    #[serde(default)]
    pub cache_write: Option<Dec>,
}

/// Pricing of one tenant (or the default for all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPricing {
    /// Customer name shown in exports; default: the tenant.
    #[serde(default)]
    pub name: Option<String>,
    /// Stripe customer (`cus_…`); required for the Stripe format.
    #[serde(default)]
    pub stripe_customer_id: Option<String>,
    /// Markup on the gateway cost in percent (`20` = cost × 1.2); may be negative.
    #[serde(default)]
    pub markup_percent: Option<Dec>,
    /// Per-model prices ($/Mtok) that replace cost × markup for that model.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrices>,
}

/// What a Stripe meter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterValue {
    Requests,
    InputTokens,
    UncachedInputTokens,
    CachedInputTokens,
    CacheWriteTokens,
    OutputTokens,
    ReasoningTokens,
    TotalTokens,
    CostMicros,
    BilledMicros,
}

impl MeterValue {
    /// The value of this meter for figures billed at `billed_micros`.
    pub fn of(self, f: &Figures, billed_micros: i64) -> i64 {
        match self {
            MeterValue::Requests => f.requests,
            MeterValue::InputTokens => f.input_tokens,
            MeterValue::UncachedInputTokens => f.uncached_input_tokens(),
            MeterValue::CachedInputTokens => f.cached_input_tokens,
            MeterValue::CacheWriteTokens => f.cache_write_tokens,
            MeterValue::OutputTokens => f.output_tokens,
            MeterValue::ReasoningTokens => f.reasoning_tokens,
            MeterValue::TotalTokens => f.input_tokens.saturating_add(f.output_tokens),
            MeterValue::CostMicros => f.cost_micros,
            MeterValue::BilledMicros => billed_micros,
        }
    }
}

/// One Stripe meter: the `event_name` of its meter events and what the value counts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    pub event_name: String,
    pub value: MeterValue,
}

/// Stripe settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// The meters to send; default: input tokens, output tokens and the billed µ$.
    #[serde(default = "default_meters")]
    pub meters: Vec<Meter>,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            meters: default_meters(),
        }
    }
}

fn default_meters() -> Vec<Meter> {
    vec![
        Meter {
            event_name: "tally_input_tokens".into(),
            value: MeterValue::InputTokens,
        },
        Meter {
            event_name: "tally_output_tokens".into(),
            value: MeterValue::OutputTokens,
        },
        Meter {
            event_name: "tally_billed_micros".into(),
            value: MeterValue::BilledMicros,
        },
    ]
}

/// CloudEvents settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// The `source` attribute (consumers dedupe on `source` + `id`); default `tally`.
    #[serde(default = "default_source")]
    pub source: String,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            source: default_source(),
        }
    }
}

fn default_source() -> String {
    "tally".into()
}

/// The whole pricing file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Applies to every tenant; a tenant's own settings override it field by field
    /// (prices model by model).
    #[serde(default)]
    pub default: TenantPricing,
    /// Per tenant, by tenant name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPricing>,
    #[serde(default)]
    pub stripe: StripeConfig,
    #[serde(default)]
    pub cloudevents: CloudEventsConfig,
}

/// How a line was priced, for the `pricing` column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Billed {
    /// Amount billed, µ$.
    pub micros: i64,
    /// `markup 20%` or `prices`.
    pub basis: String,
}

impl Pricing {
    /// Parse and check a pricing file's text.
    pub fn from_yaml(text: &str) -> Result<Self, ExportError> {
        let p: Pricing = serde_yaml_ng::from_str(text).map_err(|e| {
            ExportError::Pricing(format!(
                "{e}. See docs/billing-exports.md for the pricing file's fields"
            ))
        })?;
        p.check()?;
        Ok(p)
    }

    /// Read a pricing file.
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ExportError::Pricing(format!("cannot read `{}`: {e}", path.display())))?;
        Self::from_yaml(&text)
            .map_err(|e| ExportError::Pricing(format!("`{}`: {e}", path.display())))
    }

    fn check(&self) -> Result<(), ExportError> {
        let all = std::iter::once(("default", &self.default))
            .chain(self.tenants.iter().map(|(k, v)| (k.as_str(), v)));
        for (who, t) in all {
            if let Some(m) = t.markup_percent
                && m.nanos() < -100 * 10i128.pow(MAX_SCALE)
            {
                return Err(ExportError::Pricing(format!(
                    "{who}: markup_percent {m} is below -100; a markup can at most give everything away"
                )));
            }
            for (model, p) in &t.prices {
                let all = [Some(p.input), Some(p.output), p.cached_input, p.cache_write];
                if all.iter().flatten().any(|d| d.is_negative()) {
                    return Err(ExportError::Pricing(format!(
                        "{who}: prices of `{model}` must not be negative"
                    )));
                }
            }
        }
        if self.stripe.meters.is_empty() {
            return Err(ExportError::Pricing(
                "stripe.meters is empty; list at least one meter or leave it out for the defaults"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Customer name of `tenant`.
    pub fn customer_name(&self, tenant: &str) -> String {
        self.tenants
            .get(tenant)
            .and_then(|t| t.name.clone())
            .unwrap_or_else(|| tenant.to_owned())
    }

    /// Stripe customer id of `tenant`, if configured.
    pub fn stripe_customer_id(&self, tenant: &str) -> Option<&str> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.stripe_customer_id.as_deref())
    }

    fn markup(&self, tenant: &str) -> Dec {
        self.tenants
            .get(tenant)
            .and_then(|t| t.markup_percent)
            .or(self.default.markup_percent)
            .unwrap_or_default()
    }

    fn prices(&self, tenant: &str, model: &str) -> Option<&ModelPrices> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.prices.get(model))
            .or_else(|| self.default.prices.get(model))
    }

    /// The billed amount of one line: with prices for the model, Σ tokens × price per
    /// kind; otherwise cost × (100 + markup) / 100. Exact, then rounded once (half away
    /// from zero) to the µ$.
    pub fn bill(&self, tenant: &str, model: &str, f: &Figures) -> Billed {
        let (num, den, basis) = match self.prices(tenant, model) {
            Some(p) => {
                let num = i128::from(f.uncached_input_tokens()) * p.input.nanos()
                    + i128::from(f.cached_input_tokens) * p.cached_input.unwrap_or(p.input).nanos()
                    + i128::from(f.cache_write_tokens) * p.cache_write.unwrap_or(p.input).nanos()
                    + i128::from(f.output_tokens) * p.output.nanos();
                (num, 10i128.pow(MAX_SCALE), "prices".to_owned())
            }
            None => {
                let m = self.markup(tenant);
                let hundred = 100 * 10i128.pow(MAX_SCALE);
                (
                    i128::from(f.cost_micros) * (hundred + m.nanos()),
                    hundred,
                    format!("markup {m}%"),
                )
            }
        };
        let micros = round_half_away(num, den);
        Billed {
            micros: i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX }),
            basis,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(Dec::parse("12.50").unwrap().to_string(), "12.5");
        assert_eq!(Dec::parse("-0.075").unwrap().to_string(), "-0.075");
        assert_eq!(Dec::parse("3").unwrap().to_string(), "3");
        assert!(Dec::parse("1.2.3").is_err());
        assert!(Dec::parse("0.0000000001").is_err());
        let p: Pricing = Pricing::from_yaml("default: {markup_percent: 0.1}").unwrap();
        assert_eq!(p.default.markup_percent.unwrap().to_string(), "0.1");
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_half_away(5, 10), 1);
        assert_eq!(round_half_away(4, 10), 0);
        assert_eq!(round_half_away(-5, 10), -1);
        assert_eq!(round_half_away(-4, 10), 0);
        assert_eq!(round_half_away(15, 10), 2);
        assert_eq!(round_half_away(-25, 10), -3);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = Pricing::from_yaml("tenants: {a: {markup: 3}}").unwrap_err();
        assert_eq!(e.code(), "export.pricing");
        assert!(e.to_string().contains("markup"), "{e}");
        let e = Pricing::from_yaml("default: {markup_percent: -150}").unwrap_err();
        assert!(e.to_string().contains("-100"), "{e}");
    }
}
