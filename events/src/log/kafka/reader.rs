//! [`KafkaReader`]: a partition-aware consumer of the event topic for the ledger and for
//! enforcers folding in other instances' usage. Either assigned explicitly (positions
//! the caller keeps), a consumer group member whose newly assigned partitions start
//! from positions the caller supplies, or a group member that only takes part in the
//! assignment and fetches nothing (its owner reads the partitions it is given through
//! readers of its own). Owns rebalance bookkeeping; must not commit
//! offsets on its own: Kafka's committed offsets are only a hint, the caller's positions
//! (kept in its own commits) are the truth.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::super::{LogError, Position, Record};
use super::producer::{to_record, topic_partitions};
use super::{KafkaConfig, log_error, offset_of, partition_of};

/// Where a newly assigned partition starts: `Some(offset)` from the caller's own
/// committed position (the offset of the next record to read), `None` for Kafka's
/// committed offset hint, or the partition's beginning if there is none.
pub type StartPositions = Arc<dyn Fn(u32) -> Option<u64> + Send + Sync>;

/// A change of a group member's partitions, in the order they happened.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RebalanceEvent {
    /// These partitions were assigned (reading starts per [`StartPositions`]).
    Assigned(Vec<u32>),
    /// These partitions were taken away: stop working on them (and commit what is done).
    Revoked(Vec<u32>),
    /// The group reported an error.
    Error(String),
}

/// Consumer context: records rebalances and applies the caller's start positions.
struct ReaderContext {
    topic: String,
    start: Option<StartPositions>,
    /// Pause partitions as they are assigned (a member for the assignment only).
    pause_assigned: bool,
    assigned: Mutex<BTreeSet<u32>>,
    events: Mutex<Vec<RebalanceEvent>>,
}

fn partitions_in(tpl: &TopicPartitionList) -> Vec<u32> {
    tpl.elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect()
}

impl ClientContext for ReaderContext {}

impl ConsumerContext for ReaderContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_in(tpl);
                if let Some(start) = &self.start {
                    // Re-assign with the caller's positions (still inside the callback,
                    // before any fetch starts).
                    let mut with = TopicPartitionList::new();
                    for &p in &parts {
                        let offset = match start(p).and_then(|o| i64::try_from(o).ok()) {
                            Some(o) => Offset::Offset(o),
                            None => Offset::Stored,
                        };
                        let _ = with.add_partition_offset(&self.topic, p as i32, offset);
                    }
                    if let Err(e) = consumer.assign(&with) {
                        self.events.lock().push(RebalanceEvent::Error(format!(
                            "assigning start positions: {e}"
                        )));
                    }
                }
                if self.pause_assigned
                    && let Err(e) = consumer.pause(tpl)
                {
                    self.events.lock().push(RebalanceEvent::Error(format!(
                        "pausing assigned partitions: {e}"
                    )));
                }
                self.assigned.lock().extend(parts.iter().copied());
                self.events.lock().push(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Revoke(tpl) => {
                let parts = partitions_in(tpl);
                let mut assigned = self.assigned.lock();
                for p in &parts {
                    assigned.remove(p);
                }
                drop(assigned);
                self.events.lock().push(RebalanceEvent::Revoked(parts));
            }
            Rebalance::Error(e) => self
                .events
                .lock()
                .push(RebalanceEvent::Error(e.to_string())),
        }
    }
}

