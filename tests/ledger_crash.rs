//! Crash test of the ledger as its own process: while a writer appends N events (and
//! resends some, as a producer retry would) to the event log, a real `tally ledger run`
//! is killed with SIGKILL at random moments, at least 20 times, and restarted. After a
//! final `tally ledger run --once`, the tables must hold exactly N rows per event type,
//! each event id once, with token and cost sums equal to those of the events written.
//! The kill schedule's seed is printed (set `TALLY_CRASH_SEED` to replay one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_events::log::{EventLog, LogConfig, SegmentLog};
use tally_events::{
    CorrectionEvent, DecisionEvent, Event, EventHeader, EventId, FinishState, Outcome, Provider,
    Route, RuleKind, TokenCounts, UsageEvent, UsageSource,
};

const KILLS: usize = 22;
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// xorshift64*: a small deterministic generator for the kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn header(i: u64) -> EventHeader {
    let tenant = TENANTS[(i % 3) as usize];
    let mut h = EventHeader::new("gw-crash", &format!("req-{i}"), tenant);
    h.api_key_id = Some(format!("key-{}", i % 7));
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some("gpt-4o-mini".into());
    h
}

fn usage(i: u64) -> Event {
    Event::Usage(UsageEvent {
        header: header(i),
        upstream: Some("openai".into()),
        status_code: Some(200),
        streamed: i.is_multiple_of(2),
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: 100 + i % 97,
            cached_input_tokens: i % 13,
            output_tokens: 20 + i % 31,
            ..TokenCounts::default()
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: 50 + (i % 101) as i64,
        price_version: Some("test".into()),
        latency_ms: 10,
        ttft_ms: None,
        retry_attempt: 0,
        retry_of: None,
    })
}

fn decision(i: u64) -> Event {
    Event::Decision(DecisionEvent::new(
        header(i),
        Outcome::Deny,
        "per-key-rpm",
        RuleKind::RateLimit,
        "key over its request rate".into(),
    ))
}

fn correction(i: u64, corrects: EventId) -> Event {
    Event::Correction(CorrectionEvent {
        header: header(i),
        corrects_event_id: corrects,
        reason: "provider report differs".into(),
        input_tokens: Some(1),
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: None,
        reasoning_tokens: None,
        cost_micros: Some(3),
        price_version: None,
        usage_source: Some(UsageSource::Mixed),
    })
}

/// What was written: counts per type and usage sums.
#[derive(Debug, Default, PartialEq, Eq)]
struct Written {
    usage: u64,
    decisions: u64,
    corrections: u64,
    input: u64,
    output: u64,
    cost: u64,
}

/// Append `n` events in small bursts over about `spread`, resending every 50th record.
fn write_events(dir: &Path, n: u64, spread: Duration) -> Written {
    let log = SegmentLog::open(dir, &LogConfig::default()).unwrap();
    let mut w = Written::default();
    let mut last_usage = EventId::new();
    let bursts = 100u64;
    let per_burst = n / bursts;
    let mut receipts = Vec::new();
    for b in 0..bursts {
        for j in 0..per_burst {
            let i = b * per_burst + j;
            let e = match i % 10 {
                0..=6 => {
                    let e = usage(i);
                    if let Event::Usage(u) = &e {
                        w.usage += 1;
                        w.input += u.tokens.input_tokens;
                        w.output += u.tokens.output_tokens;
                        w.cost += u.cost_micros as u64;
                        last_usage = u.header.event_id;
                    }
                    e
                }
                7 | 8 => {
                    w.decisions += 1;
                    decision(i)
                }
                _ => {
                    w.corrections += 1;
                    correction(i, last_usage)
                }
            };
            let bytes = tally_events::encode(&e);
            let tenant = e.header().tenant.clone();
            receipts.push(log.append(&tenant, &bytes).unwrap());
            if i.is_multiple_of(50) {
                // A producer retry: the same event appended again.
                receipts.push(log.append(&tenant, &bytes).unwrap());
            }
        }
        std::thread::sleep(spread / bursts as u32);
    }
    for r in receipts {
        r.wait().unwrap();
    }
    log.close().unwrap();
    w
}

