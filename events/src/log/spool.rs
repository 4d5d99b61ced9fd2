//! The outage spool: [`SpoolingLog`] appends to Kafka and, when Kafka is unreachable or
//! slower than `kafka.spool.spool_after_ms`, to a local [`SegmentLog`] instead, so
//! appends keep being acknowledged; a background thread drains the spool into Kafka in
//! order once the brokers answer again, then checkpoints it. Owns the hand-over between
//! the two and the drain cursor; must not interpret payloads and must never acknowledge
//! a record before Kafka or the spool's fsync holds it.
//!
//! Guarantees:
//! - No acknowledged record is lost: a receipt resolves once the brokers acknowledged the
//!   record (`acks=all`) or the spool fsynced it; a spooled record leaves the spool only
//!   after Kafka acknowledged its drained copy.
//! - At-least-once hand-over: a record handed to the spool while its Kafka delivery was
//!   still pending may reach Kafka twice (late original, drained copy), and after a crash
//!   records drained but not yet recorded in the cursor are drained again. Consumers
//!   dedupe by `event_id` (the ledger does).
//! - Order per key after dedupe: while the spool holds undrained records every append
//!   goes to the spool, and direct appends resume only once the spool has drained.
//!
//! Spool layout: `<dir>/segments/` is a [`SegmentLog`] whose records are
//! `key_len: u16 LE | key | payload`; `<dir>/drained` holds the position draining resumes
//! from (`segment offset`, written atomically after each drained batch).

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::kafka::{KafkaConfig, KafkaLog, SpoolConfig};
use super::receipt::Watermark;
use super::{EventLog, LogConfig, LogError, Position, Receipt, Record, SegmentLog};

/// Counters of a [`SpoolingLog`], for metrics.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SpoolStats {
    /// Appends currently go to the spool (Kafka was unavailable or slow).
    pub spooling: bool,
    /// Records written to the spool since open.
    pub spooled: u64,
    /// Spooled records drained into Kafka since open.
    pub drained: u64,
    /// Records in the spool not yet drained.
    pub spool_records: u64,
    /// Bytes of the records not yet drained.
    pub spool_bytes: u64,
    /// Records acknowledged by Kafka directly (not through the spool) since open.
    pub kafka_acked: u64,
    /// Receipts that failed (neither Kafka nor the spool took the record).
    pub failed: u64,
    /// The last reason a drain attempt stopped, if it has not succeeded since.
    pub last_drain_error: Option<String>,
}

/// Signals from delivery callbacks and receipts to the worker, and counters.
#[derive(Default)]
struct Signals {
    /// A direct Kafka delivery failed: hand over to the spool.
    kafka_trouble: AtomicBool,
    kafka_acked: AtomicU64,
    failed: AtomicU64,
}

/// One leg (Kafka or spool) of a record's way to durability.
#[derive(Debug)]
enum Leg {
    NotTried,
    Pending,
    Done,
    Failed(String),
}

struct TicketState {
    settled: bool,
    kafka: Leg,
    spool: Leg,
}

/// One appended record until it is durable somewhere (or failed everywhere).
struct Ticket {
    position: Position,
    mark: Arc<Watermark>,
    key: String,
    payload: Vec<u8>,
    born: Instant,
    state: Mutex<TicketState>,
    signals: Arc<Signals>,
}

impl Ticket {
    fn new(seq: u64, key: &str, payload: &[u8], signals: Arc<Signals>) -> Self {
        let position = Position::new(0, seq);
        Self {
            position,
            mark: Arc::new(Watermark::new(position)),
            key: key.to_owned(),
            payload: payload.to_vec(),
            born: Instant::now(),
            state: Mutex::new(TicketState {
                settled: false,
                kafka: Leg::NotTried,
                spool: Leg::NotTried,
            }),
            signals,
        }
    }

    fn settled(&self) -> bool {
        self.state.lock().settled
    }

    fn spool_tried(&self) -> bool {
        !matches!(self.state.lock().spool, Leg::NotTried)
    }

