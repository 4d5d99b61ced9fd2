//! The materializer: tails the event log from the committed positions, batches records,
//! decodes them (skipping, counting and reporting undecodable ones), drops duplicates,
//! and commits each table's rows together with the batch's end position; runs the loop,
//! backfills and background maintenance. Owns the exactly-once protocol (see the crate
//! docs); must not acknowledge (checkpoint) the log past what every table committed, and
//! must not remember an event id before the commit that wrote it succeeded.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tally_events::arrow::{RowsBuilder, Table};
use tally_events::log::{EventLog, Position, Record, Span};
use tally_events::{Decoded, Timestamp, WireDecoder, WireEvent};
use tokio::task::JoinHandle;

use crate::config::LedgerConfig;
use crate::convert::{sorted_with_day, table_index};
use crate::dedupe::{BatchIds, DedupeKey, DedupeSet, dedupe_key};
use crate::error::LedgerError;
use crate::files::{FileSet, Slot, Written};
use crate::maintenance::{self, Due, OptimizeSummary, VacuumSummary};
use crate::position::app_id;
use crate::progress::{Progress, ProgressUnit};
use crate::status::{
    LedgerCounters, LedgerStatus, UndecodableRecord, apply_lag, positions_map, scan_lag,
    table_status,
};
use crate::storage::TablesRoot;
use crate::tables;

/// Records asked from the log per read.
const READ_CHUNK: usize = 2048;
/// Rows of a table handed to its file writer at a time (one Parquet row group).
const CHUNK_ROWS: usize = 128 * 1024;
/// Reads being decoded at a time (in blocking tasks, beside the file writers).
const DECODERS: usize = 2;
/// Reads waiting for their decoding, ahead of it.
const READ_AHEAD: usize = 2;
/// Undecodable records kept for the status report.
const RECENT_UNDECODABLE: usize = 100;
/// The dedupe set is pruned at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Longest wait between retries of a failing batch in [`Ledger::run`].
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long [`Ledger::run`] waits for background maintenance at shutdown.
const MAINTENANCE_SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// What one [`Ledger::step`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct StepSummary {
    /// Log records consumed by this batch.
    pub records: u64,
    /// Rows committed to `usage`, `decisions`, `corrections`.
    pub rows: [u64; 3],
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Records skipped as undecodable.
    pub undecodable: u64,
    /// Delta commits made (data and position-only).
    pub commits: u64,
    /// The position after the batch (where the next read starts).
    pub end: Position,
}

impl StepSummary {
    /// Rows committed to all tables.
    pub fn total_rows(&self) -> u64 {
        self.rows.iter().sum()
    }
}

/// State shared with [`LedgerHandle`]s.
#[derive(Debug, Default)]
struct SharedState {
    counters: LedgerCounters,
    undecodable: VecDeque<UndecodableRecord>,
    last_error: Option<String>,
    /// Per table: latest state, committed position and the position up to which every
    /// event of the table has been committed or found to be a duplicate.
    tables: Vec<(Option<DeltaTable>, Option<Position>, Position)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tables_uri", &self.tables_uri)
            .finish_non_exhaustive()
    }
}

struct Shared {
    tables_uri: String,
    app_id: String,
    log: Arc<dyn EventLog>,
    state: Mutex<SharedState>,
}

/// A cheap, cloneable view of a running [`Ledger`] (e.g. moved into [`Ledger::run`]):
/// committed positions and status, for the query layer and the CLI.
#[derive(Clone, Debug)]
pub struct LedgerHandle {
    shared: Arc<Shared>,
}

impl LedgerHandle {
    /// Per table, the position up to which its events are in the table (the log's start
    /// if nothing was committed): the query layer reads the log from there to add events
    /// not materialized yet. Rows with an `event_id` already in the table may occur in
    /// that tail (duplicates the ledger drops); dedupe by `event_id` when unioning.
    pub fn committed_positions(&self) -> HashMap<Table, Position> {
        let state = self.shared.state.lock();
        let mut positions = [None; 3];
        for (i, (_, committed, _)) in state.tables.iter().enumerate().take(3) {
            positions[i] = *committed;
        }
        positions_map(positions)
    }

    /// The error of the running ledger's latest attempt, if it failed (cheap: for
    /// readiness checks; [`LedgerHandle::status`] also scans the log for lag).
    pub fn last_error(&self) -> Option<String> {
        self.shared.state.lock().last_error.clone()
    }

    /// The status of the ledger (reads the uncommitted tail of the log to measure lag).
    pub async fn status(&self) -> Result<LedgerStatus, LedgerError> {
        let (mut tables, counters, undecodable, last_error, from) = {
            let state = self.shared.state.lock();
            let mut from = [Position::START; 3];
            let mut tables = Vec::new();
            for (i, table) in Table::ALL.into_iter().enumerate() {
                let (delta, committed, covered) =
                    state
                        .tables
                        .get(i)
                        .cloned()
                        .unwrap_or((None, None, Position::START));
                from[i] = covered;
                tables.push(table_status(table, delta.as_ref(), committed));
            }
            (
                tables,
                state.counters,
                state.undecodable.iter().cloned().collect(),
                state.last_error.clone(),
                from,
            )
        };
        let log = Arc::clone(&self.shared.log);
        let scan = tokio::task::spawn_blocking(move || scan_lag(log.as_ref(), from))
            .await
            .map_err(|e| LedgerError::Runtime(e.to_string()))??;
        apply_lag(&mut tables, Some(&scan));
        Ok(LedgerStatus {
            tables_uri: self.shared.tables_uri.clone(),
            app_id: self.shared.app_id.clone(),
            log_durable_end: Some(scan.durable_end),
            tables,
            counters: Some(counters),
            undecodable,
            last_error,
        })
    }
}

/// One table's materialization state.
struct TableState {
    table: Table,
    delta: DeltaTable,
    /// Position recorded in the table (`None`: never).
    committed: Option<Position>,
    /// Every event of this table before this position is committed (or a duplicate):
    /// records before it are skipped. At least `committed`.
    covered: Position,
    /// The position of this ledger's latest commit attempt (its outcome may be unknown):
    /// a recorded position that is neither this nor `committed` was written by another
    /// ledger of the same source.
    attempted: Option<Position>,
    last_commit: Instant,
    due: Due,
}

