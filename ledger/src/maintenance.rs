//! Table upkeep: compaction of small files (`optimize`), Delta checkpoints (with cleanup
//! of expired log entries), and `vacuum` of files no longer referenced. Owns when each is
//! due; must not change table contents (row sets are identical before and after) and
//! must not write data the materializer has not committed.

use std::collections::HashMap;

use deltalake::DeltaTable;
use deltalake::checkpoints;
use deltalake::operations::vacuum::VacuumMode;
use serde::{Deserialize, Serialize};
use tally_events::arrow::Table;

use crate::config::LedgerConfig;
use crate::error::LedgerError;
use crate::tables::writer_properties;

/// What a compaction of one table did.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OptimizeSummary {
    /// Table name.
    pub table: String,
    /// Small files rewritten (removed from the current version).
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
    /// Partitions (days) that had files compacted.
    pub partitions_optimized: u64,
}

/// What a vacuum of one table did.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct VacuumSummary {
    /// Table name.
    pub table: String,
    /// Files deleted from storage.
    pub files_deleted: u64,
}

/// Compact the small files of every partition of `delta` (bin-packing to Delta's target
/// file size; no Z-order). Returns the new table state.
pub(crate) async fn optimize(
    delta: DeltaTable,
    table: Table,
) -> Result<(DeltaTable, OptimizeSummary), LedgerError> {
    let (delta, metrics) = delta
        .optimize()
        .with_writer_properties(writer_properties())
        .with_max_concurrent_tasks(2)
        .await
        .map_err(|e| LedgerError::maintenance("optimize", table.name(), e))?;
    Ok((
        delta,
        OptimizeSummary {
            table: table.name().to_owned(),
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            partitions_optimized: metrics.partitions_optimized,
        },
    ))
}

/// Delete files not referenced by the current version and older than `retention`,
/// including orphans of commits that never happened. Delta's minimum retention
/// (`delta.deletedFileRetentionDuration`, 7 days by default) is enforced.
pub(crate) async fn vacuum(
    delta: DeltaTable,
    table: Table,
    retention: std::time::Duration,
) -> Result<(DeltaTable, VacuumSummary), LedgerError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let (delta, metrics) = delta
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(true)
        .with_mode(VacuumMode::Full)
        .await
        .map_err(|e| LedgerError::maintenance("vacuum", table.name(), e))?;
    Ok((
        delta,
        VacuumSummary {
            table: table.name().to_owned(),
            files_deleted: metrics.files_deleted.len() as u64,
        },
    ))
}

/// Write a Delta checkpoint of the current version, then delete log entries older than
/// the table's `delta.logRetentionDuration` (30 days by default) that it makes obsolete.
pub(crate) async fn checkpoint(delta: &DeltaTable, table: Table) -> Result<(), LedgerError> {
    checkpoints::create_checkpoint(delta, None)
        .await
        .map_err(|e| LedgerError::maintenance("checkpoint", table.name(), e))?;
    if let Err(e) = checkpoints::cleanup_metadata(delta, None).await {
        tracing::warn!(table = table.name(), error = %e, "cleaning up expired Delta log entries");
    }
    Ok(())
}

/// Per table bookkeeping of what is due.
#[derive(Debug, Default)]
pub(crate) struct Due {
    pub(crate) commits_since_checkpoint: u64,
    pub(crate) commits_since_optimize: u64,
    /// Files written by the ledger per day (days since the epoch) since the last compaction.
    pub(crate) new_files_per_day: HashMap<i32, u64>,
}

impl Due {
    pub(crate) fn checkpoint_due(&self, config: &LedgerConfig) -> bool {
        config.checkpoint_interval > 0
            && self.commits_since_checkpoint >= config.checkpoint_interval
    }

    pub(crate) fn optimize_due(&self, config: &LedgerConfig) -> bool {
        (config.optimize_every_commits > 0
            && self.commits_since_optimize >= config.optimize_every_commits)
            || (config.optimize_max_small_files > 0
                && self
                    .new_files_per_day
                    .values()
                    .any(|&n| n > config.optimize_max_small_files))
    }

    pub(crate) fn optimized(&mut self) {
        self.commits_since_optimize = 0;
        self.new_files_per_day.clear();
    }
}
