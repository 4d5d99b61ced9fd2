//! What the ledger reports about itself: per table the committed position, lag behind
//! the log (events and seconds), last commit, files, bytes and rows; counters; recent
//! undecodable records. Owns the serializable report types, the lag scan over the log and
//! the standalone [`ledger_status`] (no running ledger needed). Must not write anything.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tally_events::arrow::Table;
use tally_events::log::{EventLog, Position};
use tally_events::{EventType, Timestamp};

use crate::config::LedgerConfig;
use crate::error::LedgerError;
use crate::position::app_id;
use crate::storage::TablesRoot;
use crate::tables;

/// Records read at most by one lag scan; beyond it `lag_events` is a lower bound.
pub(crate) const LAG_SCAN_CAP: u64 = 1_000_000;

/// The state of the ledger: one entry per table plus counters.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LedgerStatus {
    /// The tables root (credentials are never part of it).
    pub tables_uri: String,
    /// The Delta application transaction id the ledger commits with.
    pub app_id: String,
    /// The position after the last durable record of the log (`None`: log not available).
    pub log_durable_end: Option<Position>,
    /// `usage`, `decisions`, `corrections`, in that order.
    pub tables: Vec<TableStatus>,
    /// Counters of the running ledger since it started (`None` for [`ledger_status`]).
    pub counters: Option<LedgerCounters>,
    /// The most recent records that could not be decoded (skipped, never blocking).
    pub undecodable: Vec<UndecodableRecord>,
    /// The last error of the running ledger's loop, if its latest attempt failed.
    pub last_error: Option<String>,
}

/// The state of one table.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TableStatus {
    /// Table name.
    pub table: String,
    /// Whether the table exists (the standalone status does not create it).
    pub exists: bool,
    /// Position recorded by the last commit (`None`: nothing committed yet). Every event
    /// of this table before it is in the table; none at or after it is.
    pub committed_position: Option<Position>,
    /// Events of this table in the log not yet committed (`None`: log not available).
    pub lag_events: Option<u64>,
    /// `lag_events` is a lower bound (the scan stopped after 1,000,000 records).
    pub lag_events_capped: bool,
    /// Seconds since the `occurred_at` of the first uncommitted event (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// Delta version of the last commit.
    pub version: Option<u64>,
    /// When that commit was made.
    pub last_commit_at: Option<Timestamp>,
    /// Data files in the current version.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Rows, from file statistics (`None` if some file has no statistics).
    pub rows: Option<u64>,
}

/// Counters of a running ledger (since it was opened).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LedgerCounters {
    /// Log records read (first reads only; re-reads after a failure are not counted).
    pub records_read: u64,
    /// Events written to the tables.
    pub events_committed: u64,
    /// Events dropped because their `event_id` was already materialized.
    pub duplicates_dropped: u64,
    /// Records skipped because they could not be decoded (see `undecodable`).
    pub undecodable_records: u64,
    /// Events skipped on replay because their table had committed them already.
    pub replay_skipped: u64,
    /// Delta commits with data.
    pub data_commits: u64,
    /// Delta commits recording only the position (tables with no new events).
    pub position_commits: u64,
    /// Commits that failed (and were retried from the log).
    pub failed_commits: u64,
    /// Times another ledger was found to have committed this source's position (two
    /// owners of one Kafka partition during a rebalance): the batch in hand was dropped
    /// and reading resumed from the position that ledger recorded.
    #[serde(default)]
    pub source_moved: u64,
    /// Delta checkpoints written.
    pub checkpoints: u64,
    /// Compactions run.
    pub optimize_runs: u64,
    /// Vacuums run.
    pub vacuum_runs: u64,
    /// Event ids currently remembered for dedupe.
    pub dedupe_ids: u64,
}

/// A record that could not be decoded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UndecodableRecord {
    /// Where it is in the log.
    pub position: Position,
    /// `event.decode` or `event.unknown_type`.
    pub code: String,
    /// The decoder's message.
    pub message: String,
}

/// Per table: uncommitted events and the `occurred_at` of the first of them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lag {
    pub(crate) events: u64,
    pub(crate) first: Option<Timestamp>,
}

/// Result of scanning the log from the tables' positions to its durable end.
#[derive(Clone, Debug, Default)]
pub(crate) struct LagScan {
    pub(crate) durable_end: Position,
    pub(crate) per_table: [Lag; 3],
    pub(crate) capped: bool,
}

