//! Two `tally ledger run` processes in one consumer group on one Kafka topic (an
//! in-process mock cluster speaking the real protocol on loopback) and one tables root:
//! both own partitions, one is killed with SIGKILL after it has committed while events
//! are still being produced, the survivor takes its partitions over from the positions
//! the Delta tables record, and the tables end with every produced event exactly once
//! (rows, distinct ids, token and cost sums).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::cli::sql_numbers;
use common::synth::{decision, usage};
use tally_events::log::{EventLog, KafkaConfig, KafkaLog};
use tally_events::{Event, encode};

const TOPIC: &str = "tally-events-group";
const PARTITIONS: u32 = 4;
/// Events produced before the ledgers start, and while they run.
const BEFORE: u64 = 2_000;
const DURING: u64 = 2_000;

/// A running `tally ledger run` and the lines it prints.
struct LedgerProcess {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LedgerProcess {
    fn start(name: &'static str, data_dir: &Path, cfg: &Path) -> LedgerProcess {
        let mut child = common::cli::tally_in(data_dir)
            .arg("--config")
            .arg(cfg)
            .args(["ledger", "run", "--admin-listen", "127.0.0.1:0"])
            .env("TALLY_LOG_FILTER", "warn,deltalake_core=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LedgerProcess {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Take the lines printed so far.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            println!("[{}] {line}", self.name);
            self.seen.push(line);
        }
    }

    /// Partitions owned now, from the `assigned` / `revoked` lines.
    fn owned(&mut self) -> BTreeSet<u32> {
        self.drain();
        let mut owned = BTreeSet::new();
        for line in &self.seen {
            let Some(rest) = line.strip_prefix("tally ledger: partition ") else {
                continue;
            };
            let Some(p) = rest.split_whitespace().next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if rest.contains(" assigned") {
                owned.insert(p);
            } else if rest.contains(" revoked") {
                owned.remove(&p);
            }
        }
        owned
    }

