//! The Kafka event log: an idempotent producer that implements [`EventLog`] over one
//! topic, and a partition-aware reader for consumers. Owns the mapping between tally's
//! positions and Kafka's partitions and offsets, and the translation of Kafka errors into
//! [`LogError`]s. Must not interpret payloads: a record's value is exactly the encoded
//! event (docs/events.md, "On Kafka"), its key the tenant, and no headers are added.
//!
//! Position mapping: `Position { segment: partition, offset: kafka offset }`. A record
//! read at `(p, o)` has `next = (p, o + 1)`. Positions are ordered within a partition
//! only; a consumer keeps one position per partition.
//!
//! [`EventLog`]: super::EventLog

mod config;
mod partition;
mod producer;
mod reader;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use config::{KafkaConfig, SpoolConfig};
pub use partition::KafkaPartitionLog;
pub use producer::{KafkaLog, KafkaStats};
pub use reader::{KafkaReader, RebalanceEvent, StartPositions};

use super::LogError;

/// A Kafka error as a [`LogError`]: connectivity and timeouts are `log.kafka_unavailable`
/// (the spool can take over), refusals by the broker `log.kafka_rejected`.
pub(crate) fn log_error(context: &str, err: &KafkaError) -> LogError {
    let code = err.rdkafka_error_code();
    let unavailable = matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::TimedOutQueue
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::Resolve
        )
    ) || code.is_none();
    let detail = format!("{context}: {err}");
    if code == Some(RDKafkaErrorCode::PurgeQueue) || code == Some(RDKafkaErrorCode::PurgeInflight) {
        LogError::Closed(format!("{detail} (the Kafka producer was shut down)"))
    } else if unavailable {
        LogError::KafkaUnavailable(detail)
    } else {
        LogError::KafkaRejected(detail)
    }
}

/// Partition number of a position, checked against what Kafka accepts.
pub(crate) fn partition_of(position: super::Position) -> Result<i32, LogError> {
    i32::try_from(position.segment).map_err(|_| LogError::BadPosition(position))
}

/// Offset of a position as Kafka's signed offset.
pub(crate) fn offset_of(position: super::Position) -> Result<i64, LogError> {
    i64::try_from(position.offset).map_err(|_| LogError::BadPosition(position))
}
