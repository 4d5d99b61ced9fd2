//! Settings of the Kafka event log and its outage spool (`kafka:` in tally.yaml), and
//! their translation into librdkafka client properties. Owns defaults and validation;
//! must not open connections.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use super::super::{FsyncPolicy, LogError};

/// librdkafka properties tally sets itself for the guarantees it documents; `properties`
/// may not change them.
const PINNED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "bootstrap.servers",
    "metadata.broker.list",
    "partitioner",
];

/// Settings of the Kafka event log (`kafka:` in tally.yaml).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// The event topic.
    pub topic: String,
    /// Partitions of the topic when tally creates it (tests, development).
    pub partitions: u32,
    /// Replication factor of the topic when tally creates it.
    pub replication_factor: u16,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Consumer group of the `tally ledger run` processes: ledgers in one group share the
    /// topic's partitions, each partition materialized by one of them at a time. The
    /// group's committed Kafka offsets are only a hint for tools; where a ledger resumes
    /// is the position recorded in the Delta tables.
    pub group: String,
    /// Budget for one record to be acknowledged by the brokers (librdkafka
    /// `message.timeout.ms`); past it the delivery fails (and the spool takes it).
    pub produce_timeout_ms: u64,
    /// Longest a `read` or a metadata request waits for the brokers, milliseconds.
    pub read_timeout_ms: u64,
    /// Extra librdkafka properties (e.g. `security.protocol`, `linger.ms`). The
    /// properties behind the documented guarantees (`enable.idempotence`, `acks`,
    /// `partitioner`, `bootstrap.servers`) cannot be changed here.
    pub properties: BTreeMap<String, String>,
    /// The local outage spool.
    pub spool: SpoolConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "tally-events".into(),
            partitions: 12,
            replication_factor: 1,
            client_id: "tally".into(),
            group: "tally-ledger".into(),
            produce_timeout_ms: 30_000,
            read_timeout_ms: 5_000,
            properties: BTreeMap::new(),
            spool: SpoolConfig::default(),
        }
    }
}

/// Settings of the local outage spool (`kafka.spool:` in tally.yaml).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool. Default: `<data-dir>/spool`.
    pub dir: Option<PathBuf>,
    /// A record Kafka has not acknowledged within this many milliseconds is written to
    /// the spool instead, and appends go to the spool until it has drained.
    pub spool_after_ms: u64,
    /// Appends are refused (`log.spool_full`) while the spool holds this many bytes of
    /// records not yet drained.
    pub max_bytes: u64,
    /// Largest accepted record payload, bytes (kept at or below the topic's
    /// `max.message.bytes`, so every spooled record can be drained).
    pub max_record_bytes: u32,
    /// Segment size of the spool; drained segments are deleted whole.
    pub segment_bytes: u64,
    /// fsync policy of the spool (a spooled record is acknowledged after its fsync).
    pub fsync: FsyncPolicy,
    /// Records sent to Kafka per drain step.
    pub drain_batch: usize,
    /// Pause between drain attempts while Kafka is unreachable, milliseconds.
    pub retry_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            spool_after_ms: 2_000,
            max_bytes: 1 << 30,
            max_record_bytes: 1_000_000,
            segment_bytes: 16 * 1024 * 1024,
            fsync: FsyncPolicy::Interval,
            drain_batch: 1_000,
            retry_ms: 1_000,
        }
    }
}

impl KafkaConfig {
    /// Check the settings; the error says which one to fix.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |m: String| Err(LogError::KafkaConfig(m));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty; give at least one host:port".into());
        }
        if self.topic.trim().is_empty() {
            return bad("kafka.topic is empty".into());
        }
        if self.group.trim().is_empty() {
            return bad("kafka.group is empty; name the ledgers' consumer group".into());
        }
        if self.partitions == 0 || self.partitions > i32::MAX as u32 {
            return bad(format!(
                "kafka.partitions is {}; use 1 or more",
                self.partitions
            ));
        }
        if self.produce_timeout_ms == 0 || self.produce_timeout_ms > i32::MAX as u64 {
            return bad(format!(
                "kafka.produce_timeout_ms is {}; use a positive number of milliseconds",
                self.produce_timeout_ms
            ));
        }
        if self.spool.spool_after_ms == 0 {
            return bad("kafka.spool.spool_after_ms is 0; use a positive budget".into());
        }
        if self.spool.drain_batch == 0 {
            return bad("kafka.spool.drain_batch is 0; use 1 or more".into());
        }
        if let Some(key) = self
            .properties
            .keys()
            .find(|k| PINNED.contains(&k.as_str()))
        {
            return bad(format!(
                "kafka.properties.{key} cannot be set: tally sets it for its delivery guarantees (use kafka.brokers for the brokers)"
            ));
        }
        Ok(())
    }

    /// Properties shared by every client tally creates.
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        c
    }

    fn with_extra(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The idempotent producer: every record acknowledged by all in-sync replicas,
    /// retried without duplicates, partitioned like the Java client (murmur2 of the key).
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", self.produce_timeout_ms.to_string())
            .set("linger.ms", "2");
        self.with_extra(c)
    }

    /// A consumer; `group` makes it a consumer group member. Offsets are never committed
    /// automatically: the reader's user owns its positions.
    pub(crate) fn consumer_config(&self, group: Option<&str>) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        // librdkafka wants a group id even for assign-only readers; those never join it.
        let standalone = format!("{}-reader", self.client_id);
        c.set("group.id", group.unwrap_or(&standalone));
        // Producer-only properties would make librdkafka warn on a consumer; the extra
        // properties are applied anyway since they are mostly connection settings.
        self.with_extra(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_are_refused() {
        assert!(KafkaConfig::default().validate().is_ok());
        let bad: Result<KafkaConfig, _> = serde_json::from_str(r#"{"brokerz": "x"}"#);
        assert!(bad.is_err());
        let partial: KafkaConfig =
            serde_json::from_str(r#"{"topic": "t", "spool": {"spool_after_ms": 50}}"#)
                .unwrap_or_default();
        assert_eq!(partial.topic, "t");
        assert_eq!(partial.spool.spool_after_ms, 50);
        assert_eq!(partial.partitions, 12);
    }

    #[test]
    fn guarantee_properties_cannot_be_overridden() {
        let mut c = KafkaConfig::default();
        c.properties.insert("acks".into(), "1".into());
        let err = c.validate().err().map(|e| e.code());
        assert_eq!(err, Some("log.kafka_config"));
        c.properties.clear();
        c.properties.insert("linger.ms".into(), "10".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.producer_config().get("linger.ms"), Some("10"));
        assert_eq!(c.producer_config().get("enable.idempotence"), Some("true"));
    }
}
