//! One partition of the event topic seen as an [`EventLog`] that a ledger reads: `read`
//! positions the consumer on the partition and polls, `durable_end` is the partition's
//! high watermark, `checkpoint` is a no-op (the topic's retention, not the reader, drops
//! records). Read-only: appends are refused. Must not be shared between ledgers: each
//! partition has its own ledger with its own positions.
//!
//! [`EventLog`]: crate::log::EventLog

use std::time::Duration;

use parking_lot::Mutex;

use super::{KafkaConfig, KafkaReader};
use crate::log::{EventLog, LogError, Position, Receipt, Record, Span};

/// How long one `read` waits for a first record.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// A read-only view of one partition of the Kafka topic.
pub struct KafkaPartitionLog {
    partition: u32,
    /// How long a `read` keeps polling while the partition has records past `from`
    /// (a fresh assignment takes a fetch round-trip before the first record).
    read_timeout: Duration,
    /// The reader, and the position it will return next (after the last `read`).
    reader: Mutex<(KafkaReader, Option<Position>)>,
}

impl std::fmt::Debug for KafkaPartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPartitionLog")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl KafkaPartitionLog {
    /// A view of `partition` of the configured topic.
    pub fn open(config: &KafkaConfig, partition: u32) -> Result<Self, LogError> {
        Ok(Self {
            partition,
            read_timeout: Duration::from_millis(config.read_timeout_ms),
            reader: Mutex::new((KafkaReader::standalone(config)?, None)),
        })
    }

    /// The topic's partition count (to open one view per partition).
    pub fn partitions(config: &KafkaConfig) -> Result<u32, LogError> {
        KafkaReader::standalone(config)?.partitions()
    }

    /// `from` on this partition: positions of another partition (the log's start
    /// `(0, 0)` of a fresh ledger) mean the partition's beginning.
    fn on_partition(&self, from: Position) -> Position {
        if from.segment == u64::from(self.partition) {
            from
        } else {
            Position::new(u64::from(self.partition), 0)
        }
    }
}

impl EventLog for KafkaPartitionLog {
    fn append(&self, _key: &str, _payload: &[u8]) -> Result<Receipt, LogError> {
        Err(LogError::Closed(
            "a Kafka partition view is read-only; the enforcers write the topic".into(),
        ))
    }

    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        let from = self.on_partition(from);
        let mut guard = self.reader.lock();
        let (reader, next) = &mut *guard;
        if *next != Some(from) {
            reader.assign(&[from])?;
        }
        let deadline = std::time::Instant::now() + self.read_timeout;
        let mut records: Vec<Record> = Vec::new();
        loop {
            records.extend(
                reader
                    .poll(max, POLL_WAIT)?
                    .into_iter()
                    .filter(|r| r.position.segment == u64::from(self.partition)),
            );
            if !records.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            // Nothing yet: wait longer only if the partition has records past `from`.
            let (_, high) = reader.watermarks(self.partition)?;
            if high <= from.offset {
                break;
            }
        }
        if let Err(e) = contiguous(self.partition, from, &records) {
            *next = None;
            return Err(e);
        }
        *next = Some(records.last().map_or(from, |r| r.next));
        Ok(records)
    }

    fn checkpoint(&self, _upto: Position) -> Result<(), LogError> {
        Ok(())
    }

    fn span(&self, from: Position, to: Position) -> Option<Span> {
        let (from, to) = (self.on_partition(from), self.on_partition(to));
        Some(Span::Records(to.offset.saturating_sub(from.offset)))
    }

    fn durable_end(&self) -> Position {
        let guard = self.reader.lock();
        match guard.0.watermarks(self.partition) {
            Ok((_, high)) => Position::new(u64::from(self.partition), high),
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "reading the partition's high watermark");
                Position::new(u64::from(self.partition), 0)
            }
        }
    }
}

/// The records read from `from` must continue it offset by offset: tally's topic has no
/// transactions and no compaction, so a gap means records were skipped (a broker that
/// answers a fetch from inside a record batch with the next batch does this) or deleted
/// by retention before they were read. Reading from offset 0 may start at the first
/// offset retention kept.
fn contiguous(partition: u32, from: Position, records: &[Record]) -> Result<(), LogError> {
    let mut expected = (from.offset > 0).then_some(from.offset);
    for r in records {
        if let Some(e) = expected
            && r.position.offset != e
        {
            return Err(LogError::KafkaGap {
                partition,
                expected: e,
                found: r.position.offset,
            });
        }
        expected = Some(r.next.offset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offsets: &[u64]) -> Vec<Record> {
        offsets
            .iter()
            .map(|&o| Record {
                position: Position::new(2, o),
                next: Position::new(2, o + 1),
                payload: bytes::Bytes::new(),
            })
            .collect()
    }

    #[test]
    fn offsets_must_continue_the_read_position() {
        assert!(contiguous(2, Position::new(2, 5), &at(&[5, 6, 7])).is_ok());
        assert!(contiguous(2, Position::new(2, 5), &[]).is_ok());
        // From the start: whatever retention kept first.
        assert!(contiguous(2, Position::new(2, 0), &at(&[40, 41])).is_ok());
        let e = contiguous(2, Position::new(2, 5), &at(&[8, 9])).unwrap_err();
        assert_eq!(e.code(), "log.kafka_gap");
        assert!(e.to_string().contains("offset 8 where 5"), "{e}");
        let e = contiguous(2, Position::new(2, 0), &at(&[0, 1, 3])).unwrap_err();
        assert!(e.to_string().contains("offset 3 where 2"), "{e}");
    }
}