fn tally(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.arg("--data-dir")
        .arg(data_dir)
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "error");
    c
}

/// `tally ledger status --json`.
fn status(data_dir: &Path) -> serde_json::Value {
    let out = tally(data_dir)
        .args(["ledger", "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Committed rows of every table (0 before the first commit).
fn committed_rows(status: &serde_json::Value) -> u64 {
    status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_u64().unwrap_or(0))
        .sum()
}

fn sql(data_dir: &Path, query: &str) -> Vec<u64> {
    let out = tally(data_dir)
        .args(["sql", "--format", "csv", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().nth(1).unwrap_or_else(|| panic!("{text}"));
    row.split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{row}")))
        .collect()
}

#[test]
fn sigkill_at_random_moments_neither_loses_nor_duplicates() {
    let seed = std::env::var("TALLY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("kill schedule seed: {seed} (TALLY_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let log_dir = data_dir.join("log");
    std::fs::create_dir_all(&log_dir).unwrap();

    // The writer appends over the whole kill phase, so kills land while the ledger reads,
    // converts, writes files and commits.
    const N: u64 = 40_000;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, done) = (log_dir.clone(), done.clone());
        std::thread::spawn(move || {
            let w = write_events(&dir, N, Duration::from_secs(30));
            done.store(true, Ordering::SeqCst);
            w
        })
    };

    let started = Instant::now();
    let mut kills = 0;
    // Kills after which more rows were committed than before: the ledger made progress
    // between kills, so kills hit it at work and not only while starting.
    let mut progressed = 0;
    let mut committed = 0;
    while kills < KILLS || !done.load(Ordering::SeqCst) {
        let mut child = tally(&data_dir)
            .args(["ledger", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Opening the tables takes a few hundred ms; kill anywhere from inside that to
        // well into steady tailing.
        std::thread::sleep(Duration::from_millis(rng.between(200, 2_500)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tally ledger run exited by itself: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let now = committed_rows(&status(&data_dir));
        assert!(
            now >= committed,
            "committed rows went down: {committed} -> {now}"
        );
        if now > committed {
            progressed += 1;
        }
        committed = now;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "kill phase took too long"
        );
    }
    let written = writer.join().unwrap();
    assert!(kills >= 20);
    assert!(
        progressed >= 5,
        "only {progressed} of {kills} runs committed anything before being killed"
    );

    let out = tally(&data_dir)
        .args(["ledger", "run", "--once"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The tables, not the log tail: every table is committed up to the log's end.
    let status = status(&data_dir);
    let rows_of = |name: &str| -> u64 {
        let t = status["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .unwrap_or_else(|| panic!("{status}"));
        assert_eq!(t["lag_events"], 0, "{t}");
        t["rows"].as_u64().unwrap_or_else(|| panic!("{t}"))
    };
    assert_eq!(rows_of("usage"), written.usage, "{status}");
    assert_eq!(rows_of("decisions"), written.decisions, "{status}");
    assert_eq!(rows_of("corrections"), written.corrections, "{status}");

    let u = sql(
        &data_dir,
        "SELECT count(*), count(DISTINCT event_id), sum(input_tokens), sum(output_tokens), sum(cost_micros) FROM usage",
    );
    assert_eq!(
        u,
        [
            written.usage,
            written.usage,
            written.input,
            written.output,
            written.cost
        ]
    );
    let d = sql(
        &data_dir,
        "SELECT count(*), count(DISTINCT event_id) FROM decisions",
    );
    assert_eq!(d, [written.decisions, written.decisions]);
    let c = sql(
        &data_dir,
        "SELECT count(*), count(DISTINCT event_id) FROM corrections",
    );
    assert_eq!(c, [written.corrections, written.corrections]);
    println!("{kills} kills ({progressed} after progress), {N} events: {written:?}");
}