/// Count, per table, the records at or after `from[i]` that belong to table `i`.
pub(crate) fn scan_lag(log: &dyn EventLog, from: [Position; 3]) -> Result<LagScan, LedgerError> {
    #[derive(Deserialize)]
    struct Probe {
        event_type: String,
        occurred_at: Timestamp,
    }
    let durable_end = log.durable_end();
    let mut scan = LagScan {
        durable_end,
        ..LagScan::default()
    };
    let mut pos = from.iter().copied().min().unwrap_or(Position::START);
    let mut read = 0u64;
    while pos < durable_end {
        if read >= LAG_SCAN_CAP {
            scan.capped = true;
            break;
        }
        let records = log.read(pos, 4096)?;
        let Some(last) = records.last() else { break };
        pos = last.next;
        for r in records {
            read += 1;
            let Ok(probe) = serde_json::from_slice::<Probe>(&r.payload) else {
                continue;
            };
            let i = match EventType::parse(&probe.event_type) {
                EventType::Usage => 0,
                EventType::Decision => 1,
                EventType::Correction => 2,
                EventType::Other => continue,
            };
            if r.position >= from[i] {
                let lag = &mut scan.per_table[i];
                lag.events += 1;
                lag.first.get_or_insert(probe.occurred_at);
            }
        }
    }
    Ok(scan)
}

/// Seconds from `at` to now (never negative).
pub(crate) fn seconds_since(at: Timestamp) -> f64 {
    let micros = Timestamp::now().as_micros().saturating_sub(at.as_micros());
    micros.max(0) as f64 / 1e6
}

/// Fill the lag fields of `tables` from a scan (or mark them unknown without a log).
pub(crate) fn apply_lag(tables: &mut [TableStatus], scan: Option<&LagScan>) {
    for (i, t) in tables.iter_mut().enumerate() {
        match scan {
            None => {
                t.lag_events = None;
                t.lag_seconds = None;
            }
            Some(scan) => {
                let lag = scan.per_table.get(i).copied().unwrap_or_default();
                t.lag_events = Some(lag.events);
                t.lag_events_capped = scan.capped;
                t.lag_seconds = Some(lag.first.map_or(0.0, seconds_since));
            }
        }
    }
}

/// Status of a table from its loaded Delta state.
pub(crate) fn table_status(
    table: Table,
    delta: Option<&deltalake::DeltaTable>,
    committed: Option<Position>,
) -> TableStatus {
    let (version, at) = delta.map_or((None, None), tables::version_info);
    let stats = delta.map(tables::file_stats).unwrap_or_default();
    TableStatus {
        table: table.name().to_owned(),
        exists: delta.is_some(),
        committed_position: committed,
        lag_events: None,
        lag_events_capped: false,
        lag_seconds: None,
        version,
        last_commit_at: at.map(|ms| Timestamp::from_micros(ms.saturating_mul(1000))),
        files: stats.files,
        bytes: stats.bytes,
        rows: stats.rows,
    }
}

/// The status of the tables under `tables_root`, without a running ledger and without
/// creating or changing anything. With `log`, lag is computed against it (pass `None`
/// when the log is held by another process).
pub async fn ledger_status(
    config: &LedgerConfig,
    tables_root: &str,
    log: Option<std::sync::Arc<dyn EventLog>>,
) -> Result<LedgerStatus, LedgerError> {
    let root = TablesRoot::open(tables_root, config.storage_options.clone(), false)?;
    let app = app_id(&config.source_name);
    let mut statuses = Vec::new();
    let mut from = [Position::START; 3];
    for (i, table) in Table::ALL.into_iter().enumerate() {
        let Some(delta) = tables::open_existing(&root, table).await? else {
            statuses.push(table_status(table, None, None));
            continue;
        };
        let committed = tables::committed_position(&delta, table, &app).await?;
        if let Some(c) = committed {
            from[i] = c;
        }
        statuses.push(table_status(table, Some(&delta), committed));
    }
    let scan = match &log {
        Some(log) => {
            let log = std::sync::Arc::clone(log);
            Some(
                tokio::task::spawn_blocking(move || scan_lag(log.as_ref(), from))
                    .await
                    .map_err(|e| LedgerError::Runtime(e.to_string()))??,
            )
        }
        None => None,
    };
    apply_lag(&mut statuses, scan.as_ref());
    Ok(LedgerStatus {
        tables_uri: root.uri().to_string(),
        app_id: app,
        log_durable_end: scan.as_ref().map(|s| s.durable_end),
        tables: statuses,
        counters: None,
        undecodable: Vec::new(),
        last_error: None,
    })
}

/// Committed positions keyed by table (tables never committed map to the log's start).
pub(crate) fn positions_map(positions: [Option<Position>; 3]) -> HashMap<Table, Position> {
    Table::ALL
        .into_iter()
        .zip(positions)
        .map(|(t, p)| (t, p.unwrap_or(Position::START)))
        .collect()
}