impl TableState {
    /// Whether the recorded position lags what the table is known to cover.
    fn position_behind(&self) -> bool {
        match self.committed {
            None => self.covered > Position::START,
            Some(c) => c < self.covered,
        }
    }
}

/// Records read but not committed yet.
#[derive(Default)]
struct Batch {
    /// Per table: rows not handed to the files yet, and how many.
    pending: [Vec<RecordBatch>; 3],
    pending_rows: [usize; 3],
    /// Per table: the files written so far.
    files: [Option<TableFiles>; 3],
    keys: [Vec<DedupeKey>; 3],
    seen: BatchIds,
    records: usize,
    bytes: usize,
    duplicates: u64,
    undecodable: u64,
    started: Option<Instant>,
}

/// Where a table's rows of the batch go.
enum TableFiles {
    /// Streamed into Parquet files as they come (see `files`).
    Streaming(Slot),
    /// Kept in memory and appended by the Delta writer at commit time: the table's schema
    /// lacks a column of this build's and evolves with that commit.
    Evolving(Vec<RecordBatch>),
}

/// A read being decoded.
type DecodeTask = JoinHandle<Result<DecodedRead, LedgerError>>;

/// Per table: the rows being built, their dedupe keys, and the first fresh row.
type TableRows = Option<(RowsBuilder, Vec<DedupeKey>, Option<usize>)>;

/// One read of records, decoded (in a blocking task).
#[derive(Default)]
struct DecodedRead {
    /// Per table: its rows (event schema, in log order), their dedupe keys, and the
    /// first row read for the first time (the rows before it were read before a failed
    /// commit).
    tables: [Option<(RecordBatch, Vec<DedupeKey>, usize)>; 3],
    /// Records read for the first time.
    fresh: u64,
    /// Records skipped because their table already covers them (first reads only).
    replay_skipped: u64,
    /// Undecodable records (first reads only).
    undecodable: Vec<UndecodableRecord>,
    /// Records dropped as copies of events committed before (first reads only).
    duplicates: u64,
}

/// Decode `records` into the rows of their tables, skipping records a table already
/// covers and events `committed` holds (copies of events committed before); records at
/// or after `fresh_from` are read for the first time.
fn decode_read(
    records: &[Record],
    covered: [Position; 3],
    fresh_from: Position,
    committed: &DedupeSet,
) -> Result<DecodedRead, LedgerError> {
    let mut out = DecodedRead::default();
    let mut rows: [TableRows; 3] = Default::default();
    let mut decoder = WireDecoder::default();
    for r in records {
        let fresh = r.position >= fresh_from;
        if fresh {
            out.fresh += 1;
        }
        let decoded = match decoder.decode(&r.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                if fresh {
                    tracing::error!(
                        position = %r.position,
                        code = e.code(),
                        error = %e,
                        "skipping an event-log record that cannot be decoded (counted in `tally ledger status`)"
                    );
                    out.undecodable.push(UndecodableRecord {
                        position: r.position,
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    });
                }
                continue;
            }
        };
        let i = table_index(decoded.event_type());
        if r.position < covered[i] {
            if fresh {
                out.replay_skipped += 1;
            }
            continue;
        }
        let key = dedupe_key(&decoded.event_id(), decoded.occurred_at());
        if committed.contains(&key) {
            if fresh {
                tracing::debug!(event_id = %uuid::Uuid::from_u128(key.1), "dropping a duplicate event");
                out.duplicates += 1;
            }
            continue;
        }
        let (builder, keys, first_fresh) =
            rows[i].get_or_insert_with(|| (RowsBuilder::new(Table::ALL[i]), Vec::new(), None));
        let appended = match decoded {
            Decoded::Wire(w) => builder.append(w),
            Decoded::Model(e) => builder.append(&WireEvent::from_event(e)),
        };
        appended.map_err(|e| LedgerError::Convert {
            table: Table::ALL[i].name(),
            source: e.into(),
        })?;
        if fresh && first_fresh.is_none() {
            *first_fresh = Some(keys.len());
        }
        keys.push(key);
    }
    for (i, slot) in rows.into_iter().enumerate() {
        if let Some((mut builder, keys, first_fresh)) = slot {
            let batch = builder.finish().map_err(|e| LedgerError::Convert {
                table: Table::ALL[i].name(),
                source: e.into(),
            })?;
            let first_fresh = first_fresh.unwrap_or(keys.len());
            out.tables[i] = Some((batch, keys, first_fresh));
        }
    }
    Ok(out)
}

/// The positions `(table, row)` of the tables' keys (each list ascending, as the log
/// usually holds them), merged into one ascending order: the batch's ids then grow at
/// their end (see [`BatchIds`]).
fn merged_order(keys: [&[DedupeKey]; 3]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut next = [0usize; 3];
    std::iter::from_fn(move || {
        let (i, _) = (0..3)
            .filter_map(|i| keys[i].get(next[i]).map(|k| (i, k)))
            .min_by_key(|&(_, k)| *k)?;
        next[i] += 1;
        Some((i, next[i] - 1))
    })
}

/// Reads of the log running ahead of decoding: one blocking task reads chunk after chunk
/// from `next` (up to `limit`) into a bounded channel, so reading overlaps the decoding
/// and the file writers instead of waiting for them. It stops at the end of the log
/// (after sending the empty read), at `limit`, after an error, or when dropped. Reads
/// past the end of a batch are cheap to throw away.
struct ReadAhead {
    /// Where the next chunk out of the channel starts.
    next: Position,
    limit: Option<Position>,
    rx: tokio::sync::mpsc::Receiver<Result<Vec<Record>, tally_events::log::LogError>>,
}

