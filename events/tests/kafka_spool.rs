//! The outage spool against an in-process mock Kafka cluster: appends keep being
//! acknowledged quickly while the broker is down or slow, everything acknowledged
//! reaches the topic once it is back (count and order per tenant, duplicates only from
//! the documented at-least-once hand-over), spooled records survive a restart, and a
//! receipt fails with both causes when neither Kafka nor the spool can take a record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kafka_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_events::log::{EventLog, LogError, Receipt, SpoolingLog};

use support::{by_tenant, cluster, deduped, event, eventually, read_topic, within};

const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];

/// Append events `from..to` round-robin over the tenants.
fn append(log: &SpoolingLog, from: u64, to: u64) -> Vec<Receipt> {
    (from..to)
        .map(|seq| {
            let tenant = TENANTS[(seq % 4) as usize];
            log.append(tenant, &event(tenant, seq))
                .expect("append accepted")
        })
        .collect()
}

/// Wait for every receipt; the slowest acknowledgement.
fn acknowledged(receipts: Vec<Receipt>) -> Duration {
    let started = Instant::now();
    for r in receipts {
        r.wait().expect("acknowledged");
    }
    started.elapsed()
}

fn expected(to: u64) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seq in 0..to {
        out.entry(TENANTS[(seq % 4) as usize].to_owned())
            .or_default()
            .push(seq);
    }
    out
}

/// Every tenant's events are on the topic in append order once duplicates are dropped,
/// and there are no more duplicates than records went through the spool.
fn assert_topic_holds(config: &tally_events::log::KafkaConfig, to: u64, spooled: u64) {
    let topic = by_tenant(&read_topic(config));
    let total: usize = topic.values().map(Vec::len).sum();
    let deduped: BTreeMap<String, Vec<u64>> =
        topic.iter().map(|(t, s)| (t.clone(), deduped(s))).collect();
    assert_eq!(
        deduped,
        expected(to),
        "every acknowledged event, in order per tenant"
    );
    let duplicates = total as u64 - to;
    assert!(
        duplicates <= spooled,
        "{duplicates} duplicates but only {spooled} spooled"
    );
}

#[test]
fn appends_are_acknowledged_while_the_broker_is_down_and_drained_after() {
    within(Duration::from_secs(40), || {
        let c = cluster(3);
        let dir = tempfile::tempdir().unwrap();
        let log = SpoolingLog::open(&c.config, dir.path()).unwrap();

        acknowledged(append(&log, 0, 40));
        // A cold producer on a loaded machine can take longer than the 200 ms budget for
        // its first metadata round trip; the spool then acknowledges the first records
        // and drains them as soon as Kafka answers. Either way Kafka is direct again soon.
        assert!(
            eventually(Duration::from_secs(15), || !log.stats().spooling),
            "warm-up: {:?}",
            log.stats()
        );
        let warm = log.stats();
        assert!(warm.kafka_acked + warm.spooled >= 40, "{warm:?}");
        assert_eq!(warm.drained, warm.spooled, "{warm:?}");

        c.mock.broker_down(1).unwrap();
        // While down: acknowledged within the spool budget plus an fsync, one at a time
        // and in bulk.
        let t = Instant::now();
        log.append("acme", &event("acme", 40))
            .unwrap()
            .wait()
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1_000),
            "{:?}",
            t.elapsed()
        );
        let slowest = acknowledged(append(&log, 41, 200));
        assert!(slowest < Duration::from_millis(1_000), "{slowest:?}");
        let stats = log.stats();
        assert!(stats.spooling);
        assert!(stats.spooled >= warm.spooled + 160, "{stats:?}");
        assert!(
            stats.spool_records >= 160 && stats.spool_bytes > 0,
            "{stats:?}"
        );
        // Nothing drains while the broker is down.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(log.stats().drained, warm.drained);

        c.mock.broker_up(1).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !log.stats().spooling),
            "drained: {:?}",
            log.stats()
        );
        let stats = log.stats();
        assert_eq!(stats.drained, stats.spooled);
        assert_eq!(stats.spool_records, 0);
        assert_eq!(stats.failed, 0);
        // Direct again: Kafka acknowledges new appends itself (a hiccup over the budget
        // on a loaded machine may still send a few through the spool, which drains).
        let before = log.stats().kafka_acked;
        acknowledged(append(&log, 200, 240));
        assert!(
            eventually(Duration::from_secs(15), || {
                let s = log.stats();
                !s.spooling && s.kafka_acked + (s.spooled - stats.spooled) >= before + 40
            }),
            "{:?}",
            log.stats()
        );
        assert_topic_holds(&c.config, 240, log.stats().spooled);
    });
}

