//! The `reports` section of the simulator config: identity maps and injected
//! discrepancies for the usage and cost reports; plain data, it must not build reports.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::record::Provider;

/// Which model name a report shows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReportModel {
    /// The name the response reported: the dated snapshot for known aliases, as the
    /// providers' reports do.
    #[default]
    Served,
    /// The name the client asked for (an alias such as `gpt-4o-mini`).
    Requested,
}

/// A provider price change for one model from a moment on (US dollars per million
/// tokens, like `prices.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceChange {
    /// Model name: exact, or a family prefix followed by `-` (as in `prices.yaml`).
    pub model: String,
    /// RFC 3339 moment from which the new prices apply (compared with the request time
    /// after `clock_skew_ms`).
    pub effective_from: String,
    /// Uncached input.
    pub input: f64,
    /// Cache reads (defaults to `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Cache writes (defaults to `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Output, reasoning included.
    pub output: f64,
}

/// A credit or refund: a negative cost line on one UTC day of one provider's cost report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    /// Whose cost report carries it.
    pub provider: Provider,
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// The credit in US dollars; reported as a negative amount whatever its sign here.
    pub amount_usd: f64,
    /// Text of the line (`line_item` / `description` / credit name).
    pub description: String,
}

/// Identity maps and injected discrepancies for the report endpoints. The default
/// reports exactly what was served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// OpenAI `api_key_id` (`key_…`) or Gemini key id (`gkey_…`) → project id.
    pub project_of_key: BTreeMap<String, String>,
    /// Anthropic `api_key_id` (`apikey_…`) → workspace id (`wrkspc_…`). Keys not listed
    /// are in the default workspace, which the reports show as `null` (as Anthropic's
    /// do).
    pub workspace_of_key: BTreeMap<String, String>,
    /// OpenAI project of keys not in `project_of_key`.
    pub default_project_id: String,
    /// Google Cloud project of Gemini keys not in `project_of_key`.
    pub default_gcp_project_id: String,
    /// Report incomplete (aborted or disconnected) streams with their full
    /// `output_tokens` instead of the `output_tokens_sent` actually generated.
    pub bill_aborted_in_full: bool,
    /// Shift every request time by this many milliseconds before bucketing.
    pub clock_skew_ms: i64,
    /// Which model name to report.
    pub report_model: ReportModel,
    /// Provider price changes.
    pub price_changes: Vec<PriceChange>,
    /// Credits and refunds.
    pub credits: Vec<Credit>,
    /// Report OpenAI `input_cached_tokens` as 0 (costs still price the cached tokens at
    /// the cached rate).
    pub zero_cached_tokens: bool,
    /// Answer every Nth report request (OpenAI and Anthropic admin endpoints, counted
    /// together) with 429 and `retry-after`; 0 = never.
    pub rate_limit_every: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            project_of_key: BTreeMap::new(),
            workspace_of_key: BTreeMap::new(),
            default_project_id: "proj_default".to_owned(),
            default_gcp_project_id: "gen-lang-client-0000000000".to_owned(),
            bill_aborted_in_full: false,
            clock_skew_ms: 0,
            report_model: ReportModel::Served,
            price_changes: Vec::new(),
            credits: Vec::new(),
            zero_cached_tokens: false,
            rate_limit_every: 0,
        }
    }
}

/// A price in US dollars per million tokens within range.
fn check_price(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && (0.0..=1e6).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            message: format!("{v} is not a price in dollars per million tokens"),
        })
    }
}

impl ReportsConfig {
    /// Checks dates, moments and prices.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for c in &self.price_changes {
            parse_moment(&c.effective_from).ok_or_else(|| ConfigError::Invalid {
                field: "reports.price_changes.effective_from",
                message: format!("{:?} is not an RFC 3339 timestamp", c.effective_from),
            })?;
            check_price("reports.price_changes.input", c.input)?;
            check_price("reports.price_changes.output", c.output)?;
            for v in [c.cached_input, c.cache_write].into_iter().flatten() {
                check_price("reports.price_changes.cached_input/cache_write", v)?;
            }
        }
        for c in &self.credits {
            parse_day(&c.date).ok_or_else(|| ConfigError::Invalid {
                field: "reports.credits.date",
                message: format!("{:?} is not a YYYY-MM-DD date", c.date),
            })?;
            if !c.amount_usd.is_finite() || c.amount_usd.abs() > 1e9 {
                return Err(ConfigError::Invalid {
                    field: "reports.credits.amount_usd",
                    message: format!("{} is not an amount", c.amount_usd),
                });
            }
        }
        Ok(())
    }
}

/// An RFC 3339 moment as microseconds since the epoch.
pub(crate) fn parse_moment(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc).timestamp_micros())
}

/// A `YYYY-MM-DD` day as the Unix second of its UTC midnight.
pub(crate) fn parse_day(s: &str) -> Option<i64> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let cfg: ReportsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, ReportsConfig::default());
        assert!(cfg.validate().is_ok());
        let bad: ReportsConfig = serde_json::from_str(
            r#"{"price_changes":[{"model":"gpt-4o","effective_from":"yesterday","input":1,"output":2}]}"#,
        )
        .unwrap();
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid { .. })));
        let bad: ReportsConfig = serde_json::from_str(
            r#"{"credits":[{"provider":"openai","date":"2026-13-01","amount_usd":5,"description":"x"}]}"#,
        )
        .unwrap();
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<ReportsConfig>(r#"{"clock_skew":1}"#).is_err());
    }

    #[test]
    fn moments_and_days() {
        assert_eq!(parse_moment("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_moment("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_day("1970-01-02"), Some(86_400));
        assert_eq!(parse_day("1970-1-2x"), None);
    }
}
