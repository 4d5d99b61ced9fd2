//! The Parquet files of a batch being materialized: rows arrive in chunks (the Arrow
//! batch of up to one row group of one table), are ordered by `occurred_at`, get their
//! `day` and stream into one open file per day partition; at commit time the files are
//! closed and their `Add` actions handed to the commit. Encoding runs in a task of its
//! own, beside the decoding of the next chunk. A file only ever holds rows in time
//! order: a chunk that would break it (its rows are older than the open file's newest of
//! that day) closes the open files and starts new ones. Must not commit anything: files
//! are invisible until the materializer's commit adds them with the log position (a crash
//! before leaves orphans for vacuum).

use std::collections::{BTreeMap, HashMap};

use deltalake::DeltaTable;
use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use deltalake::kernel::Add;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use indexmap::IndexMap;
use tally_events::arrow::{PARTITION_COLUMN, Table};
use tokio::task::JoinHandle;

use crate::convert::sorted_with_day;
use crate::error::{Cause, LedgerError};
use crate::tables::writer_properties;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The files written for one table since its last commit.
pub(crate) struct FileSet {
    table: Table,
    writer: RecordBatchWriter,
    /// The writer's (the table's) schema: chunks take it when their columns fit.
    schema: SchemaRef,
    /// Per day with an open file: the newest `occurred_at` in it.
    open: BTreeMap<i32, i64>,
    /// Files closed so far.
    adds: Vec<Add>,
    /// Files per day (closed or open).
    files_per_day: HashMap<i32, u64>,
    rows: u64,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSet")
            .field("table", &self.table)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// What a table's files amount to at commit time.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) adds: Vec<Add>,
    pub(crate) files_per_day: HashMap<i32, u64>,
    pub(crate) rows: u64,
}

fn convert(table: Table, e: impl Into<Cause>) -> LedgerError {
    LedgerError::Convert {
        table: table.name(),
        source: e.into(),
    }
}

fn write_err(table: Table, rows: u64, e: impl Into<Cause>) -> LedgerError {
    LedgerError::Commit {
        table: table.name(),
        rows: usize::try_from(rows).unwrap_or(usize::MAX),
        source: e.into(),
    }
}

impl FileSet {
    /// Files for `delta`, or `None` when the table's schema lacks a column of this build's
    /// (it must evolve first: the materializer then commits through the table writer).
    pub(crate) fn for_table(delta: &DeltaTable, table: Table) -> Result<Option<Self>, LedgerError> {
        let writer = RecordBatchWriter::for_table(delta)
            .map_err(|e| write_err(table, 0, e))?
            .with_writer_properties(writer_properties());
        let schema = writer.arrow_schema();
        let ours = table.table_schema();
        let fits = ours.fields().iter().all(|f| {
            schema
                .field_with_name(f.name())
                .is_ok_and(|t| t.data_type() == f.data_type())
        });
        if !fits {
            return Ok(None);
        }
        Ok(Some(Self {
            table,
            writer,
            schema,
            open: BTreeMap::new(),
            adds: Vec::new(),
            files_per_day: HashMap::new(),
            rows: 0,
        }))
    }