    /// The admin address it printed.
    fn admin(&mut self) -> Option<String> {
        self.drain();
        self.seen.iter().find_map(|l| {
            l.strip_prefix("tally ledger admin on ")?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
    }

    /// Every partition this process was ever assigned.
    fn ever_assigned(&mut self) -> BTreeSet<u32> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix("tally ledger: partition "))
            .filter(|rest| rest.contains(" assigned"))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

impl Drop for LedgerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What was produced: counts per table and usage sums.
#[derive(Debug, Default, Clone, Copy)]
struct Produced {
    usage: u64,
    decisions: u64,
    input: u64,
    output: u64,
    cost: u64,
}

/// Event `i`: 3 in 4 are usage, the rest decisions; tenants spread over every partition.
fn produce(log: &KafkaLog, range: std::ops::Range<u64>, spread: Duration, p: &mut Produced) {
    let pause = spread / (range.end - range.start).max(1) as u32;
    let mut receipts = Vec::new();
    for i in range {
        let mut event = if i % 4 == 3 { decision(i) } else { usage(i) };
        let tenant = format!("tenant-{}", i % 16);
        match &mut event {
            Event::Usage(u) => {
                u.header.tenant = tenant.clone();
                p.usage += 1;
                p.input += u.tokens.input_tokens;
                p.output += u.tokens.output_tokens;
                p.cost += u.cost_micros as u64;
            }
            Event::Decision(d) => {
                d.header.tenant = tenant.clone();
                p.decisions += 1;
            }
            Event::Correction(_) => unreachable!(),
        }
        receipts.push(log.append(&tenant, &encode(&event)).unwrap());
        if !pause.is_zero() && i % 50 == 0 {
            std::thread::sleep(pause * 50);
        }
    }
    for r in receipts {
        r.wait().expect("acknowledged by the mock cluster");
    }
}

/// Partitions whose source has a commit in the `usage` table's Delta log.
fn committed_partitions(tables: &Path) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(tables.join("usage/_delta_log")) else {
        return out;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for p in 0..PARTITIONS {
            if text.contains(&format!("\"appId\":\"tally-ledger/kafka-group.p{p}\"")) {
                out.insert(p);
            }
        }
    }
    out
}

fn wait_for(what: &str, deadline: Instant, mut ok: impl FnMut() -> bool) {
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(dir: &Path, brokers: &str) -> PathBuf {
    let path = dir.join("tally.yaml");
    std::fs::write(
        &path,
        format!(
            "kafka:\n  brokers: '{brokers}'\n  topic: {TOPIC}\n  partitions: {PARTITIONS}\n  group: ledgers-e2e\n  read_timeout_ms: 2000\n  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '500'\n    reconnect.backoff.max.ms: '200'\nledger:\n  source_name: kafka-group\n  batch_max_age_ms: 200\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn two_ledgers_in_one_group_one_killed_store_every_event_exactly_once() {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(55);
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, PARTITIONS as i32, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let cfg = config(tmp.path(), &mock.bootstrap_servers());
    let kafka = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        topic: TOPIC.into(),
        partitions: PARTITIONS,
        ..KafkaConfig::default()
    };
    let log = KafkaLog::open(&kafka).unwrap();
    let mut produced = Produced::default();
    produce(&log, 0..BEFORE, Duration::ZERO, &mut produced);

    let mut a = LedgerProcess::start("a", &data_dir, &cfg);
    let mut b = LedgerProcess::start("b", &data_dir, &cfg);
    // Both members own partitions once the group has settled.
    wait_for("the group to split the partitions", deadline, || {
        let (oa, ob) = (a.owned(), b.owned());
        !oa.is_empty() && !ob.is_empty() && oa.is_disjoint(&ob) && oa.len() + ob.len() == 4
    });
    let victim_partitions = b.owned();
    println!(
        "settled after {:?}: a owns {:?}, b owns {victim_partitions:?}",
        started.elapsed(),
        a.owned()
    );

    // More events while both run; `b` is killed once it has committed its partitions.
    let producer = std::thread::spawn(move || {
        let mut p = Produced::default();
        produce(
            &log,
            BEFORE..BEFORE + DURING,
            Duration::from_secs(6),
            &mut p,
        );
        p
    });
    let tables = data_dir.join("tables");
    wait_for("b to commit its partitions", deadline, || {
        committed_partitions(&tables).is_superset(&victim_partitions)
    });
    std::thread::sleep(Duration::from_millis(300));
    let before_kill = sql_numbers(&data_dir, "SELECT count(*) FROM usage")[0];
    let killed_at = started.elapsed();
    b.child.kill().unwrap(); // SIGKILL
    b.child.wait().unwrap();
    b.drain();
    println!("b killed at {killed_at:?} with {before_kill} usage rows committed");

    // The survivor is given b's partitions once the group notices b is gone.
    wait_for("a to take b's partitions over", deadline, || {
        a.owned().len() == PARTITIONS as usize
    });
    println!("a owns every partition at {:?}", started.elapsed());
    // Ready once every partition's ledger runs; the group check lists them.
    let readyz = format!("{}/readyz", a.admin().expect("admin address printed"));
    let mut body = String::new();
    wait_for("a to be ready", deadline, || {
        let Ok(r) = reqwest::blocking::get(&readyz) else {
            return false;
        };
        let ok = r.status() == 200;
        body = r.text().unwrap_or_default();
        ok
    });
    assert!(body.contains("partitions [0, 1, 2, 3]"), "{body}");
    assert_eq!(body.matches("running").count(), 4, "{body}");
    let during = producer.join().unwrap();
    produced.usage += during.usage;
    produced.decisions += during.decisions;
    produced.input += during.input;
    produced.output += during.output;
    produced.cost += during.cost;

    // Until everything is in the tables (`tally sql` without the config reads the
    // tables only: no Kafka tail).
    wait_for("every event in the tables", deadline, || {
        let u = sql_numbers(&data_dir, "SELECT count(*) FROM usage")[0];
        let d = sql_numbers(&data_dir, "SELECT count(*) FROM decisions")[0];
        u >= produced.usage && d >= produced.decisions
    });
    // Let a few more commits happen: a duplicate would show now.
    std::thread::sleep(Duration::from_millis(1_000));
    let _ = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status();
    let status = a.child.wait().unwrap();
    a.drain();
    assert!(status.success(), "the survivor stopped with {status}");

    let u = sql_numbers(
        &data_dir,
        "SELECT count(*), count(DISTINCT event_id), sum(input_tokens), sum(output_tokens), sum(cost_micros) FROM usage",
    );
    assert_eq!(
        u,
        [
            produced.usage,
            produced.usage,
            produced.input,
            produced.output,
            produced.cost
        ],
        "{produced:?}"
    );
    let d = sql_numbers(
        &data_dir,
        "SELECT count(*), count(DISTINCT event_id) FROM decisions",
    );
    assert_eq!(d, [produced.decisions, produced.decisions]);
    assert_eq!(
        sql_numbers(&data_dir, "SELECT count(*) FROM corrections"),
        [0]
    );
    // Both processes owned partitions; the survivor materialized the victim's too.
    let (ea, eb) = (a.ever_assigned(), b.ever_assigned());
    assert!(!eb.is_empty(), "b owned no partition");
    assert_eq!(
        ea.len(),
        PARTITIONS as usize,
        "a took every partition: {ea:?}"
    );
    assert!(
        eb.is_subset(&ea),
        "a took over b's partitions {eb:?}: {ea:?}"
    );
    println!(
        "{} events ({} usage, {} decisions); b killed at {killed_at:?} after {before_kill} usage rows; done in {:?}",
        BEFORE + DURING,
        produced.usage,
        produced.decisions,
        started.elapsed()
    );
}
