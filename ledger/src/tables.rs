//! The Delta tables as the ledger sees them: creating a table with its contract schema
//! (`Table::table_schema()`, partitioned by `day`), appending an Arrow batch together
//! with the consumer position in one commit, recording a position alone, reading the
//! recorded position back, Parquet writer settings and file statistics. Must not decide
//! what to write or when (that is the materializer's job).

use chrono::Utc;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, TimestampMicrosecondType};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures_util::StreamExt;
use tally_events::arrow::{PARTITION_COLUMN, Table};
use tally_events::log::Position;
use tally_events::{EventId, Timestamp};

use crate::error::{Cause, LedgerError};
use crate::position::{txn_position, txn_version};
use crate::storage::TablesRoot;

/// Rows per Parquet row group: big enough for good compression and few footers, small
/// enough that a reader of one row group does not need hundreds of MB.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// zstd level: 3 is zstd's default, a good speed/size balance for append-heavy data.
const ZSTD_LEVEL: i32 = 3;
/// Columns unique per row: dictionary encoding would only be tried and abandoned.
const UNIQUE_COLUMNS: [&str; 3] = ["event_id", "request_id", "upstream_request_id"];

/// Parquet settings of every file the ledger writes (appends and compactions).
pub fn writer_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default(),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // `tally why <request-id>` looks rows up by request id.
        .set_column_bloom_filter_enabled(ColumnPath::from("request_id"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("request_id"), 0.01);
    for col in UNIQUE_COLUMNS {
        b = b.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    b.build()
}

fn cause(e: impl Into<Cause>) -> Cause {
    e.into()
}

/// Open the table, creating it (empty, with the contract schema) if it does not exist.
pub(crate) async fn open_or_create(
    root: &TablesRoot,
    table: Table,
) -> Result<DeltaTable, LedgerError> {
    let name = table.name();
    let mut delta = root
        .builder(table)?
        .build()
        .map_err(|e| LedgerError::storage(name, "opening the table", e))?;
    match delta.load().await {
        Ok(()) => return Ok(delta),
        Err(DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(LedgerError::storage(name, "loading the table", e)),
    }
    let schema: StructType = table
        .table_schema()
        .as_ref()
        .try_into_kernel()
        .map_err(|e| LedgerError::Convert {
            table: name,
            source: cause(e),
        })?;
    let created = delta
        .create()
        .with_table_name(name)
        .with_comment(format!(
            "tally {name} events, materialized from the event log by tally-ledger"
        ))
        .with_columns(schema.fields().cloned())
        .with_partition_columns([PARTITION_COLUMN])
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // Lost a race with another creator: the table exists now.
        Err(first) => {
            let mut again = root
                .builder(table)?
                .build()
                .map_err(|e| LedgerError::storage(name, "opening the table", e))?;
            again
                .load()
                .await
                .map_err(|_| LedgerError::storage(name, "creating the table", first))?;
            Ok(again)
        }
    }
}

/// Open the table if it exists (never creates anything).
pub(crate) async fn open_existing(
    root: &TablesRoot,
    table: Table,
) -> Result<Option<DeltaTable>, LedgerError> {
    let name = table.name();
    let url = root.table_url(table)?;
    if url.scheme() == "file"
        && url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").is_dir())
    {
        return Ok(None);
    }
    let mut delta = root
        .builder(table)?
        .build()
        .map_err(|e| LedgerError::storage(name, "opening the table", e))?;
    match delta.load().await {
        Ok(()) => Ok(Some(delta)),
        Err(DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_)) => Ok(None),
        Err(e) => Err(LedgerError::storage(name, "loading the table", e)),
    }
}

/// The consumer position recorded in the table for `app_id` (`None`: never committed).
pub(crate) async fn committed_position(
    delta: &DeltaTable,
    table: Table,
    app_id: &str,
) -> Result<Option<Position>, LedgerError> {
    let state = delta
        .snapshot()
        .map_err(|e| LedgerError::storage(table.name(), "reading the table state", e))?;
    let version = state
        .transaction_version(delta.log_store().as_ref(), app_id)
        .await
        .map_err(|e| LedgerError::storage(table.name(), "reading the transaction version", e))?;
    match version {
        None => Ok(None),
        Some(v) => txn_position(v)
            .map(Some)
            .ok_or_else(|| LedgerError::BadTxnVersion {
                table: table.name(),
                app_id: app_id.to_owned(),
                version: v,
            }),
    }
}

/// The error of a failed commit: refused because a commit of the same app id (another
/// ledger of this source) is newer than the state it was built on, or another failure.
fn commit_error(table: Table, rows: u64, app_id: &str, e: DeltaTableError) -> LedgerError {
    match e {
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
        } => LedgerError::SourceMoved {
            table: table.name(),
            app_id: app_id.to_owned(),
        },
        e => LedgerError::Commit {
            table: table.name(),
            rows: usize::try_from(rows).unwrap_or(usize::MAX),
            source: cause(e),
        },
    }
}

fn commit_properties(app_id: &str, end: Position) -> Result<CommitProperties, LedgerError> {
    let txn = Transaction::new_with_last_update(
        app_id,
        txn_version(end)?,
        Some(Utc::now().timestamp_millis()),
    );
    Ok(CommitProperties::default()
        .with_application_transaction(txn)
        // Checkpoints are the ledger's decision (`checkpoint_interval`).
        .with_create_checkpoint(false)
        .with_metadata([(
            "tally.log_position".to_owned(),
            serde_json::Value::String(end.to_string()),
        )]))
}