    /// Close every open file.
    async fn roll(&mut self) -> Result<(), LedgerError> {
        if self.open.is_empty() {
            return Ok(());
        }
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| write_err(self.table, self.rows, e))?;
        self.adds.extend(adds);
        self.open.clear();
        Ok(())
    }

    /// Write one chunk of rows (batches with the table's event schema).
    pub(crate) async fn write(&mut self, chunk: Vec<RecordBatch>) -> Result<(), LedgerError> {
        let table = self.table;
        // Rows already in time order across the chunk (the usual case) go batch by batch,
        // without a copy; otherwise the chunk is ordered as a whole.
        if in_time_order(&chunk) {
            for rows in chunk {
                self.write_ordered(sorted_with_day(table, rows)?).await?;
            }
            return Ok(());
        }
        let rows = concat_batches(&table.event_schema(), &chunk).map_err(|e| convert(table, e))?;
        self.write_ordered(sorted_with_day(table, rows)?).await
    }

    /// Write rows ordered by `occurred_at`, with their `day` column.
    async fn write_ordered(&mut self, batch: RecordBatch) -> Result<(), LedgerError> {
        let table = self.table;
        let batch =
            RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()).unwrap_or(batch);
        let at = batch
            .column_by_name("occurred_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| convert(table, "occurred_at is not a microsecond timestamp"))?
            .values()
            .clone();
        let day_of = |i: usize| i32::try_from(at[i].div_euclid(MICROS_PER_DAY)).unwrap_or(i32::MAX);
        let mut start = 0;
        while start < at.len() {
            let day = day_of(start);
            let mut end = start + 1;
            while end < at.len() && day_of(end) == day {
                end += 1;
            }
            if self
                .open
                .get(&day)
                .is_some_and(|&newest| at[start] < newest)
            {
                self.roll().await?;
            }
            // One day's rows: handed over with their partition value, so the writer
            // does not split (hash and copy) the slice by partition again.
            let slice = batch.slice(start, end - start);
            let day_value = slice
                .column_by_name(PARTITION_COLUMN)
                .and_then(|c| ScalarExt::from_array(c.as_ref(), 0))
                .ok_or_else(|| convert(table, "the day partition column is missing"))?;
            let partition = IndexMap::from([(PARTITION_COLUMN.to_owned(), day_value)]);
            self.writer
                .write_partition(slice, &partition, WriteMode::Default)
                .await
                .map_err(|e| write_err(table, self.rows, e))?;
            if self.open.insert(day, at[end - 1]).is_none() {
                *self.files_per_day.entry(day).or_insert(0) += 1;
            }
            self.rows += (end - start) as u64;
            start = end;
        }
        Ok(())
    }

    /// Close the files and hand over their `Add` actions.
    pub(crate) async fn finish(mut self) -> Result<Written, LedgerError> {
        self.roll().await?;
        Ok(Written {
            adds: self.adds,
            files_per_day: self.files_per_day,
            rows: self.rows,
        })
    }
}

/// Whether the rows of `chunk`, batch after batch, are in `occurred_at` order.
fn in_time_order(chunk: &[RecordBatch]) -> bool {
    let mut newest = i64::MIN;
    for rows in chunk {
        let Some(at) = rows
            .column_by_name("occurred_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        else {
            return false;
        };
        for &t in at.values().iter() {
            if t < newest {
                return false;
            }
            newest = t;
        }
    }
    true
}

/// Chunks queued for a table's encoder beyond the one it is writing: the decoding goes
/// on while a chunk encodes, instead of waiting for it.
const QUEUED_CHUNKS: usize = 2;

/// A table's [`FileSet`] writing in a task of its own, fed chunks through a short queue.
#[derive(Debug)]
pub(crate) struct Slot {
    chunks: tokio::sync::mpsc::Sender<Vec<RecordBatch>>,
    task: JoinHandle<Result<Box<FileSet>, LedgerError>>,
}

impl Slot {
    pub(crate) fn start(mut files: Box<FileSet>) -> Self {
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<Vec<RecordBatch>>(QUEUED_CHUNKS);
        let task = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                files.write(chunk).await?;
            }
            Ok(files)
        });
        Self { chunks, task }
    }

    /// The file set once every chunk queued is written.
    pub(crate) async fn ready(self) -> Result<Box<FileSet>, LedgerError> {
        drop(self.chunks);
        self.task
            .await
            .map_err(|e| LedgerError::Runtime(e.to_string()))?
    }

    /// Queue `chunk` (waiting while the queue is full); the writer's error if it failed.
    pub(crate) async fn write(self, chunk: Vec<RecordBatch>) -> Result<Slot, LedgerError> {
        if self.chunks.send(chunk).await.is_ok() {
            return Ok(self);
        }
        // The writer stopped on an error: that error.
        match self.ready().await {
            Err(e) => Err(e),
            Ok(_) => Err(LedgerError::Runtime(
                "the table's file writer stopped".into(),
            )),
        }
    }
}