/// A consumer of the event topic returning [`Record`]s with per-partition positions
/// (`Position { segment: partition, offset }`). Not `Sync`-shared by design: one owner
/// polls it (rebalance callbacks run inside [`KafkaReader::poll`]).
pub struct KafkaReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    group: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl KafkaReader {
    fn create(
        config: &KafkaConfig,
        group: Option<&str>,
        start: Option<StartPositions>,
        pause_assigned: bool,
    ) -> Result<Self, LogError> {
        config.validate()?;
        let context = ReaderContext {
            topic: config.topic.clone(),
            start,
            pause_assigned,
            assigned: Mutex::new(BTreeSet::new()),
            events: Mutex::new(Vec::new()),
        };
        let consumer = config
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|e| LogError::KafkaConfig(format!("creating a Kafka reader: {e}")))?;
        Ok(KafkaReader {
            consumer,
            topic: config.topic.clone(),
            group: group.map(str::to_owned),
            timeout: Duration::from_millis(config.read_timeout_ms),
        })
    }

    /// A reader without a group: call [`KafkaReader::assign`] with the positions to read.
    pub fn standalone(config: &KafkaConfig) -> Result<Self, LogError> {
        Self::create(config, None, None, false)
    }

    /// A member of consumer group `group` sharing the topic's partitions with the other
    /// members. Each partition assigned to it starts at `start(partition)`.
    pub fn join_group(
        config: &KafkaConfig,
        group: &str,
        start: StartPositions,
    ) -> Result<Self, LogError> {
        let reader = Self::create(config, Some(group), Some(start), false)?;
        reader
            .consumer
            .subscribe(&[&reader.topic])
            .map_err(|e| log_error("joining the consumer group", &e))?;
        Ok(reader)
    }

    /// A member of consumer group `group` that only takes part in the assignment: the
    /// partitions assigned to it are paused at once, so it fetches no records. Poll it
    /// regularly (rebalances run inside [`KafkaReader::poll`], and a member that stops
    /// polling leaves the group) and read the partitions of
    /// [`RebalanceEvent::Assigned`] through readers of your own, from positions you
    /// keep. Dropping it leaves the group.
    pub fn join_group_for_assignment(config: &KafkaConfig, group: &str) -> Result<Self, LogError> {
        let reader = Self::create(config, Some(group), None, true)?;
        reader
            .consumer
            .subscribe(&[&reader.topic])
            .map_err(|e| log_error("joining the consumer group", &e))?;
        Ok(reader)
    }

    /// Read exactly these partitions, each from its position (replaces any assignment).
    pub fn assign(&self, starts: &[Position]) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for &p in starts {
            tpl.add_partition_offset(&self.topic, partition_of(p)?, Offset::Offset(offset_of(p)?))
                .map_err(|e| log_error("assigning partitions", &e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| log_error("assigning partitions", &e))?;
        let mut assigned = self.consumer.context().assigned.lock();
        assigned.clear();
        assigned.extend(starts.iter().filter_map(|p| u32::try_from(p.segment).ok()));
        Ok(())
    }

    /// Up to `max` records, waiting at most `timeout` for the first one. Records of one
    /// partition come in offset order; partitions interleave. Rebalance callbacks run here.
    pub fn poll(&self, max: usize, timeout: Duration) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < max {
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => {
                    if out.is_empty() && Instant::now() < deadline {
                        continue;
                    }
                    break;
                }
                Some(Err(e)) => {
                    if out.is_empty() {
                        return Err(log_error("reading from Kafka", &e));
                    }
                    break;
                }
                Some(Ok(message)) => out.push(to_record(&message)),
            }
        }
        Ok(out)
    }

    /// Partitions currently assigned to this reader.
    pub fn assignment(&self) -> Vec<u32> {
        self.consumer
            .context()
            .assigned
            .lock()
            .iter()
            .copied()
            .collect()
    }

    /// Rebalances since the last call, oldest first.
    pub fn take_rebalance_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.consumer.context().events.lock())
    }

    /// Record `next` positions as the group's committed offsets: a hint for tools and for
    /// members without a position of their own, never the source of truth.
    pub fn commit_hint(&self, next: &[Position]) -> Result<(), LogError> {
        if self.group.is_none() || next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in next {
            tpl.add_partition_offset(&self.topic, partition_of(p)?, Offset::Offset(offset_of(p)?))
                .map_err(|e| log_error("committing offsets", &e))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| log_error("committing offsets", &e))
    }

    /// `(low, high)` offsets of `partition`: its first retained record and the offset the
    /// next record will get.
    pub fn watermarks(&self, partition: u32) -> Result<(u64, u64), LogError> {
        let p = partition_of(Position::new(u64::from(partition), 0))?;
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, p, self.timeout)
            .map_err(|e| log_error("fetching partition offsets", &e))?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }

    /// Partitions of the topic.
    pub fn partitions(&self) -> Result<u32, LogError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| log_error("fetching topic metadata", &e))?;
        topic_partitions(&metadata, &self.topic)
    }
}