#[test]
fn a_slow_broker_is_bypassed_within_the_budget() {
    within(Duration::from_secs(40), || {
        let c = cluster(2);
        let dir = tempfile::tempdir().unwrap();
        let log = SpoolingLog::open(&c.config, dir.path()).unwrap();
        acknowledged(append(&log, 0, 10));
        // Slower than spool_after_ms (200 ms) but within the produce timeout: Kafka still
        // takes the originals, the spool acknowledges first.
        c.mock
            .broker_round_trip_time(1, Duration::from_millis(800))
            .unwrap();
        let slowest = acknowledged(append(&log, 10, 60));
        assert!(slowest < Duration::from_millis(700), "{slowest:?}");
        assert!(log.stats().spooled > 0);
        c.mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !log.stats().spooling),
            "{:?}",
            log.stats()
        );
        let spooled = log.stats().spooled;
        assert_topic_holds(&c.config, 60, spooled);
    });
}

#[test]
fn spooled_records_survive_a_restart_and_drain_before_new_ones() {
    within(Duration::from_secs(40), || {
        let c = cluster(2);
        let dir = tempfile::tempdir().unwrap();
        c.mock.broker_down(1).unwrap();
        {
            let log = SpoolingLog::open(&c.config, dir.path()).unwrap();
            acknowledged(append(&log, 0, 50));
            assert_eq!(log.stats().spool_records, 50);
            log.close().unwrap();
        }
        c.mock.broker_up(1).unwrap();
        let log = SpoolingLog::open(&c.config, dir.path()).unwrap();
        // Left-over records first: new appends are spooled behind them.
        assert!(log.stats().spooling);
        assert_eq!(log.stats().spool_records, 50);
        let receipts = append(&log, 50, 60);
        acknowledged(receipts);
        assert!(
            eventually(Duration::from_secs(15), || !log.stats().spooling),
            "{:?}",
            log.stats()
        );
        assert_eq!(log.stats().drained, 60);
        assert_topic_holds(&c.config, 60, 60);
        // The drained segments' records are not drained again by a later open.
        drop(log);
        let again = SpoolingLog::open(&c.config, dir.path()).unwrap();
        assert_eq!(again.stats().spool_records, 0);
        assert!(!again.stats().spooling);
    });
}

#[test]
fn receipts_fail_with_both_causes_when_neither_kafka_nor_the_spool_takes_the_record() {
    within(Duration::from_secs(20), || {
        let mut c = cluster(1);
        c.config.spool.max_bytes = 0;
        let dir = tempfile::tempdir().unwrap();
        let log = SpoolingLog::open(&c.config, dir.path()).unwrap();
        c.mock.broker_down(1).unwrap();
        let started = Instant::now();
        let err = log
            .append("acme", &event("acme", 0))
            .unwrap()
            .wait()
            .expect_err("neither Kafka nor the spool holds it");
        let text = err.to_string();
        assert!(text.contains("log.kafka_unavailable"), "{text}");
        assert!(text.contains("log.spool_full"), "{text}");
        // It waited for Kafka's verdict (produce budget 1.5 s), not just the spool's.
        assert!(started.elapsed() >= Duration::from_millis(1_000));
        assert_eq!(log.stats().failed, 1);
        // Spooling now: a further append is refused at once with the spool's code.
        let refused = log
            .append("acme", &event("acme", 1))
            .expect_err("spool full");
        assert!(matches!(refused, LogError::SpoolFull { .. }));
        assert_eq!(refused.code(), "log.spool_full");
        // Too large for the topic: refused before anything is written.
        let big = vec![b'x'; c.config.spool.max_record_bytes as usize + 1];
        assert_eq!(
            log.append("acme", &big).expect_err("too large").code(),
            "log.record_too_large"
        );
    });
}
