//! [`KafkaLog`]: the [`EventLog`] over a Kafka topic. Appends go to an idempotent
//! producer (`acks=all`) whose delivery reports settle the receipts; reads fetch one
//! partition from a position. Must not retry on its own beyond librdkafka's idempotent
//! retries (the spool decides what happens after a failure) and must not block `append`
//! on the network.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::super::receipt::Watermark;
use super::super::{EventLog, LogError, Position, Receipt, Record};
use super::{KafkaConfig, log_error, offset_of, partition_of};

/// Called once with the delivery report of one record: its position, or why it failed.
pub(crate) type OnDelivery = Box<dyn FnOnce(Result<Position, LogError>) + Send + Sync>;

/// Counters of a [`KafkaLog`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KafkaStats {
    /// Records handed to the producer.
    pub produced: u64,
    /// Records acknowledged by the brokers.
    pub acked: u64,
    /// Records whose delivery failed.
    pub failed: u64,
}

/// Producer context: routes each delivery report to the callback given at append.
struct DeliveryContext {
    acked: AtomicU64,
    failed: AtomicU64,
    /// The highest position acknowledged so far, plus one offset.
    end: Mutex<Position>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<OnDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                let position = Position::new(
                    u64::try_from(message.partition()).unwrap_or(0),
                    u64::try_from(message.offset()).unwrap_or(0),
                );
                let next = Position::new(position.segment, position.offset + 1);
                let mut end = self.end.lock();
                if next > *end {
                    *end = next;
                }
                Ok(position)
            }
            Err((err, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(log_error("delivering a record to Kafka", err))
            }
        };
        done(outcome);
    }
}

/// The event log on a Kafka topic. `Send + Sync`; usable as `Arc<dyn EventLog>`.
///
/// A receipt resolves on the record's delivery report (acknowledged by all in-sync
/// replicas). Its [`Receipt::position`] is `(0, n)` for the n-th append of this handle,
/// an append ticket: Kafka assigns the offset on delivery, and readers see it. A failed
/// delivery fails the receipt with `log.closed` whose message carries the cause's code
/// (`log.kafka_unavailable`, `log.kafka_rejected`).
pub struct KafkaLog {
    config: KafkaConfig,
    producer: ThreadedProducer<DeliveryContext>,
    /// Reader for [`EventLog::read`], created on first use.
    reader: Mutex<Option<BaseConsumer>>,
    /// Append tickets handed out.
    seq: AtomicU64,
    /// Records handed to the producer.
    produced: AtomicU64,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Create the producer. Does not wait for the brokers: appends made while they are
    /// unreachable are queued (and fail after `produce_timeout_ms`).
    pub fn open(config: &KafkaConfig) -> Result<KafkaLog, LogError> {
        config.validate()?;
        let context = DeliveryContext {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            end: Mutex::new(Position::START),
        };
        let producer = config
            .producer_config()
            .create_with_context(context)
            .map_err(|e| LogError::KafkaConfig(format!("creating the Kafka producer: {e}")))?;
        Ok(KafkaLog {
            config: config.clone(),
            producer,
            reader: Mutex::new(None),
            seq: AtomicU64::new(0),
            produced: AtomicU64::new(0),
        })
    }

