//! `tally enforcer`, the proxy alone (split mode), as a real process:
//! - with the local event log, a separate `tally ledger run` (with `/healthz` and
//!   `/readyz`) materializes what it wrote, and `tally sql` counts every request once;
//! - with `kafka:` set, its events land in the Kafka topic (rdkafka's in-process mock
//!   cluster, which speaks the real protocol on loopback), are read back with the Kafka
//!   reader, and a Kafka-fed `tally ledger run --once` (one ledger per partition) commits
//!   each exactly once, also when run twice;
//! - `/healthz`, `/readyz` and `/metrics` answer on the admin listener, and SIGTERM stops
//!   it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{run_ok, sql_numbers};
use tally_events::log::{KafkaConfig, KafkaReader, Position};
use tally_events::{Event, FinishState};

const ADMIN_TOKEN: &str = "enforcer-test-admin";

struct Enforcer {
    child: Child,
    proxy: String,
    admin: String,
}

impl Enforcer {
    fn start(data_dir: &Path, config: &Path) -> Enforcer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([
                "enforcer",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--drain-seconds", "5", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("TALLY_CONFIG")
            .env("TALLY_LOG_FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let line = lines
                .next()
                .expect("tally enforcer printed its addresses")
                .unwrap();
            if let Some(a) = line.strip_prefix("tally enforcer listening on ") {
                proxy = Some(a.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("tally admin API on ") {
                admin = rest.split_whitespace().next().map(str::to_owned);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Enforcer {
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
        }
    }

    fn stop(mut self) {
        common::terminate(&mut self.child, Duration::from_secs(20), "tally enforcer");
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config pointing every upstream at the simulator, with dev keys, an admin token and
/// `extra` YAML sections.
fn config(dir: &Path, simulator: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tally.yaml");
    let hash = tally_queries::hash_token(ADMIN_TOKEN);
    std::fs::write(
        &path,
        format!(
            "proxy:\n  dev_keys: true\n  upstreams:\n    openai: {{base_url: '{simulator}', provider: openai}}\n    anthropic: {{base_url: '{simulator}', provider: anthropic}}\n    gemini: {{base_url: '{simulator}', provider: gemini}}\nqueries:\n  admin_tokens: ['{hash}']\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn simulator() -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(tally_simulator::spawn(
            tally_simulator::SimConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let url = sim.base_url();
    std::mem::forget(sim); // serves until the runtime is dropped with the test
    (rt, url)
}

fn send(e: &Enforcer, n: usize) {
    let client = reqwest::blocking::Client::new();
    for i in 0..n {
        let status = client
            .post(format!("{}/v1/chat/completions", e.proxy))
            .header("authorization", format!("Bearer dev-acme-{}", i % 2))
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","max_tokens":30,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
}

fn probes(e: &Enforcer) -> String {
    let client = reqwest::blocking::Client::new();
    assert_eq!(
        client
            .get(format!("{}/healthz", e.admin))
            .send()
            .unwrap()
            .status(),
        200
    );
    let ready = client.get(format!("{}/readyz", e.admin)).send().unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().unwrap();
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["proxy", "event_log"], "{ready}");
    let metrics = client
        .get(format!("{}/metrics", e.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(metrics.status(), 200);
    metrics.text().unwrap()
}

#[test]
fn the_enforcer_alone_writes_the_local_log_that_a_separate_ledger_materializes() {
    let (_rt, sim) = simulator();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let cfg = config(tmp.path(), &sim, "");
    let e = Enforcer::start(&data_dir, &cfg);
    send(&e, 6);
    let metrics = probes(&e);
    assert!(
        metrics.contains("tally_log_appended_records_total"),
        "{metrics}"
    );
    e.stop();

    // The ledger as its own long-running process, with its probes.
    let mut ledger = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "ledger",
            "run",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let admin = BufReader::new(ledger.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("tally ledger admin on ")
                .and_then(|r| r.split_whitespace().next().map(str::to_owned))
        })
        .expect("the ledger printed its admin address");
    let client = reqwest::blocking::Client::new();
    assert_eq!(
        client
            .get(format!("{admin}/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let committed = "SELECT count(*), count(DISTINCT api_key_id) FROM usage";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = sql_numbers(&data_dir, committed);
        let ready = client.get(format!("{admin}/readyz")).send().unwrap();
        if counted == [6, 2] && ready.status() == 200 {
            let body: serde_json::Value = ready.json().unwrap();
            assert_eq!(body["checks"][0]["name"], "ledger", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows {counted:?}, readiness {}",
            ready.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &ledger.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        ledger.wait().unwrap().success(),
        "the ledger stops cleanly on SIGTERM"
    );
    // Committed, not only visible through the log tail: a catch-up finds nothing new.
    let again = run_ok(&data_dir, &["ledger", "run", "--once"]);
    assert!(
        again.starts_with("committed 0 usage, 0 decision"),
        "{again}"
    );
    assert_eq!(sql_numbers(&data_dir, committed), [6, 2]);
}

#[test]
fn with_kafka_configured_the_enforcer_produces_its_events_to_the_topic() {
    let (_rt, sim) = simulator();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("tally-events-e2e", 2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let kafka = format!(
        "kafka:\n  brokers: '{}'\n  topic: tally-events-e2e\n  partitions: 2\n",
        mock.bootstrap_servers()
    );
    let cfg = config(tmp.path(), &sim, &kafka);
    let e = Enforcer::start(&data_dir, &cfg);
    send(&e, 5);
    let metrics = probes(&e);
    assert!(
        metrics.contains("tally_kafka_acked_records_total"),
        "{metrics}"
    );
    e.stop();
    assert!(
        !data_dir.join("log").exists(),
        "with Kafka nothing goes to the local segment log"
    );

    let reader = KafkaReader::standalone(&KafkaConfig {
        brokers: mock.bootstrap_servers(),
        topic: "tally-events-e2e".into(),
        partitions: 2,
        ..KafkaConfig::default()
    })
    .unwrap();
    let partitions = reader.partitions().unwrap();
    let starts: Vec<Position> = (0..partitions)
        .map(|p| Position::new(u64::from(p), 0))
        .collect();
    reader.assign(&starts).unwrap();
    let mut usage = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while usage.len() < 5 && Instant::now() < deadline {
        for r in reader.poll(100, Duration::from_millis(200)).unwrap() {
            if let Event::Usage(u) = tally_events::decode(&r.payload).unwrap() {
                usage.push(u);
            }
        }
    }
    assert_eq!(
        usage.len(),
        5,
        "every request's usage event is in the topic"
    );
    assert!(
        usage
            .iter()
            .all(|u| u.finish_state == FinishState::Completed
                && u.header.tenant == "acme"
                && u.tokens.output_tokens > 0)
    );

    // A Kafka-fed ledger (one per partition) commits them, exactly once across runs.
    let first = common::cli::ledger_once(&data_dir, &cfg);
    assert!(first.contains("from 2 partition(s)"), "{first}");
    common::cli::ledger_once(&data_dir, &cfg);
    let expected_output: u64 = usage.iter().map(|u| u.tokens.output_tokens).sum();
    assert_eq!(
        sql_numbers(&data_dir, "SELECT count(*), sum(output_tokens) FROM usage"),
        [5, expected_output]
    );
}

/// Three enforcers on one Kafka topic share a cap: each folds the others' usage from the
/// topic. A round-robin client that leaves the propagation lag between requests is
/// admitted about as many requests as by one enforcer, not three times as many.
#[test]
fn three_enforcers_share_a_daily_cap_through_the_topic() {
    let (_rt, sim) = simulator();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("tally-events-shared", 3, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - name: acme-daily\n    action: usage-cap\n    limit_tokens: 1000\n    unit: tokens\n    period: day\n",
    )
    .unwrap();
    let enforcers: Vec<Enforcer> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("e{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let extra = format!(
                "instance: enforcer-{i}\nkafka:\n  brokers: '{}'\n  topic: tally-events-shared\n  partitions: 3\n",
                mock.bootstrap_servers()
            );
            let cfg = config(&dir, &sim, &extra);
            let mut text = std::fs::read_to_string(&cfg).unwrap();
            text = text.replacen("proxy:\n", &format!("proxy:\n  policy_file: {}\n", policy.display()), 1);
            std::fs::write(&cfg, text).unwrap();
            Enforcer::start(&dir.join("data"), &cfg)
        })
        .collect();
    let client = reqwest::blocking::Client::new();
    let mut admitted = 0u64;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let e = &enforcers[i % 3];
        let status = client
            .post(format!("{}/v1/chat/completions", e.proxy))
            .header("authorization", "Bearer dev-acme-rr")
            .header("x-sim-output-tokens", "100")
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .unwrap()
            .status()
            .as_u16();
        statuses.push(status);
        if status == 200 {
            admitted += 1;
        }
        if statuses.len() >= 3 && statuses[statuses.len() - 3..].iter().all(|s| *s == 429) {
            break; // every enforcer refuses
        }
        // Leave the propagation lag (produce, then the others' next poll).
        std::thread::sleep(Duration::from_millis(800));
    }
    for e in enforcers {
        e.stop();
    }
    // One request is ~110 tokens (about 10 in, 100 out); reserving 10 + 100 each, at most
    // 1000 / 110 = 9 fit under the cap however they are spread. Without shared counters
    // each enforcer would admit its own 9 (27 in all).
    assert!(
        (8..=9).contains(&admitted),
        "admitted {admitted} across three enforcers: {statuses:?}"
    );
    assert_eq!(
        &statuses[statuses.len() - 3..],
        &[429, 429, 429],
        "{statuses:?}"
    );
}

/// `p` quantile of sorted latencies.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Kafka unavailable for 30 s under steady load: the enforcer keeps answering (events go
/// to its outage spool, then drain), and the Kafka-fed ledger ends with exactly one usage
/// row per request: no acknowledged event lost, none twice. Latency before, during and
/// after the outage is printed (the figures belong to benchmarks, not assertions).
#[test]
fn a_30_second_broker_outage_under_load_loses_and_duplicates_nothing() {
    let (_rt, sim) = simulator();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("tally-events-outage", 2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let kafka = format!(
        "kafka:\n  brokers: '{}'\n  topic: tally-events-outage\n  partitions: 2\n  produce_timeout_ms: 5000\n  properties: {{reconnect.backoff.max.ms: '200', retry.backoff.max.ms: '200'}}\n  spool: {{spool_after_ms: 250, retry_ms: 200}}\n",
        mock.bootstrap_servers()
    );
    let cfg = config(tmp.path(), &sim, &kafka);
    let e = Enforcer::start(&data_dir, &cfg);

    const PACE: Duration = Duration::from_millis(25);
    const LOAD: Duration = Duration::from_secs(46);
    let (down_at, up_at) = (Duration::from_secs(8), Duration::from_secs(38));
    let client = reqwest::blocking::Client::new();
    let started = Instant::now();
    let mut sent: Vec<(Duration, Duration, String)> = Vec::new(); // (at, latency, id)
    let mut broker_down = false;
    let mut broker_back = false;
    while started.elapsed() < LOAD {
        let at = started.elapsed();
        if !broker_down && at >= down_at {
            mock.broker_down(1).unwrap();
            broker_down = true;
        }
        if !broker_back && at >= up_at {
            mock.broker_up(1).unwrap();
            broker_back = true;
        }
        let t = Instant::now();
        let resp = client
            .post(format!("{}/v1/chat/completions", e.proxy))
            .header("authorization", "Bearer dev-acme-load")
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "the enforcer keeps answering at {at:?}");
        let id = resp.headers()["x-tally-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = resp.bytes();
        sent.push((at, t.elapsed(), id));
        std::thread::sleep(PACE.saturating_sub(t.elapsed()));
    }
    let mut report = String::new();
    for (name, from, to) in [
        ("before", Duration::ZERO, down_at),
        ("broker down", down_at, up_at),
        ("after", up_at, LOAD),
    ] {
        let mut l: Vec<Duration> = sent
            .iter()
            .filter(|(at, ..)| *at >= from && *at < to)
            .map(|(_, l, _)| *l)
            .collect();
        l.sort_unstable();
        report.push_str(&format!(
            "{name}: {} requests, p50 {:?}, p99 {:?}; ",
            l.len(),
            quantile(&l, 0.5),
            quantile(&l, 0.99)
        ));
    }
    eprintln!("{report}");

    // Everything spooled drains once the broker is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", e.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap();
        if gauge(&m, "tally_spool_records") == Some(0.0) && gauge(&m, "tally_spooling") == Some(0.0)
        {
            assert!(
                gauge(&m, "tally_spool_drained_records_total").unwrap_or(0.0) > 0.0,
                "the outage spooled nothing: {m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the spool did not drain: {m}");
        std::thread::sleep(Duration::from_millis(250));
    }
    e.stop();

    common::cli::ledger_once(&data_dir, &cfg);
    let n = sent.len() as u64;
    assert_eq!(
        sql_numbers(
            &data_dir,
            "SELECT count(*), count(DISTINCT event_id), count(DISTINCT request_id) FROM usage"
        ),
        [n, n, n],
        "one usage row per request, each once ({report})"
    );
}