    /// Update a leg, then settle the receipt if the record is durable somewhere or
    /// failed everywhere.
    fn update(&self, f: impl FnOnce(&mut TicketState)) {
        let mut state = self.state.lock();
        f(&mut state);
        if state.settled {
            return;
        }
        if matches!(state.kafka, Leg::Done) || matches!(state.spool, Leg::Done) {
            state.settled = true;
            self.mark.advance(Position::new(
                self.position.segment,
                self.position.offset + 1,
            ));
        } else if let (Leg::Failed(_) | Leg::NotTried, Leg::Failed(spool)) =
            (&state.kafka, &state.spool)
        {
            let reason = match &state.kafka {
                Leg::Failed(kafka) => {
                    format!("{kafka}; the outage spool could not take it either: {spool}")
                }
                _ => spool.clone(),
            };
            state.settled = true;
            self.signals.failed.fetch_add(1, Ordering::Relaxed);
            self.mark.stop(&reason);
        }
    }

    fn on_kafka(&self, result: Result<Position, LogError>) {
        self.update(|s| {
            s.kafka = match result {
                Ok(_) => Leg::Done,
                Err(e) => Leg::Failed(e.to_string()),
            }
        });
    }

    fn on_spool(&self, result: Result<Position, LogError>) {
        self.update(|s| {
            s.spool = match result {
                Ok(_) => Leg::Done,
                Err(e) => Leg::Failed(e.to_string()),
            }
        });
    }

    fn receipt(&self) -> Receipt {
        Receipt::pending(self.position, Arc::clone(&self.mark))
    }
}

/// A spool receipt to wait for, and the ticket it settles.
type SpoolAck = (Receipt, Arc<Ticket>);

/// Mutable state of the hand-over, under one lock so the spool's order is append order.
struct State {
    /// Appends go to the spool.
    spooling: bool,
    /// Direct appends not yet settled, in append order.
    inflight: VecDeque<Arc<Ticket>>,
    /// Records in the spool not yet drained, and their bytes.
    pending_records: u64,
    pending_bytes: u64,
    /// Where draining resumes.
    cursor: Position,
    last_drain_error: Option<String>,
    shutdown: bool,
}

struct Shared {
    kafka: KafkaLog,
    spool: SegmentLog,
    dir: PathBuf,
    config: SpoolConfig,
    produce_timeout: Duration,
    probe_timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
    seq: AtomicU64,
    signals: Arc<Signals>,
    spooled: AtomicU64,
    drained: AtomicU64,
    /// Spool receipts to wait for, with the tickets they settle.
    waiter: Mutex<Option<mpsc::Sender<SpoolAck>>>,
}

/// The event log of split mode: Kafka, with a local spool for outages. `Send + Sync`;
/// usable as `Arc<dyn EventLog>`. Reads, checkpoints and `durable_end` are Kafka's
/// ([`KafkaLog`]); the spool is invisible to readers until drained.
pub struct SpoolingLog {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
}

impl fmt::Debug for SpoolingLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolingLog")
            .field("kafka", &self.shared.kafka)
            .field("spool", &self.shared.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Bytes of a spool record's framing besides the payload.
const KEY_OVERHEAD: u32 = 2 + u16::MAX as u32;

fn encode_spooled(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + payload.len());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_spooled(record: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_le_bytes([*record.first()?, *record.get(1)?]));
    let key = std::str::from_utf8(record.get(2..2 + len)?).ok()?;
    Some((key, record.get(2 + len..)?))
}

fn cursor_path(dir: &Path) -> PathBuf {
    dir.join("drained")
}

fn read_cursor(dir: &Path) -> Result<Position, LogError> {
    let path = cursor_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::START),
        Err(e) => return Err(LogError::io(format!("reading {}", path.display()), e)),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position::new(segment, offset)),
        _ => {
            tracing::warn!(file = %path.display(), "unreadable spool cursor; draining the spool from its start (duplicates are deduped by event_id)");
            Ok(Position::START)
        }
    }
}

