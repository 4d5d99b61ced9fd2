//! Crash test of the ledger as its own process: while a writer appends N events (and
//! resends some, as a producer retry would) to the event log, a real `tally ledger run`
//! is killed with SIGKILL at random moments, at least 20 times, and restarted (one run in
//! four is a catch-up, `ledger run --once`, in small batches). After a final
//! `tally ledger run --once`, the tables must hold exactly N rows per event type,
//! each event id once, with token and cost sums equal to those of the events written.
//! The kill schedule's seed is printed (set `TALLY_CRASH_SEED` to replay one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::Rng;
use common::cli::{run_ok, sql_numbers as sql, tally_in};
use common::synth::write_events;

const KILLS: usize = 22;

/// `tally ledger status --json`.
fn status(data_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&run_ok(data_dir, &["ledger", "status", "--json"])).unwrap()
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
    let (mut catch_up_kills, mut catch_ups_finished) = (0, 0);
    while kills < KILLS || !done.load(Ordering::SeqCst) {
        // One run in four is a catch-up (`run --once`) in batches of 200 events: kills
        // land among its many commits, with reads running ahead of them.
        let catch_up = rng.between(0, 4) == 0;
        let mut child = tally_in(&data_dir);
        if catch_up {
            child
                .args(["ledger", "run", "--once"])
                .env("TALLY_LEDGER__BATCH_MAX_EVENTS", "200");
        } else {
            child.args(["ledger", "run", "--admin-listen", "127.0.0.1:0"]);
        }
        let mut child = child
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // One kill in four of `ledger run` lands while the ledger opens its tables and
        // catches up; the others once it is running (it prints its admin address then),
        // anywhere from its first commit to well into steady tailing. Counting from the
        // start instead would, on a loaded machine, kill most runs before they did any
        // work.
        if catch_up {
            std::thread::sleep(Duration::from_millis(rng.between(30, 800)));
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "tally ledger run --once failed: {status}");
                catch_ups_finished += 1;
                continue; // it caught up before the kill
            }
        } else if rng.between(0, 4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.between(50, 1_000)));
        } else {
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                    let Ok(line) = line else { break };
                    if line.starts_with("tally ledger admin on") {
                        let _ = tx.send(());
                    }
                }
            });
            rx.recv_timeout(Duration::from_secs(60))
                .expect("tally ledger run did not start within 60 s");
            std::thread::sleep(Duration::from_millis(rng.between(300, 2_500)));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tally ledger run exited by itself: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        catch_up_kills += usize::from(catch_up);
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
    println!(
        "{kills} kills, {catch_up_kills} of them during a catch-up ({catch_ups_finished} catch-ups finished before their kill)"
    );
    assert!(kills >= 20);
    assert!(
        progressed >= 5,
        "only {progressed} of {kills} runs committed anything before being killed"
    );

    run_ok(&data_dir, &["ledger", "run", "--once"]);

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
