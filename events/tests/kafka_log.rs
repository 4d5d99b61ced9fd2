//! The Kafka event log against an in-process mock cluster (real Kafka protocol on
//! loopback): keys map to partitions like Kafka's default partitioner, records read back
//! exactly as appended (value = the encoded event, key = tenant, no headers), the
//! idempotent producer keeps order without duplicates under injected request errors,
//! receipts fail with a clear cause when the brokers are gone, and consumer group
//! members share partitions and start where the caller says (or, as members for the
//! assignment only, fetch nothing and take over a leaving member's partitions).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kafka_support.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tally_events::log::{
    EventLog, KafkaConfig, KafkaLog, KafkaReader, LogError, Position, RebalanceEvent, Receipt,
};

use support::{by_tenant, cluster, event, java_partition, read_topic, within};

const TENANTS: [&str; 6] = ["acme", "globex", "initech", "umbrella", "hooli", "x"];

/// Append `n` events round-robin over the tenants; returns the receipts and payloads in
/// append order.
fn append_round_robin(log: &dyn EventLog, n: u64) -> (Vec<Receipt>, Vec<Vec<u8>>) {
    (0..n)
        .map(|seq| {
            let tenant = TENANTS[(seq % TENANTS.len() as u64) as usize];
            let payload = event(tenant, seq);
            (
                log.append(tenant, &payload).expect("append accepted"),
                payload,
            )
        })
        .unzip()
}

fn expected_by_tenant(n: u64) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out = std::collections::BTreeMap::new();
    for seq in 0..n {
        let tenant = TENANTS[(seq % TENANTS.len() as u64) as usize];
        out.entry(tenant.to_owned())
            .or_insert_with(Vec::new)
            .push(seq);
    }
    out
}

#[test]
fn round_trip_keys_partition_like_kafka_and_values_are_the_encoded_events() {
    within(Duration::from_secs(20), || {
        let c = cluster(4);
        let log = KafkaLog::open(&c.config).unwrap();
        let (receipts, payloads) = append_round_robin(&log, 120);
        for r in receipts {
            r.wait().expect("acknowledged");
        }
        assert_eq!(log.stats().acked, 120);
        assert_eq!(log.stats().failed, 0);

        let topic = read_topic(&c.config);
        assert_eq!(topic.values().map(Vec::len).sum::<usize>(), 120);
        // Each tenant lives in the partition Kafka's default partitioner picks for its
        // key, and its events are in append order there.
        for (partition, records) in &topic {
            for (_, tenant, _) in records {
                assert_eq!(
                    java_partition(tenant.as_bytes(), 4),
                    *partition,
                    "tenant {tenant}"
                );
            }
            let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
            assert_eq!(offsets, (0..records.len() as u64).collect::<Vec<_>>());
        }
        assert!(
            topic.len() > 1,
            "six tenants spread over more than one partition"
        );
        assert_eq!(by_tenant(&topic), expected_by_tenant(120));
        assert!(log.durable_end() > Position::START);

        // `EventLog::read` reads one partition from a position.
        let (&p, records) = topic.iter().next().unwrap();
        let first = log.read(Position::new(u64::from(p), 0), 3).unwrap();
        assert_eq!(first.len(), 3.min(records.len()));
        let rest = log.read(first.last().unwrap().next, 10_000).unwrap();
        assert_eq!(first.len() + rest.len(), records.len());
        assert_eq!(
            rest.first().map(|r| r.position.offset),
            Some(first.len() as u64)
        );
        let end = rest.last().unwrap().next;
        assert!(
            log.read(end, 10).unwrap().is_empty(),
            "nothing past the end yet"
        );
        assert!(matches!(
            log.read(Position::new(u64::from(p), end.offset + 5), 10),
            Err(LogError::BadPosition(_))
        ));
        assert!(matches!(
            log.read(Position::new(99, 0), 10),
            Err(LogError::BadPosition(_))
        ));

        // A third-party consumer sees key = tenant, value = the documented JSON, no headers.
        let raw: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &c.config.brokers)
            .set("group.id", "third-party")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(support::TOPIC, p as i32, Offset::Beginning)
            .unwrap();
        raw.assign(&tpl).unwrap();
        let message = loop {
            if let Some(m) = raw.poll(Duration::from_secs(2)) {
                break m.unwrap();
            }
        };
        let (tenant, seq) = support::parse(message.payload().unwrap());
        assert_eq!(message.key(), Some(tenant.as_bytes()));
        assert_eq!(message.payload(), Some(&payloads[seq as usize][..]));
        assert!(message.headers().is_none_or(|h| h.count() == 0));
        let json: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(json["tenant"], tenant.as_str());
        assert_eq!(json["event_type"], "decision");
    });
}