fn write_cursor(dir: &Path, cursor: Position) -> Result<(), LogError> {
    let path = cursor_path(dir);
    let tmp = dir.join("drained.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{} {}", cursor.segment, cursor.offset)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| LogError::io(format!("writing {}", path.display()), e))
}

/// Outcome of one drain step.
enum Drain {
    /// Records were drained; more may follow at once.
    Progress,
    /// Nothing to drain.
    Idle,
    /// Kafka did not take the batch (or the spool could not be read): retry later.
    Blocked(String),
}

impl SpoolingLog {
    /// Open the Kafka producer and the spool in `dir` (`config.spool.dir` is ignored; the
    /// caller resolves it). Records left in the spool by an earlier run are drained once
    /// Kafka answers, before any new record goes to Kafka directly.
    pub fn open(config: &KafkaConfig, dir: &Path) -> Result<SpoolingLog, LogError> {
        let kafka = KafkaLog::open(config)?;
        let spool_config = LogConfig {
            dir: None,
            fsync: config.spool.fsync,
            fsync_interval_ms: LogConfig::default().fsync_interval_ms,
            segment_bytes: config.spool.segment_bytes,
            max_record_bytes: config.spool.max_record_bytes.saturating_add(KEY_OVERHEAD),
        };
        let spool = SegmentLog::open(&dir.join("segments"), &spool_config)?;
        // Count what an earlier run left undrained.
        let mut cursor = read_cursor(dir)?;
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut pos = cursor;
        loop {
            let batch = match spool.read(pos, 4096) {
                Ok(b) => b,
                Err(LogError::BadPosition(_)) if pos == cursor && cursor != Position::START => {
                    cursor = Position::START;
                    pos = cursor;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(last) = batch.last() else { break };
            pos = last.next;
            records += batch.len() as u64;
            bytes += batch.iter().map(|r| r.payload.len() as u64).sum::<u64>();
        }
        if records > 0 {
            tracing::warn!(records, dir = %dir.display(), "the outage spool holds undrained records; appends stay spooled until they are in Kafka");
        }
        let (tx, rx) = mpsc::channel::<SpoolAck>();
        let shared = Arc::new(Shared {
            kafka,
            spool,
            dir: dir.to_path_buf(),
            config: config.spool.clone(),
            produce_timeout: Duration::from_millis(config.produce_timeout_ms),
            probe_timeout: Duration::from_millis(config.read_timeout_ms.clamp(100, 2_000)),
            state: Mutex::new(State {
                spooling: records > 0,
                inflight: VecDeque::new(),
                pending_records: records,
                pending_bytes: bytes,
                cursor,
                last_drain_error: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            signals: Arc::new(Signals::default()),
            spooled: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            waiter: Mutex::new(Some(tx)),
        });
        let waiter = std::thread::Builder::new()
            .name("tally-spool-acks".into())
            .spawn(move || {
                for (receipt, ticket) in rx {
                    ticket.on_spool(receipt.wait());
                }
            })
            .map_err(|e| LogError::io("starting the spool acknowledgement thread", e))?;
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tally-spool".into())
                .spawn(move || shared.run())
                .map_err(|e| LogError::io("starting the spool thread", e))?
        };
        Ok(SpoolingLog {
            shared,
            worker: Some(worker),
            waiter: Some(waiter),
        })
    }

    /// Counters and sizes.
    pub fn stats(&self) -> SpoolStats {
        let shared = &*self.shared;
        let state = shared.state.lock();
        SpoolStats {
            spooling: state.spooling,
            spooled: shared.spooled.load(Ordering::Relaxed),
            drained: shared.drained.load(Ordering::Relaxed),
            spool_records: state.pending_records,
            spool_bytes: state.pending_bytes,
            kafka_acked: shared.signals.kafka_acked.load(Ordering::Relaxed),
            failed: shared.signals.failed.load(Ordering::Relaxed),
            last_drain_error: state.last_drain_error.clone(),
        }
    }

    /// The Kafka side.
    pub fn kafka(&self) -> &KafkaLog {
        &self.shared.kafka
    }

    /// Stop draining, give in-flight Kafka deliveries up to `spool_after_ms`, spool what
    /// is still unacknowledged and wait for the spool's fsync. Undrained records stay in
    /// the spool for the next open.
    pub fn close(mut self) -> Result<(), LogError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), LogError> {
        let shared = &*self.shared;
        shared.state.lock().shutdown = true;
        shared.wake.notify_all();
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("the spool thread panicked");
        }
        let _ = shared
            .kafka
            .flush(Duration::from_millis(shared.config.spool_after_ms));
        {
            let mut state = shared.state.lock();
            let tickets = std::mem::take(&mut state.inflight);
            for ticket in tickets.iter().filter(|t| !t.settled() && !t.spool_tried()) {
                shared.spool_ticket(&mut state, ticket);
            }
        }
        shared.waiter.lock().take();
        if let Some(waiter) = self.waiter.take()
            && waiter.join().is_err()
        {
            return Err(LogError::Closed(
                "the spool acknowledgement thread panicked".into(),
            ));
        }
        Ok(())
    }
}

impl Drop for SpoolingLog {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "closing the spooling event log");
        }
    }
}

