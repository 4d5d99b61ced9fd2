//! Two ledgers of one source at once, as two owners of a Kafka partition during a
//! rebalance: a commit built on a table state older than the other ledger's commit of
//! the same source is refused by Delta's conflict check, a newer state picked up by
//! compaction never becomes the base of a commit from a stale position, and two ledgers
//! running side by side on one log store every event exactly once. Must check rows and
//! distinct ids against the tables themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally_events::Event;

use super::support::*;
use crate::config::LedgerConfig;

fn usage_events(n: usize) -> Vec<Event> {
    (0..n).map(|_| usage("acme")).collect()
}

async fn assert_usage(env: &Env, n: i64) -> TestResult {
    assert_eq!(rows(&env.tables(), "usage").await?, n, "rows of usage");
    assert_eq!(
        distinct_ids(&env.tables(), "usage").await?,
        n,
        "distinct ids of usage"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_owner_of_a_source_cannot_commit_from_a_stale_position() -> TestResult {
    let env = Env::new()?;
    env.append(&usage_events(20))?;
    let mut a = env.ledger(config()).await?;
    let mut b = env.ledger(config()).await?;

    // Both start at the log's start; `a` commits first.
    assert_eq!(a.step().await?.rows[0], 20);
    let err = b
        .step()
        .await
        .err()
        .ok_or("b's commit from the start must be refused")?;
    assert_eq!(err.code(), "ledger.source_moved", "{err}");
    assert_usage(&env, 20).await?;
    // `b` re-reads the position `a` recorded and goes on from there.
    let again = b.step().await?;
    assert_eq!(again.rows, [0, 0, 0]);
    assert_usage(&env, 20).await?;
    let counters = b.status().await?.counters.ok_or("counters")?;
    assert_eq!(counters.source_moved, 1, "{counters:?}");

    // `a` commits twice more (three small files in its state); then a ledger opened
    // now, `c`, commits, and `a` compacts. The compaction's commit lands after `c`'s,
    // so the state it returns records `c`'s position: `a` must not take it as the
    // base of a commit from its own older position.
    for _ in 0..2 {
        env.append(&usage_events(10))?;
        assert_eq!(a.step().await?.rows[0], 10);
    }
    let mut c = env.ledger(config()).await?;
    env.append(&usage_events(5))?;
    assert_eq!(c.step().await?.rows[0], 5);
    assert_usage(&env, 45).await?;
    let optimized = a.optimize().await?;
    assert!(
        optimized.iter().any(|s| s.files_removed > 0),
        "compaction committed: {optimized:?}"
    );
    let step = a.step().await?;
    assert_eq!(step.rows, [0, 0, 0], "a resumed after c's events");
    assert_usage(&env, 45).await?;
    assert_eq!(a.status().await?.counters.map(|c| c.source_moved), Some(1));

    // Both go on taking turns without a duplicate.
    env.append(&usage_events(5))?;
    let (sa, sc) = (a.step().await, c.step().await);
    let committed = sa.as_ref().map_or(0, |s| s.rows[0]) + sc.as_ref().map_or(0, |s| s.rows[0]);
    assert_eq!(committed, 5, "{sa:?} {sc:?}");
    assert_usage(&env, 50).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ledgers_of_one_source_running_side_by_side_store_each_event_once() -> TestResult {
    const BURSTS: usize = 40;
    const PER_BURST: usize = 50;
    let env = Arc::new(Env::new()?);
    let config = LedgerConfig {
        batch_max_age_ms: 30,
        // Compaction in the background too: it refreshes the table state.
        optimize_every_commits: 4,
        ..config()
    };
    let a = env.ledger(config.clone()).await?;
    let b = env.ledger(config.clone()).await?;
    let (ha, hb) = (a.handle(), b.handle());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = |stop: Arc<AtomicBool>| async move {
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let ta = tokio::spawn(a.run(stopped(stop.clone())));
    let tb = tokio::spawn(b.run(stopped(stop.clone())));
    let writer = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || -> TestResult {
            for _ in 0..BURSTS {
                env.append(&usage_events(PER_BURST))?;
                std::thread::sleep(Duration::from_millis(25));
            }
            Ok(())
        })
    };
    writer.await??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    // A ledger stopping while the other commits may find its last commit refused.
    let _ = ta.await?;
    let _ = tb.await?;

    // What neither committed (if anything) is committed by the next start.
    let mut last = env.ledger(config).await?;
    last.catch_up(|_| {}).await?;
    let n = (BURSTS * PER_BURST) as i64;
    assert_usage(&env, n).await?;
    let (ca, cb) = (
        ha.status().await?.counters.ok_or("counters")?,
        hb.status().await?.counters.ok_or("counters")?,
    );
    assert!(
        ca.data_commits + cb.data_commits > 0,
        "the ledgers committed: {ca:?} {cb:?}"
    );
    assert!(
        ca.failed_commits + cb.failed_commits + ca.source_moved + cb.source_moved > 0,
        "the two ledgers never met: {ca:?} {cb:?}"
    );
    println!("a: {ca:?}\nb: {cb:?}");
    Ok(())
}
