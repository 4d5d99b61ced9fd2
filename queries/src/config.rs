//! Settings of the query layer (`queries:` in tally.yaml): limits per query and the
//! credentials of the SQL API. Owns defaults and validation; must not read files or the
//! environment (the binary does that) nor know about HTTP.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default row cap of the HTTP SQL API.
pub const DEFAULT_MAX_ROWS: usize = 100_000;
/// Default time budget of one query, milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default memory budget of one query, bytes (512 MiB).
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 512 * 1024 * 1024;

/// Settings of the query layer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Most rows one HTTP SQL response carries; more are cut off and the response says
    /// so (`truncated`). Library callers choose their own cap.
    pub max_rows: usize,
    /// Time budget of one query (planning and execution), milliseconds.
    pub timeout_ms: u64,
    /// Memory budget of one query, bytes (a DataFusion memory pool per query).
    pub memory_limit_bytes: usize,
    /// Parallelism of one query; 0 means the number of CPU cores.
    pub target_partitions: usize,
    /// `sha256:<hex>` hashes of bearer tokens that see every tenant's rows.
    pub admin_tokens: Vec<String>,
    /// `sha256:<hex>` hash of a bearer token → the tenant whose rows it sees.
    pub tenant_tokens: BTreeMap<String, String>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_ROWS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            target_partitions: 0,
            admin_tokens: Vec::new(),
            tenant_tokens: BTreeMap::new(),
        }
    }
}

impl QueryConfig {
    /// Every problem of this configuration, as sentences a person can act on. Empty when
    /// the configuration is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_rows == 0 {
            problems.push("queries.max_rows: must be at least 1".to_owned());
        }
        if self.timeout_ms == 0 {
            problems.push("queries.timeout_ms: must be at least 1".to_owned());
        }
        if self.memory_limit_bytes < 1024 * 1024 {
            problems
                .push("queries.memory_limit_bytes: must be at least 1048576 (1 MiB)".to_owned());
        }
        for (i, h) in self.admin_tokens.iter().enumerate() {
            if parse_token_hash(h).is_none() {
                problems.push(format!(
                    "queries.admin_tokens[{i}]: must be `sha256:<64 hex digits>`; make one with `tally keys hash <token>`"
                ));
            }
        }
        for (h, tenant) in &self.tenant_tokens {
            if parse_token_hash(h).is_none() {
                problems.push(format!(
                    "queries.tenant_tokens (tenant {tenant}): key must be `sha256:<64 hex digits>`; make one with `tally keys hash <token>`"
                ));
            }
            if tenant.is_empty() {
                problems.push(format!(
                    "queries.tenant_tokens.{h}: tenant must not be empty"
                ));
            }
        }
        problems
    }
}

/// `sha256:<hex>` of a token secret: the form stored in `admin_tokens`/`tenant_tokens`
/// (the same as gateway key hashes).
pub fn hash_token(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Parse `sha256:<64 hex>` into the digest.
pub(crate) fn parse_token_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    hex::decode(hex_part).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = QueryConfig::default();
        assert!(c.problems().is_empty());
        assert_eq!(c.max_rows, 100_000);
        assert_eq!(c.timeout_ms, 30_000);
        assert_eq!(c.memory_limit_bytes, 536_870_912);
    }

    #[test]
    fn bad_hashes_are_reported() {
        let mut c = QueryConfig::default();
        c.admin_tokens.push("plaintext".into());
        c.tenant_tokens.insert(hash_token("t"), "acme".into());
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("admin_tokens[0]"));
    }

    #[test]
    fn yaml_style_keys_deserialize() {
        let c: QueryConfig =
            serde_json::from_str(r#"{"max_rows": 5, "tenant_tokens": {"sha256:00": "acme"}}"#)
                .unwrap_or_default();
        assert_eq!(c.max_rows, 5);
        assert_eq!(c.tenant_tokens.len(), 1);
    }
}