impl Shared {
    /// Write a ticket's record to the spool (state lock held, so spool order is append
    /// order). Failures are recorded on the ticket and returned.
    fn spool_ticket(&self, state: &mut State, ticket: &Arc<Ticket>) -> Option<LogError> {
        let frame = encode_spooled(&ticket.key, &ticket.payload);
        let len = frame.len() as u64;
        let result = if state.pending_bytes + len > self.config.max_bytes {
            Err(LogError::SpoolFull {
                bytes: state.pending_bytes,
                max: self.config.max_bytes,
            })
        } else {
            self.spool.append(&ticket.key, &frame)
        };
        let waiter = self.waiter.lock();
        match (result, waiter.as_ref()) {
            (Ok(receipt), Some(tx)) => {
                state.pending_records += 1;
                state.pending_bytes += len;
                self.spooled.fetch_add(1, Ordering::Relaxed);
                ticket.update(|s| s.spool = Leg::Pending);
                if let Err(mpsc::SendError((receipt, ticket))) =
                    tx.send((receipt, Arc::clone(ticket)))
                {
                    ticket.on_spool(receipt.wait());
                }
                None
            }
            (Ok(receipt), None) => {
                // Closing: wait here.
                state.pending_records += 1;
                state.pending_bytes += len;
                self.spooled.fetch_add(1, Ordering::Relaxed);
                ticket.on_spool(receipt.wait());
                None
            }
            (Err(e), _) => {
                let reason = e.to_string();
                ticket.update(|s| s.spool = Leg::Failed(reason));
                Some(e)
            }
        }
    }

    /// Settle finished direct appends; if the oldest is past the budget or a delivery
    /// failed, switch to spooling and hand every unsettled direct append to the spool.
    fn hand_over_if_late(&self, state: &mut State) {
        while state.inflight.front().is_some_and(|t| t.settled()) {
            state.inflight.pop_front();
        }
        let trouble = self.signals.kafka_trouble.swap(false, Ordering::Relaxed);
        let budget = Duration::from_millis(self.config.spool_after_ms);
        let late = state
            .inflight
            .front()
            .is_some_and(|t| t.born.elapsed() >= budget);
        if !(trouble || late) || state.inflight.is_empty() {
            return;
        }
        if !state.spooling {
            tracing::warn!(
                in_flight = state.inflight.len(),
                "Kafka did not acknowledge within kafka.spool.spool_after_ms; spooling locally until it is back"
            );
        }
        state.spooling = true;
        let tickets = std::mem::take(&mut state.inflight);
        for ticket in tickets.iter().filter(|t| !t.settled()) {
            self.spool_ticket(state, ticket);
        }
    }

