//! Simulator configuration (`SimConfig`): plain data with defaults, deserializable from
//! YAML/JSON; it must not hold runtime state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reports::ReportsConfig;

/// How the simulator behaves. Every field has a default, so `{}` is a valid config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Total latency of a non-streaming response, in milliseconds.
    pub latency_ms: u64,
    /// Delay before the first streamed content chunk, in milliseconds.
    pub ttft_ms: u64,
    /// Delay between streamed content chunks, in milliseconds.
    pub inter_chunk_ms: u64,
    /// Share of requests (0.0–1.0) answered with a server error (500, 503 or 529 in the
    /// provider's format). Decided deterministically from the request hash.
    pub error_rate: f64,
    /// Share of requests (0.0–1.0) answered with 429 and `retry-after`. Deterministic.
    pub rate_limit_rate: f64,
    /// Seed mixed into every deterministic decision (output text, faults).
    pub seed: u64,
    /// Output tokens per streamed content chunk (at least 1).
    pub chunk_tokens: u32,
    /// Value of the `retry-after` header on 429 responses, in seconds.
    pub retry_after_secs: u64,
    /// Answer 404 in the provider's format for models that are neither a known alias,
    /// a known snapshot nor listed in `model_aliases`. Off by default: unknown models are
    /// served as-is.
    pub reject_unknown_models: bool,
    /// Extra alias → served snapshot mappings, consulted before the built-in table.
    pub model_aliases: BTreeMap<String, String>,
    /// Maximum number of prompt-prefix hashes remembered for prompt caching.
    pub cache_capacity: usize,
    /// Maximum number of served records kept in memory (oldest dropped first).
    pub served_capacity: usize,
    /// Usage and cost report endpoints: identity maps and injected discrepancies.
    pub reports: ReportsConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            ttft_ms: 0,
            inter_chunk_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            seed: 0,
            chunk_tokens: 4,
            retry_after_secs: 1,
            reject_unknown_models: false,
            model_aliases: BTreeMap::new(),
            cache_capacity: 100_000,
            served_capacity: 1_000_000,
            reports: ReportsConfig::default(),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A rate is not within 0.0–1.0.
    #[error("simulator config: {field} must be between 0.0 and 1.0, got {value}")]
    RateOutOfRange {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count that must be positive is zero.
    #[error("simulator config: {field} must be at least 1")]
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// A value that does not parse or is out of range.
    #[error("simulator config: {field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl SimConfig {
    /// Checks value ranges; `Simulator::new` clamps instead of failing, so call this
    /// where a user-supplied config should be rejected with a clear message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::RateOutOfRange { field, value });
            }
        }
        if self.chunk_tokens == 0 {
            return Err(ConfigError::Zero {
                field: "chunk_tokens",
            });
        }
        self.reports.validate()
    }

    /// The same config with every value forced into range.
    pub(crate) fn clamped(mut self) -> Self {
        let clamp = |v: f64| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        self.error_rate = clamp(self.error_rate);
        self.rate_limit_rate = clamp(self.rate_limit_rate);
        self.chunk_tokens = self.chunk_tokens.max(1);
        self.cache_capacity = self.cache_capacity.max(1);
        self.served_capacity = self.served_capacity.max(1);
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_is_default() {
        let cfg: SimConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, SimConfig::default());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_and_clamps() {
        let cfg = SimConfig {
            error_rate: 1.5,
            ..SimConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RateOutOfRange {
                field: "error_rate",
                ..
            })
        ));
        assert_eq!(cfg.clamped().error_rate, 1.0);
    }

    #[test]
    fn unknown_fields_rejected() {
        assert!(serde_json::from_str::<SimConfig>(r#"{"latncy_ms": 3}"#).is_err());
    }
}
