//! The event log abstraction: append with a durability acknowledgement, read/tail from
//! a position, and checkpoint for retention. The local segment log ([`SegmentLog`]) is
//! the embedded default and the spool for Kafka outages; the Kafka log implements the
//! same trait. Must not interpret payloads (they are opaque encoded events).

#[cfg(feature = "kafka")]
mod kafka;
mod receipt;
mod segment;
#[cfg(feature = "kafka")]
mod spool;

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use receipt::Receipt;
pub use segment::{LogStats, SegmentLog};
#[cfg(feature = "kafka")]
pub use {
    kafka::{
        KafkaConfig, KafkaLog, KafkaPartitionLog, KafkaReader, KafkaStats, RebalanceEvent,
        SpoolConfig, StartPositions,
    },
    spool::{SpoolStats, SpoolingLog},
};

/// A place in a log: the segment (or partition) and the byte offset within it.
/// Ordered: every record's position is greater than its predecessors'.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    /// The very beginning of a log.
    pub const START: Position = Position {
        segment: 0,
        offset: 0,
    };

    pub const fn new(segment: u64, offset: u64) -> Self {
        Self { segment, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// One record read back from a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// Where the record starts.
    pub position: Position,
    /// Where the next record starts: the position to resume reading from.
    pub next: Position,
    /// The opaque payload (an encoded event); records read together may share one
    /// buffer.
    pub payload: Bytes,
}

/// When appended records are made durable (fsync) before being acknowledged.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every acknowledged record has been fsynced; records appended while an fsync runs
    /// share the next one (group commit), so an acknowledgement waits about one fsync
    /// (well under a millisecond on a local SSD) and busy periods need fewer fsyncs than
    /// records.
    #[default]
    Always,
    /// Records are fsynced together every `fsync_interval_ms`; acknowledged after that.
    /// Fewer fsyncs when they are slow (network disks), at the price of waiting up to the
    /// interval for each acknowledgement (with `respond_after: durable`, each response).
    Interval,
}

/// Settings of the local segment log (`log:` in tally.yaml).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Directory of segment files. Default: `<data-dir>/log`.
    pub dir: Option<PathBuf>,
    /// `always` (group commit: acknowledged after the next fsync) or `interval` (fsync
    /// every `fsync_interval_ms`).
    pub fsync: FsyncPolicy,
    /// Group-commit interval for `fsync: interval`, milliseconds.
    pub fsync_interval_ms: u64,
    /// A segment is closed and a new one started past this size, bytes.
    pub segment_bytes: u64,
    /// Largest accepted record payload, bytes.
    pub max_record_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            dir: None,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 5,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Errors of an event log. Each has a stable code (see [`LogError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "log.io: {context}: {source}. Check that the log directory exists, is writable and the disk is not full"
    )]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "log.corrupt: record at {position} in {file} is corrupt ({detail}) and valid records follow it; this is not a torn tail, so nothing was truncated. Inspect with `tally log inspect`, restore the file from a copy, or move it aside"
    )]
    Corrupt {
        file: PathBuf,
        position: Position,
        detail: String,
    },
    #[error("log.record_too_large: record of {size} bytes exceeds log.max_record_bytes ({max})")]
    RecordTooLarge { size: usize, max: u32 },
    #[error("log.closed: the log is closed or its writer stopped after an earlier error: {0}")]
    Closed(String),
    #[error(
        "log.position: position {0} is not in the log (deleted by retention or beyond the end)"
    )]
    BadPosition(Position),
    #[error("log.kafka_config: {0}. Fix the `kafka:` settings in tally.yaml")]
    KafkaConfig(String),
    #[error(
        "log.kafka_unavailable: {0}. Check that kafka.brokers are reachable and the topic exists; with the outage spool, records are kept locally meanwhile"
    )]
    KafkaUnavailable(String),
    #[error(
        "log.kafka_rejected: {0}. The broker refused the record; check the topic's settings (max.message.bytes, ACLs) against kafka.spool.max_record_bytes"
    )]
    KafkaRejected(String),
    #[error(
        "log.spool_full: Kafka is not taking records and the outage spool already holds {bytes} bytes (kafka.spool.max_bytes = {max}). Restore the brokers or raise kafka.spool.max_bytes"
    )]
    SpoolFull { bytes: u64, max: u64 },
    #[error(
        "log.kafka_gap: partition {partition} of the topic returned offset {found} where {expected} was expected, so records would be skipped. tally's topic has no transactions and no compaction, so offsets are contiguous: this is a broker defect, or retention deleted records the ledger had not read yet. Nothing past the gap is committed; check the broker and the topic's retention"
    )]
    KafkaGap {
        partition: u32,
        expected: u64,
        found: u64,
    },
}

impl LogError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::Io { .. } => "log.io",
            LogError::Corrupt { .. } => "log.corrupt",
            LogError::RecordTooLarge { .. } => "log.record_too_large",
            LogError::Closed(_) => "log.closed",
            LogError::BadPosition(_) => "log.position",
            LogError::KafkaConfig(_) => "log.kafka_config",
            LogError::KafkaUnavailable(_) => "log.kafka_unavailable",
            LogError::KafkaRejected(_) => "log.kafka_rejected",
            LogError::SpoolFull { .. } => "log.spool_full",
            LogError::KafkaGap { .. } => "log.kafka_gap",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An append-only, durable, ordered event log.
pub trait EventLog: Send + Sync + 'static {
    /// Append one record. `key` is the partitioning key (the tenant); logs with a single
    /// partition ignore it. Returns at once; the [`Receipt`] resolves once the record is
    /// durable under the log's policy. Never blocks on disk I/O.
    fn append(&self, key: &str, payload: &[u8]) -> Result<Receipt, LogError>;

    /// Read up to `max` durable records starting at `from` (the `next` of the last record
    /// read, or [`Position::START`]). An empty result means "nothing more yet".
    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError>;

    /// Everything before `upto` has been consumed for good (committed by the ledger):
    /// storage wholly below it may be reclaimed.
    fn checkpoint(&self, upto: Position) -> Result<(), LogError>;

    /// The position after the last durable record.
    fn durable_end(&self) -> Position;

    /// How much of the log lies from `from` up to `to`, told without reading records
    /// (for progress reports), or `None` when the log cannot tell.
    fn span(&self, from: Position, to: Position) -> Option<Span> {
        let _ = (from, to);
        None
    }
}

/// An amount of log between two positions, in the log's own unit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Span {
    /// Records (a Kafka partition: offsets count records).
    Records(u64),
    /// Bytes of framed records (the local segment log: positions are byte offsets).
    Bytes(u64),
}