    fn run(self: Arc<Self>) {
        let tick = Duration::from_millis((self.config.spool_after_ms / 4).clamp(5, 100));
        let retry = Duration::from_millis(self.config.retry_ms);
        let mut retry_at: Option<Instant> = None;
        loop {
            let spooling = {
                let mut state = self.state.lock();
                if state.shutdown {
                    return;
                }
                self.hand_over_if_late(&mut state);
                state.spooling
            };
            let mut pause = tick;
            if spooling && retry_at.is_none_or(|at| Instant::now() >= at) {
                match self.drain_step() {
                    Drain::Progress => {
                        retry_at = None;
                        self.state.lock().last_drain_error = None;
                        pause = Duration::ZERO;
                    }
                    Drain::Idle => retry_at = None,
                    Drain::Blocked(reason) => {
                        tracing::debug!(%reason, "spool drain postponed");
                        self.state.lock().last_drain_error = Some(reason);
                        retry_at = Some(Instant::now() + retry);
                    }
                }
            }
            let mut state = self.state.lock();
            if state.shutdown {
                return;
            }
            if !pause.is_zero() {
                self.wake.wait_for(&mut state, pause);
            }
        }
    }

    /// Send the next batch of spooled records to Kafka and wait for their delivery
    /// reports; advance the cursor over the acknowledged prefix.
    fn drain_step(&self) -> Drain {
        let cursor = self.state.lock().cursor;
        let batch = match self.spool.read(cursor, self.config.drain_batch) {
            Ok(batch) => batch,
            Err(e) => return Drain::Blocked(e.to_string()),
        };
        if batch.is_empty() {
            if self.state.lock().pending_records > 0 {
                return Drain::Idle; // spooled, not yet fsynced
            }
            // Nothing left to drain: go direct again only once Kafka answers (a hand-over
            // the spool refused leaves it empty while Kafka may still be down).
            if let Err(e) = self.kafka.probe(self.probe_timeout) {
                return Drain::Blocked(e.to_string());
            }
            let mut state = self.state.lock();
            if state.spooling && state.pending_records == 0 {
                state.spooling = false;
                tracing::info!(
                    drained = self.drained.load(Ordering::Relaxed),
                    "the outage spool has drained into Kafka; appending to Kafka directly again"
                );
            }
            return Drain::Idle;
        }
        if let Err(e) = self.kafka.probe(self.probe_timeout) {
            return Drain::Blocked(e.to_string());
        }
        let (tx, rx) = mpsc::channel::<(usize, Result<Position, LogError>)>();
        let mut sent = 0;
        let mut first_error: Option<String> = None;
        for (i, record) in batch.iter().enumerate() {
            let Some((key, payload)) = decode_spooled(&record.payload) else {
                first_error = Some(format!(
                    "log.corrupt: spool record at {} is not a framed record; move {} aside to continue",
                    record.position,
                    self.dir.display()
                ));
                break;
            };
            let tx = tx.clone();
            match self.kafka.produce(
                key,
                payload,
                Box::new(move |result| {
                    let _ = tx.send((i, result));
                }),
            ) {
                Ok(()) => sent += 1,
                Err(e) => {
                    first_error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(tx);
        let deadline = Instant::now() + self.produce_timeout + Duration::from_secs(2);
        let mut acked = vec![false; sent];
        for _ in 0..sent {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Ok(_))) => acked[i] = true,
                Ok((_, Err(e))) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    first_error.get_or_insert_with(|| {
                        "Kafka did not report on drained records in time".into()
                    });
                    break;
                }
            }
        }
        let done = acked.iter().take_while(|&&a| a).count();
        if done > 0 {
            let next = batch[done - 1].next;
            let bytes: u64 = batch[..done].iter().map(|r| r.payload.len() as u64).sum();
            {
                let mut state = self.state.lock();
                state.cursor = next;
                state.pending_records = state.pending_records.saturating_sub(done as u64);
                state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
            }
            self.drained.fetch_add(done as u64, Ordering::Relaxed);
            if let Err(e) = write_cursor(&self.dir, next) {
                tracing::warn!(error = %e, "saving the spool cursor (records may be drained twice after a restart)");
            }
            if let Err(e) = self.spool.checkpoint(next) {
                tracing::warn!(error = %e, "reclaiming drained spool segments");
            }
        }
        if done < batch.len() {
            Drain::Blocked(first_error.unwrap_or_else(|| "Kafka did not take the batch".into()))
        } else {
            Drain::Progress
        }
    }
}

