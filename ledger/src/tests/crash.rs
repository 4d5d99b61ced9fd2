//! Exactly once under failures: a crash after the Parquet files were written but before
//! the commit, a crash between the commits of two tables, a commit whose success was not
//! seen, restarts, and the same events appended twice. Must check row counts and
//! distinct ids against the tables themselves.

use std::sync::atomic::Ordering;

use tally_events::Event;
use tally_events::arrow::Table;
use tally_events::log::{EventLog, LogConfig, Position, SegmentLog};

use super::support::*;

/// 12 usage, 5 decisions, 3 corrections, interleaved.
fn mixed() -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..12 {
        events.push(usage("acme"));
        if i % 3 == 0 {
            events.push(decision("acme"));
        }
        if i % 4 == 1 {
            let id = events[0].header().event_id;
            events.push(correction("acme", id));
        }
    }
    events.push(decision("beta"));
    events
}

async fn assert_exact(env: &Env, usage: i64, decisions: i64, corrections: i64) -> TestResult {
    let t = env.tables();
    for (table, n) in [
        ("usage", usage),
        ("decisions", decisions),
        ("corrections", corrections),
    ] {
        assert_eq!(rows(&t, table).await?, n, "rows of {table}");
        assert_eq!(distinct_ids(&t, table).await?, n, "distinct ids of {table}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_files_written_before_commit_loses_and_duplicates_nothing() -> TestResult {
    let env = Env::new()?;
    env.append(&mixed())?;

    // The usage commit fails after its Parquet file was written.
    let fail = FailCommits::new("usage", FailMode::Before, 1);
    let mut ledger = env.failing_ledger(config(), fail.clone()).await?;
    let err = ledger.step().await.err().ok_or("the commit should fail")?;
    assert_eq!(err.code(), "ledger.commit");
    assert_eq!(fail.failed.load(Ordering::SeqCst), 1);
    drop(ledger); // crash
    let orphans = parquet_files(&env.tables().join("usage"));
    assert_eq!(orphans.len(), 1, "the data file was written");
    assert_eq!(
        rows(&env.tables(), "usage").await?,
        0,
        "but is not in the table"
    );

    // Restart.
    let mut ledger = env.ledger(config()).await?;
    let step = ledger.step().await?;
    assert_eq!(step.rows, [12, 5, 3]);
    assert_exact(&env, 12, 5, 3).await?;
    assert_eq!(parquet_files(&env.tables().join("usage")).len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_is_retried_in_process_without_loss() -> TestResult {
    let env = Env::new()?;
    env.append(&mixed())?;
    let fail = FailCommits::new("decisions", FailMode::Before, 1);
    let mut ledger = env.failing_ledger(config(), fail).await?;
    assert!(ledger.step().await.is_err());
    // usage committed, decisions not, corrections not attempted.
    assert_eq!(rows(&env.tables(), "usage").await?, 12);
    assert_eq!(rows(&env.tables(), "decisions").await?, 0);
    let positions = ledger.committed_positions();
    assert_eq!(positions.get(&Table::Usage), Some(&env.log.durable_end()));
    assert_eq!(positions.get(&Table::Decisions), Some(&Position::START));

    let step = ledger.step().await?;
    assert_eq!(step.rows, [0, 5, 3], "usage replays nothing");
    assert_exact(&env, 12, 5, 3).await?;
    let status = ledger.status().await?;
    let counters = status.counters.ok_or("counters")?;
    assert_eq!(counters.failed_commits, 1);
    assert_eq!(counters.events_committed, 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_tables_then_restart_gives_exact_counts() -> TestResult {
    let env = Env::new()?;
    env.append(&mixed())?;
    let fail = FailCommits::new("corrections", FailMode::Before, 1);
    let mut ledger = env.failing_ledger(config(), fail).await?;
    assert!(ledger.step().await.is_err());
    drop(ledger);
    assert_eq!(rows(&env.tables(), "usage").await?, 12);
    assert_eq!(rows(&env.tables(), "decisions").await?, 5);
    assert_eq!(rows(&env.tables(), "corrections").await?, 0);

    // More events arrive while the ledger is down.
    let more = vec![
        usage("late"),
        correction("late", tally_events::EventId::new()),
    ];
    env.append(&more)?;

    let mut ledger = env.ledger(config()).await?;
    let step = ledger.step().await?;
    assert_eq!(step.rows, [1, 0, 4]);
    assert_exact(&env, 13, 5, 4).await?;
    let status = ledger.status().await?;
    assert_eq!(status.counters.map(|c| c.replay_skipped), Some(17));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_that_succeeded_unseen_is_not_written_again() -> TestResult {
    let env = Env::new()?;
    env.append(&mixed())?;
    // The corrections commit lands, but the ledger sees an error (crash after commit,
    // before acknowledging).
    let fail = FailCommits::new("corrections", FailMode::After, 1);
    let mut ledger = env.failing_ledger(config(), fail).await?;
    assert!(ledger.step().await.is_err());
    assert_eq!(rows(&env.tables(), "corrections").await?, 3);

    // In process: the next step re-reads the tables first.
    let step = ledger.step().await?;
    assert_eq!(step.total_rows(), 0);
    assert_exact(&env, 12, 5, 3).await?;
    drop(ledger);

    // And after a restart.
    let mut ledger = env.ledger(config()).await?;
    assert_eq!(ledger.step().await?.total_rows(), 0);
    assert_exact(&env, 12, 5, 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_events_appended_again_are_stored_once() -> TestResult {
    let env = Env::new()?;
    let events = mixed();
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    ledger.step().await?;

    // A producer retries: the same events (same ids) again, plus new ones, and one
    // duplicated inside the same batch.
    let fresh = [usage("new"), decision("new")];
    let mut again = events.clone();
    again.extend(fresh.iter().cloned());
    again.push(fresh[0].clone());
    env.append(&again)?;
    let step = ledger.step().await?;
    assert_eq!(step.rows, [1, 1, 0]);
    assert_eq!(step.duplicates, events.len() as u64 + 1);
    assert_exact(&env, 13, 6, 3).await?;
    drop(ledger);

    // After a restart the ids are known from the tables.
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    let step = ledger.step().await?;
    assert_eq!(step.total_rows(), 0);
    // corrections recorded no position in the second batch (it had no new corrections),
    // so its 3 duplicate corrections are read and dropped again.
    assert_eq!(step.duplicates, events.len() as u64 + 3);
    assert_exact(&env, 13, 6, 3).await?;
    let counters = ledger.status().await?.counters.ok_or("counters")?;
    assert_eq!(counters.dedupe_ids, 22);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_acknowledged_only_up_to_what_every_table_committed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = std::sync::Arc::new(SegmentLog::open(
        &dir.path().join("log"),
        &LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        },
    )?);
    let tables = dir.path().join("tables");
    // Only usage events: the other tables record positions only when told to.
    let events: Vec<Event> = (0..60).map(|_| usage("acme")).collect();
    let mut last = None;
    for e in &events {
        last = Some(log.append("t", &tally_events::encode(e))?);
    }
    last.ok_or("no events")?.wait()?;
    let segments = log.stats().segments;
    assert!(segments > 3, "{segments}");

    let dyn_log: std::sync::Arc<dyn EventLog> = log.clone();
    let mut ledger = crate::Ledger::open(config(), &tables.to_string_lossy(), dyn_log).await?;
    ledger.step().await?;
    // decisions and corrections have recorded nothing yet: nothing may be dropped.
    assert_eq!(log.stats().segments, segments);
    ledger.catch_up(|_| {}).await?;
    assert!(log.stats().segments < 2, "{}", log.stats().segments);
    for p in ledger.committed_positions().values() {
        assert_eq!(*p, log.durable_end());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_failures_and_recovers_exactly_once() -> TestResult {
    let env = Env::new()?;
    let cfg = crate::LedgerConfig {
        batch_max_age_ms: 20,
        ..config()
    };
    let fail = FailCommits::new("usage", FailMode::Before, 2);
    let ledger = env.failing_ledger(cfg, fail.clone()).await?;
    let handle = ledger.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ledger.run(async {
        let _ = stopped.await;
    }));
    env.append(&mixed())?;
    let end = env.log.durable_end();
    let start = std::time::Instant::now();
    let mut saw_error = false;
    while handle.committed_positions().get(&Table::Usage) != Some(&end) {
        saw_error |= handle
            .last_error()
            .is_some_and(|e| e.starts_with("ledger.commit"));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no recovery"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(saw_error, "the failure was reported");
    assert_eq!(fail.failed.load(Ordering::SeqCst), 2);
    let _ = stop.send(());
    task.await??;
    assert!(handle.last_error().is_none());
    assert_exact(&env, 12, 5, 3).await?;
    Ok(())
}