#[test]
fn idempotent_producer_keeps_order_without_duplicates_under_request_errors() {
    within(Duration::from_secs(30), || {
        let mut c = cluster(3);
        c.config.produce_timeout_ms = 15_000;
        let log = KafkaLog::open(&c.config).unwrap();
        let started = Instant::now();
        // Retriable errors on the next produce requests: the producer retries them.
        let errors = [
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ];
        let n = 600;
        let mut receipts = Vec::new();
        for round in 0..6 {
            c.mock.request_errors(RDKafkaApiKey::Produce, &errors);
            let start = round * n / 6;
            for seq in start..start + n / 6 {
                let tenant = TENANTS[(seq % TENANTS.len() as u64) as usize];
                receipts.push(log.append(tenant, &event(tenant, seq)).unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in receipts {
            r.wait().expect("acknowledged despite the injected errors");
        }
        assert!(started.elapsed() < Duration::from_secs(15));
        let topic = read_topic(&c.config);
        assert_eq!(
            topic.values().map(Vec::len).sum::<usize>(),
            n as usize,
            "no loss, no duplicate"
        );
        // Exactly the appended sequence per tenant: nothing duplicated or reordered.
        assert_eq!(by_tenant(&topic), expected_by_tenant(n));
    });
}

#[test]
fn receipts_fail_clearly_while_the_brokers_are_down_and_work_again_after() {
    within(Duration::from_secs(20), || {
        let c = cluster(2);
        let log = KafkaLog::open(&c.config).unwrap();
        log.append("acme", &event("acme", 0))
            .unwrap()
            .wait()
            .unwrap();

        c.mock.broker_down(1).unwrap();
        let started = Instant::now();
        let err = log
            .append("acme", &event("acme", 1))
            .unwrap()
            .wait()
            .expect_err("no broker acknowledged it");
        // Failed after the produce budget, not before and not much after.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1_000),
            "failed after {took:?}"
        );
        assert!(took < Duration::from_secs(8), "failed after {took:?}");
        let text = err.to_string();
        assert!(text.contains("log.kafka_unavailable"), "{text}");
        assert_eq!(log.stats().failed, 1);

        c.mock.broker_up(1).unwrap();
        log.append("acme", &event("acme", 2))
            .unwrap()
            .wait()
            .expect("acknowledged again");
        let topic = read_topic(&c.config);
        assert_eq!(by_tenant(&topic)["acme"], vec![0, 2]);
    });
}

#[test]
fn config_errors_have_stable_codes() {
    let bad = KafkaConfig {
        brokers: " ".into(),
        ..KafkaConfig::default()
    };
    let err = KafkaLog::open(&bad).expect_err("empty brokers");
    assert_eq!(err.code(), "log.kafka_config");
    assert!(err.to_string().contains("kafka.brokers"));
    let mut pinned = KafkaConfig::default();
    pinned
        .properties
        .insert("enable.idempotence".into(), "false".into());
    assert_eq!(
        KafkaLog::open(&pinned).expect_err("pinned").code(),
        "log.kafka_config"
    );
}

#[test]
fn group_members_share_partitions_and_start_at_the_callers_positions() {
    within(Duration::from_secs(40), || {
        let c = cluster(4);
        let log = KafkaLog::open(&c.config).unwrap();
        // Ten records in every partition, whatever the partitioner does: pick keys per
        // partition.
        let mut keys = std::collections::BTreeMap::new();
        for i in 0..200 {
            let key = format!("tenant-{i}");
            keys.entry(java_partition(key.as_bytes(), 4)).or_insert(key);
        }
        assert_eq!(keys.len(), 4);
        let mut receipts = Vec::new();
        for seq in 0..40u64 {
            let key = &keys[&((seq % 4) as u32)];
            receipts.push(log.append(key, &event(key, seq)).unwrap());
        }
        for r in receipts {
            r.wait().unwrap();
        }
        // The caller's positions: partition 0 resumes at offset 7, others from the start.
        let start: tally_events::log::StartPositions =
            Arc::new(|p| if p == 0 { Some(7) } else { None });
        let a = KafkaReader::join_group(&c.config, "ledger", start.clone()).unwrap();
        let b = KafkaReader::join_group(&c.config, "ledger", start).unwrap();
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for reader in [&a, &b] {
                for r in reader.poll(100, Duration::from_millis(100)).unwrap() {
                    seen.push((r.position.segment, r.position.offset));
                }
            }
            let (sa, sb): (BTreeSet<u32>, BTreeSet<u32>) = (
                a.assignment().into_iter().collect(),
                b.assignment().into_iter().collect(),
            );
            let balanced = !sa.is_empty()
                && !sb.is_empty()
                && sa.is_disjoint(&sb)
                && sa.union(&sb).count() == 4;
            // Everything readable read: 3 partitions x 10 + partition 0 from offset 7.
            let distinct: BTreeSet<_> = seen.iter().copied().collect();
            if balanced && distinct.len() >= 33 {
                assert_eq!(distinct.len(), 33);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group did not settle: {sa:?} {sb:?}, {} records",
                distinct.len()
            );
        }
        let p0: Vec<u64> = seen
            .iter()
            .filter(|(p, _)| *p == 0)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            p0.first(),
            Some(&7),
            "partition 0 starts at the caller's position"
        );
        let events: Vec<RebalanceEvent> = a
            .take_rebalance_events()
            .into_iter()
            .chain(b.take_rebalance_events())
            .collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, RebalanceEvent::Assigned(p) if !p.is_empty()))
        );
        // Committed offsets are a hint only; committing them must work for group members.
        a.commit_hint(&[Position::new(0, 10)]).unwrap();
    });
}