impl EventLog for SpoolingLog {
    /// Returns at once. The receipt resolves when Kafka or the spool holds the record and
    /// fails only if neither can (its message then carries both causes' codes, e.g.
    /// `log.kafka_unavailable` and `log.spool_full`). Its position is an append ticket
    /// `(0, n)`, not a Kafka offset.
    fn append(&self, key: &str, payload: &[u8]) -> Result<Receipt, LogError> {
        let shared = &*self.shared;
        if payload.len() > shared.config.max_record_bytes as usize {
            return Err(LogError::RecordTooLarge {
                size: payload.len(),
                max: shared.config.max_record_bytes,
            });
        }
        if key.len() > usize::from(u16::MAX) {
            return Err(LogError::KafkaRejected(format!(
                "a partitioning key of {} bytes is longer than 65535",
                key.len()
            )));
        }
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        let ticket = Arc::new(Ticket::new(seq, key, payload, Arc::clone(&shared.signals)));
        let mut state = shared.state.lock();
        if state.shutdown {
            return Err(LogError::Closed("the spooling log is closed".into()));
        }
        if state.spooling {
            if let Some(e) = shared.spool_ticket(&mut state, &ticket) {
                return Err(e);
            }
            return Ok(ticket.receipt());
        }
        ticket.update(|s| s.kafka = Leg::Pending);
        let settle = Arc::clone(&ticket);
        let signals = Arc::clone(&shared.signals);
        let produced = shared.kafka.produce(
            key,
            payload,
            Box::new(move |result| {
                if result.is_ok() {
                    signals.kafka_acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    signals.kafka_trouble.store(true, Ordering::Relaxed);
                }
                settle.on_kafka(result);
            }),
        );
        match produced {
            Ok(()) => state.inflight.push_back(Arc::clone(&ticket)),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka refused a record at once; spooling locally until it is back");
                ticket.on_kafka(Err(e));
                state.spooling = true;
                // Earlier direct appends go first, keeping the spool in append order.
                let earlier = std::mem::take(&mut state.inflight);
                for t in earlier.iter().filter(|t| !t.settled() && !t.spool_tried()) {
                    shared.spool_ticket(&mut state, t);
                }
                if let Some(e) = shared.spool_ticket(&mut state, &ticket) {
                    return Err(e);
                }
            }
        }
        Ok(ticket.receipt())
    }

    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        self.shared.kafka.read(from, max)
    }

    fn checkpoint(&self, upto: Position) -> Result<(), LogError> {
        self.shared.kafka.checkpoint(upto)
    }

    fn durable_end(&self) -> Position {
        self.shared.kafka.durable_end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_records_frame_the_key() {
        let frame = encode_spooled("acme", b"{\"x\":1}");
        assert_eq!(decode_spooled(&frame), Some(("acme", &b"{\"x\":1}"[..])));
        assert_eq!(decode_spooled(&frame[..3]), None);
        assert_eq!(
            decode_spooled(&encode_spooled("", b"")),
            Some(("", &b""[..]))
        );
    }

    #[test]
    fn cursor_round_trips_and_defaults_to_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_cursor(dir.path()).ok(), Some(Position::START));
        assert!(write_cursor(dir.path(), Position::new(3, 160)).is_ok());
        assert_eq!(read_cursor(dir.path()).ok(), Some(Position::new(3, 160)));
        assert!(fs::write(cursor_path(dir.path()), "garbage").is_ok());
        assert_eq!(read_cursor(dir.path()).ok(), Some(Position::START));
    }
}