impl ReadAhead {
    fn start(
        log: Arc<dyn EventLog>,
        from: Position,
        limit: Option<Position>,
        chunk: usize,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut at = from;
            while limit.is_none_or(|l| at < l) {
                let read = log.read(at, chunk);
                let next = read.as_ref().ok().and_then(|r| r.last()).map(|r| r.next);
                if tx.blocking_send(read).is_err() {
                    break; // dropped
                }
                match next {
                    Some(next) => at = next,
                    None => break, // the end of the log, or an error
                }
            }
        });
        Self {
            next: from,
            limit,
            rx,
        }
    }

    /// The next chunk (empty at the end of the log or of `limit`).
    async fn read(&mut self) -> Result<Vec<Record>, LedgerError> {
        match self.rx.recv().await {
            Some(read) => read.map_err(LedgerError::from),
            None => Ok(Vec::new()),
        }
    }
}

/// Acknowledgements of the event log (`EventLog::checkpoint`, which may delete whole
/// segment files) run in the background, one at a time, so that a commit never waits for
/// the log to reclaim its files; a position asked for while one runs is taken after it
/// (only the highest).
#[derive(Default)]
struct Reclaim {
    running: Option<JoinHandle<()>>,
    next: Option<Position>,
}

impl Reclaim {
    /// Acknowledge the log up to `upto`: now, or once the acknowledgement running is done.
    fn request(&mut self, log: &Arc<dyn EventLog>, upto: Position) {
        self.next = Some(self.next.map_or(upto, |n| n.max(upto)));
        self.start(log);
    }

    fn start(&mut self, log: &Arc<dyn EventLog>) {
        if self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Some(upto) = self.next.take() {
            let log = Arc::clone(log);
            self.running = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = log.checkpoint(upto) {
                    tracing::warn!(error = %e, position = %upto, "acknowledging the event log (retention checkpoint); retried after the next commit");
                }
            }));
        }
    }

    /// Wait until every acknowledgement asked for is done.
    async fn settle(&mut self, log: &Arc<dyn EventLog>) {
        loop {
            if let Some(task) = self.running.take()
                && let Err(e) = task.await
            {
                tracing::warn!(error = %e, "acknowledging the event log");
            }
            if self.next.is_none() {
                return;
            }
            self.start(log);
        }
    }
}

/// Background maintenance in flight.
struct Maintenance {
    task: JoinHandle<Vec<Result<MaintenanceDone, LedgerError>>>,
}

enum MaintenanceDone {
    Optimized(usize, OptimizeSummary),
    Vacuumed(VacuumSummary),
}

/// Materializes an event log into the `usage`, `decisions` and `corrections` Delta
/// tables, exactly once. See the crate documentation for the protocol.
pub struct Ledger {
    config: LedgerConfig,
    root: TablesRoot,
    log: Arc<dyn EventLog>,
    app_id: String,
    tables: Vec<TableState>,
    /// Where the next read starts.
    read_pos: Position,
    /// Furthest position read in this process: records before it were counted already.
    max_seen: Position,
    batch: Batch,
    /// Ids committed within the horizon: shared with the decoders while a batch fills,
    /// changed only between batches.
    dedupe: Arc<DedupeSet>,
    last_prune: Instant,
    /// A commit failed: the tables must be re-read before anything else is written.
    needs_reload: bool,
    /// Reads from the log running ahead of the decoding.
    read_ahead: Option<ReadAhead>,
    /// The log's acknowledgement running in the background.
    reclaim: Reclaim,
    shared: Arc<Shared>,
    last_vacuum: Option<Instant>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("tables_uri", &self.root.uri().as_str())
            .field("app_id", &self.app_id)
            .field("read_pos", &self.read_pos)
            .finish_non_exhaustive()
    }
}

async fn read_log(
    log: &Arc<dyn EventLog>,
    from: Position,
    max: usize,
) -> Result<Vec<Record>, LedgerError> {
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || log.read(from, max))
        .await
        .map_err(|e| LedgerError::Runtime(e.to_string()))?
        .map_err(LedgerError::from)
}

/// The dedupe set to change between batches: the decoders of the last batch are done
/// with it (a decoder left running after a failure gets its own copy).
fn dedupe_mut(dedupe: &mut Arc<DedupeSet>) -> &mut DedupeSet {
    Arc::make_mut(dedupe)
}

/// The dedupe set rebuilt from the ids the tables hold within the horizon.
async fn load_dedupe(
    config: &LedgerConfig,
    states: &[TableState],
) -> Result<DedupeSet, LedgerError> {
    let mut dedupe = DedupeSet::new(config.dedupe_horizon());
    let now = Timestamp::now();
    let cutoff = dedupe.cutoff_ms(now);
    // One extra day: an id's time and its row's `occurred_at` may differ slightly.
    let since_day =
        Timestamp::from_micros(cutoff.saturating_sub(86_400_000).saturating_mul(1000)).utc_day();
    for s in states {
        let ids = tables::event_ids_since(&s.delta, s.table, &since_day).await?;
        dedupe.extend(
            ids.iter()
                .map(|(id, at)| dedupe_key(id, *at))
                .filter(|k| k.0 >= cutoff),
        );
    }
    Ok(dedupe)
}

impl Ledger {
    /// Open the ledger: create missing tables under `tables_root` (a path or URI), read
    /// each table's committed position, and rebuild the dedupe set from the ids committed
    /// within the horizon. Reading resumes from the lowest committed position.
    pub async fn open(
        config: LedgerConfig,
        tables_root: &str,
        log: Arc<dyn EventLog>,
    ) -> Result<Ledger, LedgerError> {
        config.validate()?;
        let root = TablesRoot::open(tables_root, config.storage_options.clone(), true)?;
        Self::open_root(config, root, log).await
    }