/// Append `batch` (already with the `day` column) and record `end` as the consumer
/// position, in one Delta commit: either both are visible or neither.
pub(crate) async fn append(
    delta: DeltaTable,
    table: Table,
    batch: RecordBatch,
    app_id: &str,
    end: Position,
) -> Result<DeltaTable, LedgerError> {
    let rows = batch.num_rows();
    delta
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_partition_columns([PARTITION_COLUMN])
        .with_writer_properties(writer_properties())
        .with_commit_properties(commit_properties(app_id, end)?)
        .await
        .map_err(|e| commit_error(table, rows as u64, app_id, e))
}

/// Add the files written for the rows up to `end` (see `files`) and record `end` as the
/// consumer position, in one Delta commit: either both are visible or neither.
pub(crate) async fn commit_files(
    mut delta: DeltaTable,
    table: Table,
    adds: Vec<Add>,
    rows: u64,
    app_id: &str,
    end: Position,
) -> Result<DeltaTable, LedgerError> {
    let err = |e: DeltaTableError| commit_error(table, rows, app_id, e);
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec![PARTITION_COLUMN.to_owned()]),
        predicate: None,
    };
    let commit = {
        let state = delta.snapshot().map_err(err)?;
        CommitBuilder::from(commit_properties(app_id, end)?)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(Some(state.snapshot()), delta.log_store(), operation)
            .await
            .map_err(err)?
    };
    delta.state = Some(commit.snapshot);
    Ok(delta)
}

/// Record `end` as the consumer position without adding data (the table had no events
/// in the records up to `end`).
pub(crate) async fn record_position(
    mut delta: DeltaTable,
    table: Table,
    app_id: &str,
    end: Position,
) -> Result<DeltaTable, LedgerError> {
    let err = |e: DeltaTableError| commit_error(table, 0, app_id, e);
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: app_id.to_owned(),
        epoch_id: txn_version(end)?,
    };
    let commit = {
        let state = delta.snapshot().map_err(err)?;
        CommitBuilder::from(commit_properties(app_id, end)?)
            .with_actions(Vec::<Action>::new())
            .build(Some(state.snapshot()), delta.log_store(), operation)
            .await
            .map_err(err)?
    };
    delta.state = Some(commit.snapshot);
    Ok(delta)
}

/// Files, bytes and rows (from file statistics; `None` if a file has none) of a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileStats {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    pub(crate) rows: Option<u64>,
}

pub(crate) fn file_stats(delta: &DeltaTable) -> FileStats {
    let Ok(state) = delta.snapshot() else {
        return FileStats::default();
    };
    let mut stats = FileStats {
        rows: Some(0),
        ..FileStats::default()
    };
    let Ok(files) = state.snapshot().try_log_data() else {
        return FileStats::default();
    };
    for file in files.iter() {
        stats.files += 1;
        stats.bytes += u64::try_from(file.size()).unwrap_or(0);
        stats.rows = match (stats.rows, file.num_records()) {
            (Some(r), Some(n)) => Some(r + n as u64),
            _ => None,
        };
    }
    stats
}

/// Files per `day` partition value (as written in the log, `YYYY-MM-DD`).
#[cfg(test)]
pub(crate) fn files_per_day(delta: &DeltaTable) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    if let Ok(files) = delta.snapshot().and_then(|s| s.snapshot().try_log_data()) {
        for file in files.iter() {
            let day = file
                .partition_values_map()
                .remove(PARTITION_COLUMN)
                .flatten()
                .unwrap_or_default();
            *out.entry(day).or_insert(0) += 1;
        }
    }
    out
}

/// Version and commit time (Unix ms) of the loaded state.
pub(crate) fn version_info(delta: &DeltaTable) -> (Option<u64>, Option<i64>) {
    let Ok(state) = delta.snapshot() else {
        return (None, None);
    };
    let version = state.version();
    (Some(version), state.version_timestamp(version))
}

/// `(event_id, occurred_at)` of every row whose `day` is on or after `since_day`
/// (`YYYY-MM-DD`): the ids the dedupe set is rebuilt from.
pub(crate) async fn event_ids_since(
    delta: &DeltaTable,
    table: Table,
    since_day: &str,
) -> Result<Vec<(EventId, Timestamp)>, LedgerError> {
    let name = table.name();
    let read = |e: Cause| LedgerError::read(name, "rebuilding the dedupe set", e);
    let ctx = SessionContext::new();
    delta
        .update_datafusion_session(&ctx.state())
        .map_err(|e| read(cause(e)))?;
    let provider = delta.table_provider().await.map_err(|e| read(cause(e)))?;
    ctx.register_table("t", provider)
        .map_err(|e| read(cause(e)))?;
    let df = ctx
        .sql(&format!(
            "SELECT event_id, occurred_at FROM t WHERE {PARTITION_COLUMN} >= DATE '{since_day}'"
        ))
        .await
        .map_err(|e| read(cause(e)))?;
    let mut stream = df.execute_stream().await.map_err(|e| read(cause(e)))?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| read(cause(e)))?;
        let ids = cast(batch.column(0), &DataType::Utf8).map_err(|e| read(cause(e)))?;
        let ids = ids.as_string::<i32>();
        let at = batch
            .column(1)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| read("occurred_at is not a microsecond timestamp".into()))?;
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                continue;
            }
            match EventId::parse(ids.value(i)) {
                Ok(id) => out.push((id, Timestamp::from_micros(at.value(i)))),
                Err(e) => tracing::warn!(
                    table = name,
                    event_id = ids.value(i),
                    error = %e,
                    "a row's event_id is not a UUID; it is ignored for dedupe"
                ),
            }
        }
    }
    Ok(out)
}
