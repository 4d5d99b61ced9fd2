//! tally's ledger: materializes the append-only event log into three Delta Lake tables of
//! Parquet files (`usage/`, `decisions/`, `corrections/` under a tables root on the local
//! filesystem or any S3-compatible store), exactly once, and keeps them healthy
//! (compaction, checkpoints, vacuum). Must not change the table layout contract
//! (`tally_events::arrow::Table::table_schema()`, partitioned by `day`), and must not
//! interpret events beyond decoding them.
//!
//! # Exactly once
//!
//! Every commit to a table carries a Delta application transaction (`txn` action) with
//! `appId = tally-ledger/<source_name>` and `version` = the event-log position right
//! after the last record of the batch, encoded as `(segment << 40) | offset`. The rows
//! and that position become visible in one atomic Delta commit, or not at all. On start
//! the ledger reads each table's recorded position and resumes reading the log from the
//! lowest; while replaying, a table skips every record before its own position. So a
//! crash after Parquet files were written but before the commit (the files are orphans,
//! never read, later vacuumed), between the commits of two tables, or after committing
//! but before acknowledging the log, neither loses nor duplicates an event. The log is
//! acknowledged (`EventLog::checkpoint`) only up to the lowest position all three tables
//! recorded. Independently, event ids committed within `dedupe_horizon_hours` (72 by
//! default, by the time in the UUIDv7) are remembered — rebuilt from the tables on start,
//! and added only after the commit that wrote them succeeded — so an event appended to
//! the log twice is stored once. One ledger per tables root and source: a second one
//! would be refused by Delta's conflict check on the shared transaction id.

mod config;
mod convert;
mod dedupe;
mod error;
mod files;
mod maintenance;
mod materializer;
mod position;
mod progress;
mod status;
mod storage;
mod tables;

#[cfg(test)]
mod tests;

pub use config::{LedgerConfig, MIN_DEDUPE_HORIZON_HOURS};
pub use error::{Cause, LedgerError};
pub use maintenance::{OptimizeSummary, VacuumSummary};
pub use materializer::{Ledger, LedgerHandle, StepSummary};
pub use position::{app_id, txn_position, txn_version};
pub use progress::{Progress, ProgressUnit};
pub use status::{LedgerCounters, LedgerStatus, TableStatus, UndecodableRecord, ledger_status};
pub use tables::writer_properties as parquet_writer_properties;