    pub(crate) async fn open_root(
        config: LedgerConfig,
        root: TablesRoot,
        log: Arc<dyn EventLog>,
    ) -> Result<Ledger, LedgerError> {
        let app_id = app_id(&config.source_name);
        let mut states = Vec::new();
        for table in Table::ALL {
            let delta = tables::open_or_create(&root, table).await?;
            let committed = tables::committed_position(&delta, table, &app_id).await?;
            states.push(TableState {
                table,
                delta,
                committed,
                covered: committed.unwrap_or(Position::START),
                attempted: None,
                last_commit: Instant::now(),
                due: Due::default(),
            });
        }
        let read_pos = states
            .iter()
            .map(|s| s.covered)
            .min()
            .unwrap_or(Position::START);

        let dedupe = load_dedupe(&config, &states).await?;
        tracing::info!(
            tables_uri = %root.uri(),
            app_id,
            resume_from = %read_pos,
            dedupe_ids = dedupe.len(),
            "ledger opened"
        );

        let shared = Arc::new(Shared {
            tables_uri: root.uri().to_string(),
            app_id: app_id.clone(),
            log: Arc::clone(&log),
            state: Mutex::new(SharedState::default()),
        });
        let ledger = Ledger {
            config,
            root,
            log,
            app_id,
            tables: states,
            read_pos,
            max_seen: Position::START,
            batch: Batch::default(),
            dedupe: Arc::new(dedupe),
            last_prune: Instant::now(),
            needs_reload: false,
            read_ahead: None,
            reclaim: Reclaim::default(),
            shared,
            last_vacuum: None,
        };
        ledger.publish();
        Ok(ledger)
    }

