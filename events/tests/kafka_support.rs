//! Helpers shared by the Kafka tests (`kafka_log.rs`, `kafka_spool.rs`): an in-process
//! mock Kafka cluster speaking the real protocol on loopback, event payloads that carry a
//! tenant and a sequence number, reading a whole topic back, and time bounds. Compiled
//! on its own as an (empty) test target too.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tally_events::log::{KafkaConfig, KafkaReader, Position, SpoolConfig};
use tally_events::{DecisionEvent, Event, EventHeader, Outcome, RuleKind, decode, encode};

pub(crate) const TOPIC: &str = "tally-events-test";

/// A mock cluster of one broker (id 1) with the test topic created.
pub(crate) struct Cluster {
    pub(crate) mock: MockCluster<'static, DefaultProducerContext>,
    pub(crate) config: KafkaConfig,
}

pub(crate) fn cluster(partitions: u32) -> Cluster {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, partitions as i32, 1)
        .expect("topic");
    let config = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        topic: TOPIC.into(),
        partitions,
        produce_timeout_ms: 1_500,
        read_timeout_ms: 2_000,
        // Reconnect and retry quickly after a broker comes back (defaults back off to
        // 10 s and 1 s), so the time bounds stay short.
        properties: [
            ("reconnect.backoff.max.ms", "200"),
            ("retry.backoff.max.ms", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        spool: SpoolConfig {
            spool_after_ms: 200,
            retry_ms: 100,
            ..SpoolConfig::default()
        },
        ..KafkaConfig::default()
    };
    Cluster { mock, config }
}

/// The encoded event number `seq` of `tenant` (its request id carries both).
pub(crate) fn event(tenant: &str, seq: u64) -> Vec<u8> {
    encode(&Event::Decision(DecisionEvent::new(
        EventHeader::new("gw-test", &format!("{tenant}/{seq}"), tenant),
        Outcome::Deny,
        "test-rule",
        RuleKind::RateLimit,
        "over the test limit".into(),
    )))
}

/// `(tenant, seq)` of a payload made by [`event`].
pub(crate) fn parse(payload: &[u8]) -> (String, u64) {
    let event = decode(payload).expect("a tally event");
    let (tenant, seq) = event
        .header()
        .request_id
        .split_once('/')
        .expect("tenant/seq");
    (tenant.to_owned(), seq.parse().expect("seq"))
}

/// Every record of the topic, per partition in offset order: `(offset, tenant, seq)`.
pub(crate) fn read_topic(config: &KafkaConfig) -> BTreeMap<u32, Vec<(u64, String, u64)>> {
    let reader = KafkaReader::standalone(config).expect("reader");
    let partitions = reader.partitions().expect("partitions");
    let mut total = 0;
    let mut starts = Vec::new();
    for p in 0..partitions {
        let (low, high) = reader.watermarks(p).expect("watermarks");
        total += high - low;
        starts.push(Position::new(u64::from(p), low));
    }
    reader.assign(&starts).expect("assign");
    let mut out: BTreeMap<u32, Vec<(u64, String, u64)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while got < total {
        assert!(
            Instant::now() < deadline,
            "read {got} of {total} records in time"
        );
        for r in reader.poll(1000, Duration::from_millis(200)).expect("poll") {
            let (tenant, seq) = parse(&r.payload);
            assert_eq!(
                r.next,
                Position::new(r.position.segment, r.position.offset + 1)
            );
            out.entry(r.position.segment as u32).or_default().push((
                r.position.offset,
                tenant,
                seq,
            ));
            got += 1;
        }
    }
    out
}

/// Per tenant, the sequence numbers in the order the topic holds them.
pub(crate) fn by_tenant(
    topic: &BTreeMap<u32, Vec<(u64, String, u64)>>,
) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for records in topic.values() {
        for (_, tenant, seq) in records {
            out.entry(tenant.clone()).or_default().push(*seq);
        }
    }
    out
}

/// The first occurrence of each sequence number, in order: what a consumer deduping by
/// event id keeps.
pub(crate) fn deduped(seqs: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
}

/// Run `f` on its own thread; fail the test if it takes longer than `limit`.
pub(crate) fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded its time bound of {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("test body ended without a result"),
        },
    }
}

/// Poll `cond` until it holds or `limit` passes; whether it held.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kafka's default partitioner (Java client and librdkafka `murmur2_random`):
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub(crate) fn java_partition(key: &[u8], partitions: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) % partitions
}
