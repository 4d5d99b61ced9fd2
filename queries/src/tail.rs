//! The not-yet-committed tail: events acknowledged by the event log that the ledger has
//! not committed to the Delta tables yet, so queries see an event within a second.
//! Owns the [`TailSource`] contract and [`LogTail`], which reads the log from the
//! ledger's committed position to the durable end. Must not write to the log or move
//! its checkpoint, and must not know how the ledger commits.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use tally_events::arrow::{
    Table, corrections_to_batch, decisions_to_batch, usage_to_batch, with_day_column,
};
use tally_events::log::{EventLog, Position};
use tally_events::{CorrectionEvent, DecisionEvent, Event, UsageEvent};

/// Events of one table that are acknowledged but not yet committed by the ledger, as
/// batches in `table.table_schema()`. Called once per table at the start of each query;
/// must be quick (it runs on a blocking thread) and must not fail: on trouble it returns
/// what it has and logs why.
pub trait TailSource: Send + Sync {
    fn tail(&self, table: Table) -> Vec<RecordBatch>;

    /// The tail from `from`: the log position recorded in the table version the query
    /// reads (`None`: not known, use [`TailSource::tail`]'s own notion). Reading the tail
    /// from the very position the Delta snapshot covers is what makes table + tail exact:
    /// no event counted twice, none missed, whenever the ledger commits.
    fn tail_from(&self, table: Table, from: Option<Position>) -> Vec<RecordBatch> {
        let _ = from;
        self.tail(table)
    }

    /// The Delta application id (`tally-ledger/<source>`) of the ledger that commits
    /// this log, whose recorded position [`TailSource::tail_from`] takes. `None`: the
    /// engine cannot tell and calls [`TailSource::tail`].
    fn ledger_app_id(&self) -> Option<&str> {
        None
    }
}

/// Where the ledger's committed data ends, per table: the log position of the first
/// record not yet in that table.
pub trait CommittedPositions: Send + Sync {
    fn committed(&self, table: Table) -> Position;
}

impl<F> CommittedPositions for F
where
    F: Fn(Table) -> Position + Send + Sync,
{
    fn committed(&self, table: Table) -> Position {
        self(table)
    }
}

/// Records read per `EventLog::read` call.
const READ_CHUNK: usize = 4096;

/// A [`TailSource`] over an [`EventLog`]: reads from the lowest committed position to
/// `durable_end()`, decodes, and keeps what it decoded so the next call only reads new
/// records. Undecodable records are skipped (the ledger reports them).
pub struct LogTail {
    log: Arc<dyn EventLog>,
    committed: Arc<dyn CommittedPositions>,
    app_id: Option<String>,
    cache: Mutex<TailCache>,
}

#[derive(Default)]
struct TailCache {
    /// Records before this position are not cached.
    start: Position,
    /// The next position to read.
    next: Position,
    /// Decoded events with the position of their record, in log order.
    events: Vec<(Position, Event)>,
}

impl fmt::Debug for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.cache.lock();
        f.debug_struct("LogTail")
            .field("start", &c.start)
            .field("next", &c.next)
            .field("cached_events", &c.events.len())
            .field("app_id", &self.app_id)
            .finish()
    }
}

impl LogTail {
    pub fn new(log: Arc<dyn EventLog>, committed: Arc<dyn CommittedPositions>) -> Self {
        Self {
            log,
            committed,
            app_id: None,
            cache: Mutex::new(TailCache::default()),
        }
    }

    /// Name the ledger that commits this log (`tally_ledger::app_id(source_name)`), so
    /// each query reads the tail from the position its table version records.
    pub fn with_ledger_app_id(mut self, app_id: String) -> Self {
        self.app_id = Some(app_id);
        self
    }

    /// Bring the cache up to the log's durable end, starting no earlier than `floor`.
    fn catch_up(&self, cache: &mut TailCache, floor: Position) {
        if floor < cache.start || cache.next < floor {
            // Restarted below what we hold (or far behind): start over from the floor.
            cache.events.clear();
            cache.start = floor;
            cache.next = floor;
        } else {
            cache.events.retain(|(p, _)| *p >= floor);
            cache.start = floor;
        }
        let end = self.log.durable_end();
        while cache.next < end {
            let records = match self.log.read(cache.next, READ_CHUNK) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(code = e.code(), error = %e, from = %cache.next, "queries: reading the log tail failed; the tail may be incomplete");
                    return;
                }
            };
            let Some(last) = records.last() else {
                return;
            };
            cache.next = last.next;
            for r in records {
                match tally_events::decode(&r.payload) {
                    Ok(ev) => cache.events.push((r.position, ev)),
                    Err(e) => {
                        tracing::debug!(code = e.code(), position = %r.position, "queries: skipping undecodable record in the tail");
                    }
                }
            }
        }
    }
}

