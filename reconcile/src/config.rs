//! Reconciliation settings (`reconcile:` in tally.yaml, or a file given with `--config`):
//! which provider keys and projects are the gateway's, model aliases, bucket widths,
//! tolerances and the thresholds the classifier uses. Plain data with defaults; must not
//! hold runtime state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How reconciliation runs. Every field has a default, so `{}` is valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Which provider credentials belong to which gateway upstream. Provider usage under
    /// a key or project listed nowhere here is *bypass traffic* (it reached the provider
    /// without going through tally). With no accounts for a provider, every provider row
    /// is matched against all gateway traffic to that provider.
    pub accounts: Vec<Account>,
    /// Provider model name → the name the gateway records (`model_served`, else
    /// `model_requested`). Dated snapshots of a gateway model (`gpt-4o-2024-08-06` for
    /// `gpt-4o`) are recognized without an entry.
    pub model_aliases: BTreeMap<String, String>,
    /// Width of the usage buckets compared, seconds (the width the provider report was
    /// pulled with). Default 3600.
    pub bucket_seconds: i64,
    /// Differences within these bounds are not reported as unexplained.
    pub tolerance: Tolerance,
    /// A run of at least this many minutes without any gateway event, inside a bucket
    /// where the provider counted requests, is evidence of missing gateway events.
    pub gap_minutes: i64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            model_aliases: BTreeMap::new(),
            bucket_seconds: 3600,
            tolerance: Tolerance::default(),
            gap_minutes: 5,
        }
    }
}

/// A gateway upstream and the provider credentials it uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// The named upstream in the proxy config.
    pub upstream: String,
    /// Provider API key ids (`key_…`, `apikey_…`) of this upstream's credentials.
    #[serde(default)]
    pub api_key_ids: Vec<String>,
    /// Provider projects / workspaces used only by this upstream.
    #[serde(default)]
    pub project_ids: Vec<String>,
}

/// Absolute and relative tolerances; a difference is within tolerance when it is within
/// the absolute bound *or* the relative one (relative to the provider figure).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerance {
    /// Tokens (any kind) per bucket.
    pub tokens_abs: u64,
    /// Fraction (0.01 = 1%).
    pub tokens_rel: f64,
    /// Requests per bucket.
    pub requests_abs: u64,
    /// Micro-dollars per day and model.
    pub money_abs_micros: u64,
    /// Fraction of the provider amount.
    pub money_rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            tokens_abs: 0,
            tokens_rel: 0.0,
            requests_abs: 0,
            // Providers round each cost line; tally prices whole days exactly.
            money_abs_micros: 1,
            money_rel: 0.0,
        }
    }
}

impl Tolerance {
    /// `diff` is tolerated against `reference`.
    pub(crate) fn tokens_ok(&self, diff: i64, reference: i64) -> bool {
        within(diff, reference, self.tokens_abs, self.tokens_rel)
    }

    pub(crate) fn requests_ok(&self, diff: i64, reference: i64) -> bool {
        within(diff, reference, self.requests_abs, 0.0)
    }

    pub(crate) fn money_ok(&self, diff: i64, reference: i64) -> bool {
        within(diff, reference, self.money_abs_micros, self.money_rel)
    }
}

fn within(diff: i64, reference: i64, abs: u64, rel: f64) -> bool {
    let d = diff.unsigned_abs();
    d <= abs || (rel > 0.0 && (d as f64) <= rel * (reference.unsigned_abs() as f64))
}

impl ReconcileConfig {
    /// Parse from YAML: the settings themselves, or a file whose only key is
    /// `reconcile:` (the section as it appears in tally's config file).
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        if let serde_yaml_ng::Value::Mapping(m) = &value
            && m.len() == 1
            && let Some(inner) = m.get("reconcile")
        {
            return serde_yaml_ng::from_value(inner.clone());
        }
        serde_yaml_ng::from_value(value)
    }

    /// Problems that make the config unusable, as readable sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.bucket_seconds <= 0 || 86_400 % self.bucket_seconds != 0 {
            p.push(format!(
                "reconcile.bucket_seconds must divide a day (60, 3600, 86400…), got {}",
                self.bucket_seconds
            ));
        }
        if self.gap_minutes <= 0 {
            p.push("reconcile.gap_minutes must be at least 1".to_owned());
        }
        for a in &self.accounts {
            if a.api_key_ids.is_empty() && a.project_ids.is_empty() {
                p.push(format!(
                    "reconcile.accounts: upstream `{}` lists no api_key_ids and no project_ids",
                    a.upstream
                ));
            }
        }
        p
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_is_valid() {
        let doc = include_str!("../../docs/reconciliation.md");
        let start = doc
            .find("```yaml\nreconcile:\n")
            .expect("example in the doc")
            + 8;
        let end = start + doc[start..].find("```").unwrap();
        #[derive(Deserialize)]
        struct Wrapper {
            reconcile: ReconcileConfig,
        }
        let w: Wrapper = serde_yaml_ng::from_str(&doc[start..end]).unwrap();
        assert!(
            w.reconcile.problems().is_empty(),
            "{:?}",
            w.reconcile.problems()
        );
        assert_eq!(w.reconcile.accounts[0].upstream, "openai");
        assert_eq!(w.reconcile.model_aliases["my-deployment-name"], "gpt-4o");
    }

    #[test]
    fn problems_are_reported() {
        let c = ReconcileConfig {
            bucket_seconds: 7,
            gap_minutes: 0,
            accounts: vec![Account {
                provider: "openai".into(),
                upstream: "u".into(),
                api_key_ids: vec![],
                project_ids: vec![],
            }],
            ..ReconcileConfig::default()
        };
        assert_eq!(c.problems().len(), 3);
        assert!(ReconcileConfig::from_yaml("bucket_secs: 60").is_err());
        // The section as written in tally's config file works too.
        let wrapped = ReconcileConfig::from_yaml("reconcile:\n  bucket_seconds: 60\n").unwrap();
        assert_eq!(wrapped.bucket_seconds, 60);
        assert!(ReconcileConfig::from_yaml("reconcile:\n  bucket_secs: 60\n").is_err());
    }

    #[test]
    fn tolerance_is_absolute_or_relative() {
        let t = Tolerance {
            tokens_abs: 5,
            tokens_rel: 0.01,
            ..Tolerance::default()
        };
        assert!(t.tokens_ok(-5, 0));
        assert!(!t.tokens_ok(6, 100));
        assert!(t.tokens_ok(6, 1000));
    }
}