    /// A handle for status and committed positions that stays valid while [`Ledger::run`]
    /// owns the ledger.
    pub fn handle(&self) -> LedgerHandle {
        LedgerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Per table, the position up to which its events are committed (see
    /// [`LedgerHandle::committed_positions`]).
    pub fn committed_positions(&self) -> HashMap<Table, Position> {
        let mut positions = [None; 3];
        for (i, s) in self.tables.iter().enumerate().take(3) {
            positions[i] = s.committed;
        }
        positions_map(positions)
    }

    /// The status of the ledger (see [`LedgerHandle::status`]).
    pub async fn status(&self) -> Result<LedgerStatus, LedgerError> {
        self.handle().status().await
    }

    /// Read what the log has now (up to one batch) and commit it: one batch. Returns once
    /// the log is acknowledged up to what every table committed.
    pub async fn step(&mut self) -> Result<StepSummary, LedgerError> {
        self.fill(None).await?;
        let summary = self.flush(false).await;
        self.reclaim.settle(&self.log).await;
        summary
    }

    /// Materialize everything up to the log's durable end (as of the call), reporting
    /// [`Progress`] after each commit, with every table recording the end position of
    /// each batch (the log is acknowledged, and reclaimed, in the background as it
    /// goes, and up to the end before this returns).
    /// Compacts afterwards if a backfill left many small files.
    pub async fn catch_up(
        &mut self,
        progress: impl Fn(Progress),
    ) -> Result<StepSummary, LedgerError> {
        self.confirm().await?;
        let target = self.log.durable_end();
        // The log tells how much lies ahead without reading it (the local log in bytes,
        // Kafka in records); other logs are counted record by record.
        let (total, unit, spans) = match self.log.span(self.read_pos, target) {
            Some(Span::Bytes(b)) => (b, ProgressUnit::LogBytes, true),
            Some(Span::Records(n)) => (n, ProgressUnit::Records, true),
            None => (
                self.count_records(target).await?,
                ProgressUnit::Records,
                false,
            ),
        };
        let report = |done: u64| {
            progress(Progress {
                done: done.min(total),
                total,
                unit,
            })
        };
        let mut total_summary = StepSummary {
            end: self.read_pos,
            ..StepSummary::default()
        };
        let mut done = 0u64;
        report(0);
        while self.read_pos < target {
            let from = self.read_pos;
            let read = self.fill(Some(target)).await?;
            // Measured before the commit, which may reclaim the log below it.
            let step = match self.log.span(from, self.read_pos) {
                Some(Span::Bytes(n) | Span::Records(n)) if spans => n,
                _ => read,
            };
            // Tables without new rows record the position too, so the log is reclaimed
            // as the catch-up goes rather than held whole until it ends.
            let summary = self.flush(true).await?;
            add_summary(&mut total_summary, &summary);
            done = done.saturating_add(step);
            report(done);
            if read == 0 {
                break;
            }
        }
        let last = self.flush(true).await;
        // The log is acknowledged up to the end before returning.
        self.reclaim.settle(&self.log).await;
        add_summary(&mut total_summary, &last?);
        report(total);
        let due: Vec<usize> = (0..self.tables.len())
            .filter(|&i| self.tables[i].due.optimize_due(&self.config))
            .collect();
        for i in due {
            if let Err(e) = self.optimize_one(i).await {
                tracing::warn!(error = %e, "compaction after catch-up failed");
            }
        }
        Ok(total_summary)
    }

    /// Run until `shutdown` completes: tail the log, commit a batch when it is full or
    /// `batch_max_age_ms` old, record positions of idle tables, and run maintenance in
    /// the background. Failures are logged, reported in the status and retried with
    /// backoff. At shutdown the batch in hand, and at most one more batch, is committed
    /// and every table records its position; anything later is committed on the next
    /// start.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LedgerError> {
        tokio::pin!(shutdown);
        let poll = (self.config.batch_max_age() / 5)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut wait = Duration::ZERO;
        let mut backoff = Duration::ZERO;
        let mut maintenance: Option<Maintenance> = None;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
            }
            match self.tick().await {
                Ok(busy) => {
                    backoff = Duration::ZERO;
                    self.shared.state.lock().last_error = None;
                    wait = if busy { Duration::ZERO } else { poll };
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(200), MAX_BACKOFF);
                    tracing::error!(code = e.code(), error = %e, retry_in = ?backoff, "ledger batch failed");
                    self.shared.state.lock().last_error = Some(e.to_string());
                    wait = backoff;
                }
            }
            self.maintain(&mut maintenance).await;
        }

        // Shutdown: commit the batch in hand plus at most one more batch of what is
        // durable now (bounded, so stopping stays quick; the rest waits for the next
        // start), and record every table's position.
        let target = self.log.durable_end();
        let result = match self.fill(Some(target)).await {
            Ok(_) => self.flush(true).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Some(mut m) = maintenance.take() {
            match tokio::time::timeout(MAINTENANCE_SHUTDOWN_WAIT, &mut m.task).await {
                Ok(Ok(results)) => self.maintenance_done(results).await,
                Ok(Err(e)) => tracing::warn!(error = %e, "background maintenance task failed"),
                Err(_) => {
                    // Safe: a maintenance commit is atomic; unfinished work leaves only
                    // unreferenced files for vacuum.
                    m.task.abort();
                    tracing::warn!("background maintenance still running at shutdown; stopped");
                }
            }
        }
        self.reclaim.settle(&self.log).await;
        if let Err(e) = &result {
            tracing::error!(code = e.code(), error = %e, "ledger stopped with uncommitted records; they are committed on the next start");
        }
        result
    }

    /// Compact every table now (see [`OptimizeSummary`]).
    pub async fn optimize(&mut self) -> Result<Vec<OptimizeSummary>, LedgerError> {
        self.confirm().await?;
        let mut out = Vec::new();
        for i in 0..self.tables.len() {
            out.push(self.optimize_one(i).await?);
        }
        Ok(out)
    }

    /// Delete unreferenced files older than `retention` (default:
    /// `vacuum_retention_hours`) from every table.
    pub async fn vacuum(
        &mut self,
        retention: Option<Duration>,
    ) -> Result<Vec<VacuumSummary>, LedgerError> {
        self.confirm().await?;
        let retention = retention.unwrap_or_else(|| self.config.vacuum_retention());
        let mut out = Vec::new();
        for i in 0..self.tables.len() {
            let s = &self.tables[i];
            let (delta, summary) = maintenance::vacuum(s.delta.clone(), s.table, retention).await?;
            self.adopt(i, delta).await?;
            out.push(summary);
        }
        self.last_vacuum = Some(Instant::now());
        self.shared.state.lock().counters.vacuum_runs += 1;
        self.publish();
        Ok(out)
    }

    // ----- internals -----

    /// One iteration of [`Ledger::run`]; returns whether more work is waiting.
    async fn tick(&mut self) -> Result<bool, LedgerError> {
        self.fill(None).await?;
        let full = self.batch_full();
        let old = self.batch_old();
        if full || old {
            self.flush(false).await?;
            return Ok(full);
        }
        let idle = self.config.idle_commit();
        if self.batch.records == 0
            && self
                .tables
                .iter()
                .any(|s| s.position_behind() && s.last_commit.elapsed() >= idle)
        {
            self.flush(false).await?;
        }
        Ok(false)
    }

    fn batch_full(&self) -> bool {
        self.batch.records >= self.config.batch_max_events
            || self.batch.bytes >= self.config.batch_max_bytes
    }

    /// Whether the batch is due by the commit timer (`batch_max_age_ms`).
    fn batch_old(&self) -> bool {
        self.batch
            .started
            .is_some_and(|t| t.elapsed() >= self.config.batch_max_age())
    }

    /// Read records into the batch until it is full or due, the log has no more, or
    /// `limit` is reached. Returns the number of records taken. Reads are decoded in
    /// blocking tasks, [`DECODERS`] at a time, while the next read is under way and the
    /// file writers encode what was decoded before.
    async fn fill(&mut self, limit: Option<Position>) -> Result<u64, LedgerError> {
        self.confirm().await?;
        let mut inflight: VecDeque<DecodeTask> = VecDeque::new();
        let mut taken = 0u64;
        let result = self.fill_reads(limit, &mut inflight, &mut taken).await;
        // Whatever happened, the reads taken so far are decoded and added (or dropped
        // with the batch on an error).
        let mut result = result;
        let mut lost = false;
        while let Some(task) = inflight.pop_front() {
            if result.is_err() {
                task.abort();
                lost = true;
                continue;
            }
            result = self.absorb(task).await;
        }
        match result {
            Ok(()) => Ok(taken),
            // The batch lost records it counted: it starts over from the tables (a failed
            // absorb has done so already).
            Err(e) if lost && !self.needs_reload => Err(self.failed(e)),
            Err(e) => Err(e),
        }
    }

    async fn fill_reads(
        &mut self,
        limit: Option<Position>,
        inflight: &mut VecDeque<DecodeTask>,
        taken: &mut u64,
    ) -> Result<(), LedgerError> {
        while !self.batch_full() && !self.batch_old() {
            if limit.is_some_and(|l| self.read_pos >= l) {
                break;
            }
            let start = |log: &Arc<dyn EventLog>, from: Position| {
                let chunk = self.config.batch_max_events.clamp(1, READ_CHUNK);
                ReadAhead::start(Arc::clone(log), from, limit, chunk)
            };
            let (mut reader, reused) = match self.read_ahead.take() {
                Some(r) if r.next == self.read_pos && r.limit == limit => (r, true),
                _ => (start(&self.log, self.read_pos), false),
            };
            let mut records = reader.read().await?;
            if records.is_empty() && reused {
                // The end of the log as it was when read ahead: look again now.
                reader = start(&self.log, self.read_pos);
                records = reader.read().await?;
            }
            // Up to the limit and what fits in the batch.
            let room = self.config.batch_max_events - self.batch.records;
            let (mut n, mut bytes) = (0usize, 0usize);
            for r in &records {
                if n >= room
                    || self.batch.bytes + bytes >= self.config.batch_max_bytes
                    || limit.is_some_and(|l| r.position >= l)
                {
                    break;
                }
                n += 1;
                bytes += r.payload.len();
            }
            let whole = n == records.len();
            records.truncate(n);
            let Some(last) = records.last() else {
                break;
            };
            let next = last.next;
            // The reads ahead go on from here unless this one was cut short.
            if whole {
                reader.next = next;
                self.read_ahead = Some(reader);
            }
            let fresh_from = self.max_seen;
            self.read_pos = next;
            self.max_seen = self.max_seen.max(next);
            self.batch.records += n;
            self.batch.bytes += bytes;
            self.batch.started.get_or_insert_with(Instant::now);
            *taken += n as u64;
            let covered: [Position; 3] =
                std::array::from_fn(|i| self.tables.get(i).map_or(Position::START, |s| s.covered));
            // Unchanged until the batch commits: the decoders look committed ids up.
            let committed = Arc::clone(&self.dedupe);
            inflight.push_back(tokio::task::spawn_blocking(move || {
                decode_read(&records, covered, fresh_from, &committed)
            }));
            while inflight.len() >= DECODERS {
                if let Some(task) = inflight.pop_front() {
                    self.absorb(task).await?;
                }
            }
        }
        Ok(())
    }

    /// Add a decoded read to the batch: drop duplicates, count, and hand full chunks of
    /// rows to the files.
    async fn absorb(&mut self, task: DecodeTask) -> Result<(), LedgerError> {
        let read = match task.await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Err(self.failed(e)),
            Err(e) => return Err(self.failed(LedgerError::Runtime(e.to_string()))),
        };
        let mut duplicates = read.duplicates;
        let keys: [&[DedupeKey]; 3] = std::array::from_fn(|i| {
            read.tables[i]
                .as_ref()
                .map_or(&[][..], |(_, keys, _)| keys.as_slice())
        });
        let mut keep: [Option<Vec<bool>>; 3] = Default::default();
        for (i, j) in merged_order(keys) {
            let key = keys[i][j];
            if !self.batch.seen.insert(key) {
                if read.tables[i].as_ref().is_some_and(|t| j >= t.2) {
                    tracing::debug!(event_id = %uuid::Uuid::from_u128(key.1), "dropping a duplicate event");
                    duplicates += 1;
                }
                keep[i].get_or_insert_with(|| vec![true; keys[i].len()])[j] = false;
            }
        }
        for (i, (slot, keep)) in read.tables.into_iter().zip(keep).enumerate() {
            let Some((rows, keys, _)) = slot else {
                continue;
            };
            let (rows, keys) = match keep {
                None => (rows, keys),
                Some(keep) => {
                    let mask = deltalake::arrow::array::BooleanArray::from(keep.clone());
                    let rows = match deltalake::arrow::compute::filter_record_batch(&rows, &mask) {
                        Ok(rows) => rows,
                        Err(e) => {
                            return Err(self.failed(LedgerError::Convert {
                                table: Table::ALL[i].name(),
                                source: e.into(),
                            }));
                        }
                    };
                    let keys = keys
                        .into_iter()
                        .zip(keep)
                        .filter_map(|(k, keep)| keep.then_some(k))
                        .collect();
                    (rows, keys)
                }
            };
            if rows.num_rows() == 0 {
                continue;
            }
            self.batch.keys[i].extend(keys);
            self.batch.pending_rows[i] += rows.num_rows();
            self.batch.pending[i].push(rows);
            if self.batch.pending_rows[i] >= CHUNK_ROWS {
                self.dispatch(i).await?;
            }
        }
        self.batch.duplicates += duplicates;
        self.batch.undecodable += read.undecodable.len() as u64;
        let mut shared = self.shared.state.lock();
        shared.counters.records_read += read.fresh;
        shared.counters.replay_skipped += read.replay_skipped;
        shared.counters.duplicates_dropped += duplicates;
        shared.counters.undecodable_records += read.undecodable.len() as u64;
        for u in read.undecodable {
            if shared.undecodable.len() >= RECENT_UNDECODABLE {
                shared.undecodable.pop_front();
            }
            shared.undecodable.push_back(u);
        }
        Ok(())
    }

    /// Hand the table's pending rows to its files (written in the background).
    async fn dispatch(&mut self, i: usize) -> Result<(), LedgerError> {
        let table = Table::ALL[i];
        if self.batch.pending[i].is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.batch.pending[i]);
        self.batch.pending_rows[i] = 0;
        let files = match self.batch.files[i].take() {
            Some(files) => files,
            None => match FileSet::for_table(&self.tables[i].delta, table) {
                Ok(Some(files)) => TableFiles::Streaming(Slot::start(Box::new(files))),
                Ok(None) => TableFiles::Evolving(Vec::new()),
                Err(e) => return Err(self.failed(e)),
            },
        };
        let files = match files {
            TableFiles::Streaming(slot) => match slot.write(chunk).await {
                Ok(slot) => TableFiles::Streaming(slot),
                Err(e) => return Err(self.failed(e)),
            },
            TableFiles::Evolving(mut chunks) => {
                chunks.extend(chunk);
                TableFiles::Evolving(chunks)
            }
        };
        self.batch.files[i] = Some(files);
        Ok(())
    }

    /// Commit the batch: each table's rows with the batch's end position. With
    /// `record_idle`, tables without new rows record the end position too (otherwise only
    /// once their last commit is `idle_commit_secs` old).
    async fn flush(&mut self, record_idle: bool) -> Result<StepSummary, LedgerError> {
        self.confirm().await?;
        // The rows not handed to the files yet go now.
        for i in 0..self.tables.len() {
            self.dispatch(i).await?;
        }
        let end = self.read_pos;
        let mut batch = std::mem::take(&mut self.batch);
        // The next batch reuses the ids' room.
        let mut seen = std::mem::take(&mut batch.seen);
        seen.clear();
        self.batch.seen = seen;
        let mut summary = StepSummary {
            records: batch.records as u64,
            duplicates: batch.duplicates,
            undecodable: batch.undecodable,
            end,
            ..StepSummary::default()
        };
        for i in 0..self.tables.len() {
            let files = batch.files[i].take();
            let keys = std::mem::take(&mut batch.keys[i]);
            let Some(files) = files else {
                let idle = self.config.idle_commit();
                let s = &mut self.tables[i];
                s.covered = s.covered.max(end);
                if s.position_behind() && (record_idle || s.last_commit.elapsed() >= idle) {
                    self.commit_position(i).await?;
                    summary.commits += 1;
                }
                continue;
            };
            let rows = keys.len() as u64;
            let files_per_day = self.commit_rows(i, files, end).await?;
            dedupe_mut(&mut self.dedupe).extend(keys);
            let s = &mut self.tables[i];
            for (day, files) in files_per_day {
                *s.due.new_files_per_day.entry(day).or_insert(0) += files;
            }
            summary.rows[i] = rows;
            summary.commits += 1;
            self.shared.state.lock().counters.events_committed += rows;
        }

        // Every table has committed everything before its position: the log may drop
        // what lies before the lowest of them.
        if let Some(low) = self
            .tables
            .iter()
            .map(|s| s.committed)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
        {
            self.reclaim.request(&self.log, low);
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            dedupe_mut(&mut self.dedupe).prune(Timestamp::now());
            self.last_prune = Instant::now();
        }
        self.publish();
        Ok(summary)
    }

    /// Commit one table's files (or, while its schema evolves, its rows) and `end`, in
    /// one commit; returns the files written per day.
    async fn commit_rows(
        &mut self,
        i: usize,
        files: TableFiles,
        end: Position,
    ) -> Result<HashMap<i32, u64>, LedgerError> {
        self.tables[i].attempted = Some(end);
        let s = &self.tables[i];
        let table = s.table;
        let result = match files {
            TableFiles::Streaming(slot) => match slot.ready().await {
                Ok(files) => match files.finish().await {
                    Ok(Written {
                        adds,
                        files_per_day,
                        rows,
                    }) => {
                        tables::commit_files(s.delta.clone(), table, adds, rows, &self.app_id, end)
                            .await
                            .map(|delta| (delta, files_per_day))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            TableFiles::Evolving(chunks) => {
                let schema = table.event_schema();
                match deltalake::arrow::compute::concat_batches(&schema, &chunks)
                    .map_err(|e| LedgerError::Convert {
                        table: table.name(),
                        source: e.into(),
                    })
                    .and_then(|rows| sorted_with_day(table, rows))
                {
                    Ok(batch) => {
                        let days = days_of(&batch);
                        tables::append(s.delta.clone(), table, batch, &self.app_id, end)
                            .await
                            .map(|delta| (delta, days))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok((delta, files_per_day)) => {
                self.committed(i, delta, end).await;
                self.shared.state.lock().counters.data_commits += 1;
                Ok(files_per_day)
            }
            Err(e) => Err(self.commit_failed(i, e)),
        }
    }

    /// Record the table's covered position without data.
    async fn commit_position(&mut self, i: usize) -> Result<(), LedgerError> {
        let end = self.tables[i].covered;
        self.tables[i].attempted = Some(end);
        let s = &self.tables[i];
        match tables::record_position(s.delta.clone(), s.table, &self.app_id, end).await {
            Ok(delta) => {
                self.committed(i, delta, end).await;
                self.shared.state.lock().counters.position_commits += 1;
                Ok(())
            }
            Err(e) => Err(self.commit_failed(i, e)),
        }
    }

    /// Bookkeeping after a successful commit; checkpoints when due.
    async fn committed(&mut self, i: usize, delta: DeltaTable, end: Position) {
        let s = &mut self.tables[i];
        s.delta = delta;
        s.committed = Some(end);
        s.covered = s.covered.max(end);
        s.last_commit = Instant::now();
        s.due.commits_since_checkpoint += 1;
        s.due.commits_since_optimize += 1;
        if s.due.checkpoint_due(&self.config) {
            match maintenance::checkpoint(&s.delta, s.table).await {
                Ok(()) => {
                    s.due.commits_since_checkpoint = 0;
                    self.shared.state.lock().counters.checkpoints += 1;
                }
                Err(e) => {
                    tracing::warn!(code = e.code(), error = %e, "Delta checkpoint failed; retried after the next commit")
                }
            }
        }
    }

    /// Take `delta`, a newer state of table `i` read outside this ledger's own commits
    /// (after compaction, vacuum or a refresh), as the base of its next commit. A Delta
    /// commit conflicts with another commit of the same app id only if that commit is
    /// newer than the state it is built on, so a newer state must still record this
    /// ledger's own position for the source: if another ledger committed the source
    /// meanwhile, the batch is dropped and the tables are re-read before anything is
    /// written (see [`Ledger::confirm`]).
    async fn adopt(&mut self, i: usize, delta: DeltaTable) -> Result<(), LedgerError> {
        let table = self.tables[i].table;
        let recorded = tables::committed_position(&delta, table, &self.app_id).await?;
        let s = &mut self.tables[i];
        if recorded == s.committed {
            s.delta = delta;
            return Ok(());
        }
        // Keep the old state as the commit base until the reload replaces it.
        self.batch = Batch::default();
        self.read_ahead = None;
        self.needs_reload = true;
        Ok(())
    }

    /// A commit of table `i` failed: refused in favour of another ledger's commit of the
    /// source (so certainly not made), or with an unknown outcome.
    fn commit_failed(&mut self, i: usize, e: LedgerError) -> LedgerError {
        if matches!(e, LedgerError::SourceMoved { .. }) {
            self.tables[i].attempted = None;
        }
        self.failed(e)
    }

    /// A commit failed (or its outcome is unknown): drop the batch and re-read the
    /// tables before writing again, then resume from what they record.
    fn failed(&mut self, e: LedgerError) -> LedgerError {
        self.batch = Batch::default();
        self.needs_reload = true;
        self.shared.state.lock().counters.failed_commits += 1;
        e
    }

    /// After a failed commit: reload every table and its recorded position, and rewind
    /// the reader to the lowest. Until this succeeds nothing is written.
    async fn confirm(&mut self) -> Result<(), LedgerError> {
        if !self.needs_reload {
            return Ok(());
        }
        let (mut moved, mut changed) = (false, false);
        for s in &mut self.tables {
            s.delta
                .update_state()
                .await
                .map_err(|e| LedgerError::Unconfirmed {
                    table: s.table.name(),
                    source: e.into(),
                })?;
            let committed = tables::committed_position(&s.delta, s.table, &self.app_id).await?;
            if committed != s.committed && committed != s.attempted {
                tracing::warn!(
                    table = s.table.name(),
                    app_id = %self.app_id,
                    recorded = ?committed,
                    this_ledger = ?s.committed,
                    "another ledger committed this source (two owners of its partition for a moment): resuming from the position it recorded"
                );
                moved = true;
            }
            changed |= committed != s.committed;
            s.committed = committed;
            s.covered = committed.unwrap_or(Position::START);
            s.attempted = None;
        }
        if changed {
            // Events committed meanwhile (by another ledger, or by this one's commit
            // whose success it did not see) are in the tables but not in the dedupe
            // set: rebuild it, so a copy of one of them later in the log is still
            // dropped.
            self.dedupe = Arc::new(load_dedupe(&self.config, &self.tables).await?);
        }
        if moved {
            self.shared.state.lock().counters.source_moved += 1;
        }
        self.read_pos = self
            .tables
            .iter()
            .map(|s| s.covered)
            .min()
            .unwrap_or(Position::START);
        self.batch = Batch::default();
        self.read_ahead = None;
        self.needs_reload = false;
        tracing::info!(resume_from = %self.read_pos, "ledger state confirmed after a failed commit");
        self.publish();
        Ok(())
    }

    /// Records between the read position and `target`.
    async fn count_records(&self, target: Position) -> Result<u64, LedgerError> {
        let mut pos = self.read_pos;
        let mut n = 0u64;
        while pos < target {
            let records = read_log(&self.log, pos, 16 * 1024).await?;
            let Some(last) = records.last() else { break };
            pos = last.next;
            n += records.iter().filter(|r| r.position < target).count() as u64;
        }
        Ok(n)
    }

    async fn optimize_one(&mut self, i: usize) -> Result<OptimizeSummary, LedgerError> {
        let s = &self.tables[i];
        let (delta, summary) = maintenance::optimize(s.delta.clone(), s.table).await?;
        self.adopt(i, delta).await?;
        self.tables[i].due.optimized();
        self.shared.state.lock().counters.optimize_runs += 1;
        self.publish();
        Ok(summary)
    }

    /// Collect finished background maintenance and start what is due.
    async fn maintain(&mut self, running: &mut Option<Maintenance>) {
        if let Some(m) = running.as_ref()
            && m.task.is_finished()
            && let Some(m) = running.take()
        {
            match m.task.await {
                Ok(results) => self.maintenance_done(results).await,
                Err(e) => tracing::warn!(error = %e, "background maintenance task failed"),
            }
        }
        if running.is_some() || self.needs_reload {
            return;
        }
        let optimize: Vec<usize> = (0..self.tables.len())
            .filter(|&i| self.tables[i].due.optimize_due(&self.config))
            .collect();
        let vacuum = self.config.vacuum_every_hours > 0
            && self.last_vacuum.is_none_or(|t| {
                t.elapsed() >= Duration::from_secs(self.config.vacuum_every_hours * 3600)
            });
        if optimize.is_empty() && !vacuum {
            return;
        }
        // Work on handles of their own; the writer's next commit rebases on theirs
        // (compaction and vacuum never conflict with appends).
        let jobs: Vec<(usize, Table, DeltaTable)> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.table, s.delta.clone()))
            .collect();
        if vacuum {
            self.last_vacuum = Some(Instant::now());
        }
        let retention = self.config.vacuum_retention();
        let task = tokio::spawn(async move {
            let mut results = Vec::new();
            for (i, table, delta) in jobs {
                let delta = if optimize.contains(&i) {
                    match maintenance::optimize(delta, table).await {
                        Ok((delta, summary)) => {
                            results.push(Ok(MaintenanceDone::Optimized(i, summary)));
                            delta
                        }
                        Err(e) => {
                            results.push(Err(e));
                            continue;
                        }
                    }
                } else {
                    delta
                };
                if vacuum {
                    results.push(
                        maintenance::vacuum(delta, table, retention)
                            .await
                            .map(|(_, s)| MaintenanceDone::Vacuumed(s)),
                    );
                }
            }
            results
        });
        *running = Some(Maintenance { task });
    }

    async fn maintenance_done(&mut self, results: Vec<Result<MaintenanceDone, LedgerError>>) {
        for r in results {
            match r {
                Ok(MaintenanceDone::Optimized(i, summary)) => {
                    tracing::info!(
                        table = summary.table,
                        files_removed = summary.files_removed,
                        files_added = summary.files_added,
                        "compacted"
                    );
                    if let Some(s) = self.tables.get_mut(i) {
                        s.due.optimized();
                    }
                    self.shared.state.lock().counters.optimize_runs += 1;
                }
                Ok(MaintenanceDone::Vacuumed(summary)) => {
                    tracing::info!(
                        table = summary.table,
                        files_deleted = summary.files_deleted,
                        "vacuumed"
                    );
                    self.shared.state.lock().counters.vacuum_runs += 1;
                }
                Err(e) => {
                    tracing::warn!(code = e.code(), error = %e, "background maintenance failed")
                }
            }
        }
        // Pick up the maintenance commits (the next append would rebase anyway).
        for i in 0..self.tables.len() {
            if self.needs_reload {
                break;
            }
            let mut delta = self.tables[i].delta.clone();
            if let Err(e) = delta.update_state().await {
                tracing::warn!(table = self.tables[i].table.name(), error = %e, "refreshing table state");
                continue;
            }
            if let Err(e) = self.adopt(i, delta).await {
                tracing::warn!(code = e.code(), error = %e, "refreshing table state");
            }
        }
        self.publish();
    }

    /// Publish the tables' state and counters to handles.
    fn publish(&self) {
        let mut state = self.shared.state.lock();
        state.tables = self
            .tables
            .iter()
            .map(|s| (Some(s.delta.clone()), s.committed, s.covered))
            .collect();
        state.counters.dedupe_ids = self.dedupe.len() as u64;
    }
}

/// One file per day of a batch with the `day` column.
fn days_of(batch: &RecordBatch) -> HashMap<i32, u64> {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Date32Type;
    batch
        .column_by_name(tally_events::arrow::PARTITION_COLUMN)
        .and_then(|c| c.as_primitive_opt::<Date32Type>())
        .map(|days| days.values().iter().map(|&d| (d, 1)).collect())
        .unwrap_or_default()
}

fn add_summary(total: &mut StepSummary, step: &StepSummary) {
    total.records += step.records;
    for (t, s) in total.rows.iter_mut().zip(step.rows) {
        *t += s;
    }
    total.duplicates += step.duplicates;
    total.undecodable += step.undecodable;
    total.commits += step.commits;
    total.end = step.end;
}