    /// The settings this log was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> KafkaStats {
        let ctx = self.producer.context();
        let acked = ctx.acked.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        KafkaStats {
            produced: self.produced.load(Ordering::Relaxed),
            acked,
            failed,
        }
    }

    /// Hand one record to the producer; `done` is called with its delivery report
    /// (never if this returns an error).
    pub(crate) fn produce(
        &self,
        key: &str,
        payload: &[u8],
        done: OnDelivery,
    ) -> Result<(), LogError> {
        let record = BaseRecord::with_opaque_to(&self.config.topic, Box::new(done))
            .key(key)
            .payload(payload);
        match self.producer.send(record) {
            Ok(()) => {
                self.produced.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((err, _record)) => Err(log_error("queueing a record for Kafka", &err)),
        }
    }

    /// Wait up to `timeout` for every queued record's delivery report.
    pub fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer
            .flush(timeout)
            .map_err(|e| log_error("flushing the Kafka producer", &e))
    }

    /// Records queued or in flight, not yet reported.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Check that the brokers answer and know the topic, within `timeout`: the number of
    /// partitions of the topic.
    pub fn probe(&self, timeout: Duration) -> Result<u32, LogError> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.config.topic), timeout)
            .map_err(|e| log_error("fetching topic metadata", &e))?;
        topic_partitions(&metadata, &self.config.topic)
    }

    fn read_partition(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        let timeout = Duration::from_millis(self.config.read_timeout_ms);
        let partition = partition_of(from)?;
        let mut slot = self.reader.lock();
        let reader = match &mut *slot {
            Some(reader) => reader,
            None => {
                let reader: BaseConsumer =
                    self.config.consumer_config(None).create().map_err(|e| {
                        LogError::KafkaConfig(format!("creating a Kafka reader: {e}"))
                    })?;
                slot.insert(reader)
            }
        };
        let partitions = topic_partitions(
            &reader
                .fetch_metadata(Some(&self.config.topic), timeout)
                .map_err(|e| log_error("fetching topic metadata", &e))?,
            &self.config.topic,
        )?;
        if from.segment >= u64::from(partitions) {
            return Err(LogError::BadPosition(from));
        }
        let (low, high) = reader
            .fetch_watermarks(&self.config.topic, partition, timeout)
            .map_err(|e| log_error("fetching partition offsets", &e))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        // Offset 0 means "the beginning", wherever retention left it.
        let start = if from.offset == 0 { low } else { from.offset };
        if start < low || start > high {
            return Err(LogError::BadPosition(from));
        }
        let wanted = usize::try_from(high - start).unwrap_or(usize::MAX).min(max);
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.config.topic,
            partition,
            Offset::Offset(offset_of(Position::new(from.segment, start))?),
        )
        .map_err(|e| log_error("assigning the partition", &e))?;
        reader
            .assign(&tpl)
            .map_err(|e| log_error("assigning the partition", &e))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(wanted);
        while out.len() < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match reader.poll(left) {
                None => break,
                Some(Err(e)) => return Err(log_error("reading from Kafka", &e)),
                Some(Ok(message)) => out.push(to_record(&message)),
            }
        }
        Ok(out)
    }
}

/// A consumed message as a [`Record`].
pub(super) fn to_record(message: &impl Message) -> Record {
    let partition = u64::try_from(message.partition()).unwrap_or(0);
    let offset = u64::try_from(message.offset()).unwrap_or(0);
    Record {
        position: Position::new(partition, offset),
        next: Position::new(partition, offset + 1),
        payload: message
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
    }
}

/// Partitions of `topic` in `metadata`, or why the topic is not usable.
pub(super) fn topic_partitions(
    metadata: &rdkafka::metadata::Metadata,
    topic: &str,
) -> Result<u32, LogError> {
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(LogError::KafkaUnavailable(format!(
            "topic `{topic}` is not in the brokers' metadata"
        )));
    };
    if let Some(err) = t.error() {
        return Err(LogError::KafkaUnavailable(format!(
            "topic `{topic}`: {}",
            rdkafka::error::RDKafkaErrorCode::from(err)
        )));
    }
    if t.partitions().is_empty() {
        return Err(LogError::KafkaUnavailable(format!(
            "topic `{topic}` has no partitions; create it (kafka.partitions)"
        )));
    }
    Ok(t.partitions().len() as u32)
}

impl EventLog for KafkaLog {
    fn append(&self, key: &str, payload: &[u8]) -> Result<Receipt, LogError> {
        let ticket = Position::new(0, self.seq.fetch_add(1, Ordering::Relaxed));
        let mark = Arc::new(Watermark::new(ticket));
        let settle = Arc::clone(&mark);
        self.produce(
            key,
            payload,
            Box::new(move |result| match result {
                Ok(_) => settle.advance(Position::new(ticket.segment, ticket.offset + 1)),
                Err(e) => settle.stop(&e.to_string()),
            }),
        )?;
        Ok(Receipt::pending(ticket, mark))
    }

    /// Reads partition `from.segment` from Kafka offset `from.offset` (0: its first
    /// retained record). Records of other partitions need their own positions.
    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        self.read_partition(from, max)
    }

    /// Kafka's retention is the topic's (`retention.ms`); nothing to reclaim here.
    fn checkpoint(&self, _upto: Position) -> Result<(), LogError> {
        Ok(())
    }

    /// The position after the highest record this handle has had acknowledged (ordered
    /// by partition, then offset). Per-partition ends come from
    /// [`super::KafkaReader::watermarks`].
    fn durable_end(&self) -> Position {
        *self.producer.context().end.lock()
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Give queued records a short chance; the rest fail their receipts (purged).
        let _ = self.producer.flush(Duration::from_millis(500));
    }
}