#[test]
fn members_for_the_assignment_only_share_the_partitions_and_fetch_nothing() {
    within(Duration::from_secs(40), || {
        let c = cluster(4);
        let log = KafkaLog::open(&c.config).unwrap();
        let (receipts, _) = append_round_robin(&log, 60);
        for r in receipts {
            r.wait().unwrap();
        }
        // A member that goes away is noticed within the session timeout (45 s by default).
        let mut config = c.config.clone();
        for (k, v) in [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ] {
            config.properties.insert(k.into(), v.into());
        }
        let a = KafkaReader::join_group_for_assignment(&config, "ledgers").unwrap();
        let b = KafkaReader::join_group_for_assignment(&config, "ledgers").unwrap();
        let mut fetched = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (sa, sb) = loop {
            for reader in [&a, &b] {
                fetched += reader.poll(100, Duration::from_millis(100)).unwrap().len();
            }
            let (sa, sb): (BTreeSet<u32>, BTreeSet<u32>) = (
                a.assignment().into_iter().collect(),
                b.assignment().into_iter().collect(),
            );
            if !sa.is_empty() && !sb.is_empty() && sa.is_disjoint(&sb) && sa.len() + sb.len() == 4 {
                break (sa, sb);
            }
            assert!(
                Instant::now() < deadline,
                "group did not settle: {sa:?} {sb:?}"
            );
        };
        // Settled: keep polling a while; the paused partitions deliver nothing.
        for _ in 0..10 {
            for reader in [&a, &b] {
                fetched += reader.poll(100, Duration::from_millis(100)).unwrap().len();
            }
        }
        assert_eq!(fetched, 0, "a member for the assignment fetched records");
        let assigned: BTreeSet<u32> = a
            .take_rebalance_events()
            .into_iter()
            .filter_map(|e| match e {
                RebalanceEvent::Assigned(p) => Some(p),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(assigned.is_superset(&sa), "{assigned:?} {sa:?}");
        // One member leaves: the other is given every partition.
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.assignment().len() < 4 {
            assert_eq!(a.poll(100, Duration::from_millis(100)).unwrap().len(), 0);
            assert!(
                Instant::now() < deadline,
                "the remaining member did not take over {sb:?}: {:?}",
                a.assignment()
            );
        }
        a.commit_hint(&[Position::new(0, 3)]).unwrap();
    });
}
