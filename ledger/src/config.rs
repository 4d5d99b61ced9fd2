//! The ledger's settings (`ledger:` in tally.yaml): batching, dedupe horizon, maintenance
//! cadence and where the tables live. Owns defaults and validation; must not open
//! storage or the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LedgerError;

/// Smallest accepted `dedupe_horizon_hours`: producers may retry (or replay a spool) for
/// up to two days, and a duplicate must still be recognised then.
pub const MIN_DEDUPE_HORIZON_HOURS: u64 = 48;

/// Settings of the ledger. Every field has a default; unknown keys are rejected.
/// (`Debug` shows the names of `storage_options`, never their values: they may be
/// credentials.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Name of the event source this ledger consumes. The Delta application transaction
    /// id of every commit is `tally-ledger/<source_name>`.
    pub source_name: String,
    /// Root of the tables: a local path or a URI (`file:///…`, `s3://bucket/prefix`).
    /// Default: `<data-dir>/tables` (see [`LedgerConfig::tables_root`]).
    pub tables_uri: Option<String>,
    /// Options of the object store (`endpoint`, `region`, `allow_http`,
    /// `access_key_id`, …); credentials also come from the usual `AWS_*` variables.
    pub storage_options: BTreeMap<String, String>,
    /// The commit timer: a batch is committed once its first record was read this long
    /// ago (milliseconds). Each Delta commit costs a write to the table's log, so commits
    /// are paced by time, not by traffic; queries see newer events from the log tail,
    /// not from more frequent commits. Rows stream into Parquet files while the batch
    /// fills, so a long batch does not cost memory.
    pub batch_max_age_ms: u64,
    /// A batch is committed earlier once it holds this many log records (a bound on the
    /// work replayed after a crash).
    pub batch_max_events: usize,
    /// A batch is committed earlier once it holds this many payload bytes.
    pub batch_max_bytes: usize,
    /// Event ids are remembered this long (by the time in their UUIDv7) to drop
    /// duplicates; at least 48.
    pub dedupe_horizon_hours: u64,
    /// A Delta checkpoint is written every this many commits to a table (0: never).
    pub checkpoint_interval: u64,
    /// Compact a table in the background after this many commits (0: never).
    pub optimize_every_commits: u64,
    /// …or as soon as one of its day partitions has more than this many files written by
    /// the ledger since the last compaction (0: never).
    pub optimize_max_small_files: u64,
    /// Files no longer in a table (compacted away, or orphaned by a crash) are deleted
    /// when older than this, in hours (Delta's default minimum: 168).
    pub vacuum_retention_hours: u64,
    /// Run `vacuum` in the background at most this often, in hours (0: never).
    pub vacuum_every_hours: u64,
    /// A table that received no events still records the consumer position (a commit
    /// with no files) when its last commit is this old, in seconds, so restarts do not
    /// re-read and the log can drop old segments.
    pub idle_commit_secs: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            source_name: "local".into(),
            tables_uri: None,
            storage_options: BTreeMap::new(),
            batch_max_age_ms: 1_000,
            batch_max_events: 2_000_000,
            batch_max_bytes: 1024 * 1024 * 1024,
            dedupe_horizon_hours: 72,
            checkpoint_interval: 10,
            optimize_every_commits: 200,
            optimize_max_small_files: 32,
            vacuum_retention_hours: 168,
            vacuum_every_hours: 24,
            idle_commit_secs: 30,
        }
    }
}

impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("source_name", &self.source_name)
            .field("tables_uri", &self.tables_uri)
            .field(
                "storage_options",
                &self.storage_options.keys().collect::<Vec<_>>(),
            )
            .field("batch_max_age_ms", &self.batch_max_age_ms)
            .field("batch_max_events", &self.batch_max_events)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("dedupe_horizon_hours", &self.dedupe_horizon_hours)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("optimize_every_commits", &self.optimize_every_commits)
            .field("optimize_max_small_files", &self.optimize_max_small_files)
            .field("vacuum_retention_hours", &self.vacuum_retention_hours)
            .field("vacuum_every_hours", &self.vacuum_every_hours)
            .field("idle_commit_secs", &self.idle_commit_secs)
            .finish()
    }
}

impl LedgerConfig {
    /// Check the values; the error says which key to fix.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |key: &str, why: String| {
            Err(LedgerError::Config {
                key: key.to_owned(),
                detail: why,
            })
        };
        if self.source_name.is_empty()
            || !self
                .source_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                "source_name",
                format!(
                    "`{}` must be non-empty and use only letters, digits, `-`, `_` and `.`",
                    self.source_name
                ),
            );
        }
        if self.batch_max_events == 0 {
            return bad("batch_max_events", "must be at least 1".into());
        }
        if self.batch_max_bytes == 0 {
            return bad("batch_max_bytes", "must be at least 1".into());
        }
        if self.dedupe_horizon_hours < MIN_DEDUPE_HORIZON_HOURS {
            return bad(
                "dedupe_horizon_hours",
                format!(
                    "{} is below the minimum of {MIN_DEDUPE_HORIZON_HOURS}",
                    self.dedupe_horizon_hours
                ),
            );
        }
        if self.dedupe_horizon_hours > 24 * 365 {
            return bad(
                "dedupe_horizon_hours",
                "must be at most 8760 (a year)".into(),
            );
        }
        if self.idle_commit_secs == 0 {
            return bad("idle_commit_secs", "must be at least 1".into());
        }
        Ok(())
    }

    /// The tables root to use: `tables_uri` if set, else `<data_dir>/tables`.
    pub fn tables_root(&self, data_dir: &Path) -> String {
        match &self.tables_uri {
            Some(uri) => uri.clone(),
            None => data_dir.join("tables").to_string_lossy().into_owned(),
        }
    }

    pub(crate) fn batch_max_age(&self) -> Duration {
        Duration::from_millis(self.batch_max_age_ms)
    }

    pub(crate) fn idle_commit(&self) -> Duration {
        Duration::from_secs(self.idle_commit_secs)
    }

    pub(crate) fn vacuum_retention(&self) -> Duration {
        Duration::from_secs(self.vacuum_retention_hours.saturating_mul(3600))
    }

    pub(crate) fn dedupe_horizon(&self) -> Duration {
        Duration::from_secs(self.dedupe_horizon_hours.saturating_mul(3600))
    }
}