impl TailSource for LogTail {
    fn tail(&self, table: Table) -> Vec<RecordBatch> {
        self.tail_from(table, None)
    }

    fn ledger_app_id(&self) -> Option<&str> {
        self.app_id.as_deref()
    }

    fn tail_from(&self, table: Table, from: Option<Position>) -> Vec<RecordBatch> {
        let from = from.unwrap_or_else(|| self.committed.committed(table));
        let floor = Table::ALL
            .iter()
            .map(|t| self.committed.committed(*t))
            .min()
            .unwrap_or(Position::START)
            .min(from);
        let mut cache = self.cache.lock();
        self.catch_up(&mut cache, floor);
        let events = cache
            .events
            .iter()
            .filter(|(p, _)| *p >= from)
            .map(|(_, e)| e);
        let batch = match table {
            Table::Usage => {
                let v: Vec<UsageEvent> = events
                    .filter_map(|e| match e {
                        Event::Usage(u) => Some(u.clone()),
                        _ => None,
                    })
                    .collect();
                if v.is_empty() {
                    return Vec::new();
                }
                usage_to_batch(&v)
            }
            Table::Decisions => {
                let v: Vec<DecisionEvent> = events
                    .filter_map(|e| match e {
                        Event::Decision(d) => Some(d.clone()),
                        _ => None,
                    })
                    .collect();
                if v.is_empty() {
                    return Vec::new();
                }
                decisions_to_batch(&v)
            }
            Table::Corrections => {
                let v: Vec<CorrectionEvent> = events
                    .filter_map(|e| match e {
                        Event::Correction(c) => Some(c.clone()),
                        _ => None,
                    })
                    .collect();
                if v.is_empty() {
                    return Vec::new();
                }
                corrections_to_batch(&v)
            }
        };
        match batch.and_then(|b| with_day_column(table, &b)) {
            Ok(b) => vec![b],
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "queries: converting the log tail failed; the tail is left out");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_events::EventHeader;
    use tally_events::log::{LogConfig, SegmentLog};

    fn usage(request_id: &str) -> Event {
        Event::Usage(UsageEvent {
            header: EventHeader::new("gw", request_id, "acme"),
            upstream: None,
            status_code: Some(200),
            streamed: false,
            finish_state: tally_events::FinishState::Completed,
            tokens: tally_events::TokenCounts {
                input_tokens: 10,
                output_tokens: 5,
                ..Default::default()
            },
            usage_source: tally_events::UsageSource::ProviderReported,
            cost_micros: 7,
            price_version: None,
            latency_ms: 3,
            ttft_ms: None,
            retry_attempt: 0,
            retry_of: None,
        })
    }

    fn decision(request_id: &str) -> Event {
        Event::Decision(DecisionEvent::new(
            EventHeader::new("gw", request_id, "acme"),
            tally_events::Outcome::Allow,
            "default",
            tally_events::RuleKind::Default,
            "no rule matched".into(),
        ))
    }

    async fn append(log: &SegmentLog, e: &Event) -> Position {
        let receipt = log.append("acme", &tally_events::encode(e)).unwrap();
        receipt.durable().await.unwrap();
        log.durable_end()
    }

    fn ids(batches: &[RecordBatch]) -> Vec<String> {
        use arrow::array::AsArray;
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("request_id")
                    .map(|c| {
                        c.as_string::<i32>()
                            .iter()
                            .map(|s| s.unwrap_or_default().to_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn tail_returns_only_uncommitted_events_of_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SegmentLog::open(dir.path(), &LogConfig::default()).unwrap());
        let after_first = append(&log, &usage("req-1")).await;
        append(&log, &decision("req-2")).await;
        append(&log, &usage("req-3")).await;

        let committed = Arc::new(Mutex::new(after_first));
        let c2 = committed.clone();
        let positions = move |t: Table| match t {
            Table::Usage => *c2.lock(),
            _ => Position::START,
        };
        let tail = LogTail::new(log.clone(), Arc::new(positions));
        let usage_tail = tail.tail(Table::Usage);
        assert_eq!(ids(&usage_tail), vec!["req-3"]);
        assert_eq!(usage_tail[0].schema(), Table::Usage.table_schema());
        assert_eq!(ids(&tail.tail(Table::Decisions)), vec!["req-2"]);
        assert!(tail.tail(Table::Corrections).is_empty());

        // New records show up; committed ones disappear.
        let end = append(&log, &usage("req-4")).await;
        assert_eq!(ids(&tail.tail(Table::Usage)), vec!["req-3", "req-4"]);
        *committed.lock() = end;
        assert!(tail.tail(Table::Usage).is_empty());
        assert_eq!(ids(&tail.tail(Table::Decisions)), vec!["req-2"]);
    }
}
