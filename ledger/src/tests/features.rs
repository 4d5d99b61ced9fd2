//! Behaviour around the core protocol: late events, schema evolution, compaction,
//! checkpoints, vacuum, status and lag, undecodable records, backfill progress and the
//! run loop. Must keep each test small (the suite stays well under a minute).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Schema;
use tally_events::arrow::{PARTITION_COLUMN, Table, usage_to_batch, with_day_column};
use tally_events::log::{EventLog, Position, Span};
use tally_events::{Event, Timestamp};

use super::support::*;
use crate::config::LedgerConfig;
use crate::progress::{Progress, ProgressUnit};

const DAY_MICROS: i64 = 86_400_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_land_in_their_own_day() -> TestResult {
    let env = Env::new()?;
    let now = Timestamp::now().as_micros();
    let events = vec![
        usage_at("a", now),
        usage_at("a", now - 3 * DAY_MICROS),
        usage_at("a", now - 40 * DAY_MICROS),
        usage_at("a", now - 40 * DAY_MICROS + 1),
    ];
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    ledger.step().await?;
    for (days, n) in [(0, 1), (3, 1), (40, 2)] {
        let day = Timestamp::from_micros(now - days * DAY_MICROS).utc_day();
        let got = count(
            &env.tables(),
            &format!("SELECT count(*) FROM usage WHERE day = DATE '{day}'"),
        )
        .await?;
        assert_eq!(got, n, "day {day}");
        assert!(
            env.tables().join(format!("usage/day={day}")).is_dir(),
            "partition directory of {day}"
        );
    }
    Ok(())
}

/// Schema evolution: a table created by an older version without two nullable columns
/// gets them added by the next write; old files stay as they are and read as null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nullable_columns_are_added_without_rewriting_old_files() -> TestResult {
    let env = Env::new()?;
    let dropped = ["api_key_id", "retry_of"];
    let full = Table::Usage.table_schema();
    let keep: Vec<usize> = (0..full.fields().len())
        .filter(|&i| !dropped.contains(&full.field(i).name().as_str()))
        .collect();
    let old_schema = Arc::new(full.project(&keep)?);

    // The "old" table, written directly with deltalake.
    let old_events: Vec<tally_events::UsageEvent> = (0..5)
        .filter_map(|_| match usage("old") {
            Event::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    let batch = with_day_column(Table::Usage, &usage_to_batch(&old_events)?)?;
    let batch = RecordBatch::try_new(
        Arc::clone(&old_schema),
        keep.iter().map(|&i| Arc::clone(batch.column(i))).collect(),
    )?;
    let url = url::Url::from_directory_path(std::path::absolute(env.tables().join("usage"))?)
        .map_err(|()| "path")?;
    std::fs::create_dir_all(env.tables().join("usage"))?;
    let table = deltalake::DeltaTable::try_from_url(url).await?;
    table
        .write(vec![batch])
        .with_partition_columns([PARTITION_COLUMN])
        .await?;
    let old_files = parquet_files(&env.tables().join("usage"));
    assert_eq!(old_files.len(), 1);
    let old_bytes = std::fs::read(&old_files[0])?;

    let events: Vec<Event> = (0..3).map(|_| usage("new")).collect();
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    assert_eq!(ledger.step().await?.rows[0], 3);

    let t = env.tables();
    assert_eq!(rows(&t, "usage").await?, 8);
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM usage WHERE retry_of IS NULL AND api_key_id IS NULL"
        )
        .await?,
        5
    );
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM usage WHERE retry_of = 'req-previous' AND api_key_id = 'key-1'"
        )
        .await?,
        3
    );
    let files = parquet_files(&t.join("usage"));
    assert_eq!(files.len(), 2);
    assert!(files.contains(&old_files[0]));
    assert_eq!(
        std::fs::read(&old_files[0])?,
        old_bytes,
        "old file untouched"
    );
    // The table's schema now has every contract column.
    let batches = query(&t, "SELECT * FROM usage LIMIT 1").await?;
    let schema: &Schema = &batches.first().ok_or("no rows")?.schema();
    for f in full.fields() {
        assert!(
            schema.field_with_name(f.name()).is_ok(),
            "{} missing",
            f.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_compacts_small_files_and_keeps_rows() -> TestResult {
    let env = Env::new()?;
    let mut ledger = env.ledger(config()).await?;
    let day = Timestamp::parse("2026-02-01T08:00:00Z")?.as_micros();
    for i in 0..6 {
        env.append(&[
            usage_at("a", day + i),
            usage_at("b", day - i),
            decision("a"),
        ])?;
        ledger.step().await?;
    }
    let before = parquet_files(&env.tables().join("usage")).len();
    assert_eq!(before, 6);
    let ids_before = distinct_ids(&env.tables(), "usage").await?;

    let summaries = ledger.optimize().await?;
    let compacted = summaries
        .iter()
        .find(|s| s.table == "usage")
        .ok_or("usage")?;
    assert_eq!(compacted.files_removed, 6);
    assert_eq!(compacted.files_added, 1);
    let delta = deltalake::open_table(
        url::Url::from_directory_path(env.tables().join("usage").canonicalize()?)
            .map_err(|()| "path")?,
    )
    .await?;
    let per_day = crate::tables::files_per_day(&delta);
    assert!(per_day.values().all(|&n| n == 1), "{per_day:?}");
    assert_eq!(rows(&env.tables(), "usage").await?, 12);
    assert_eq!(distinct_ids(&env.tables(), "usage").await?, ids_before);

    // Appends continue on top of the compacted table.
    env.append(&[usage("c")])?;
    ledger.step().await?;
    assert_eq!(rows(&env.tables(), "usage").await?, 13);

    // Vacuum enforces Delta's minimum retention; the default (7 days) deletes nothing yet.
    let refused = ledger.vacuum(Some(Duration::from_secs(3600))).await;
    assert_eq!(refused.err().map(|e| e.code()), Some("ledger.maintenance"));
    let vacuumed = ledger.vacuum(None).await?;
    assert!(vacuumed.iter().all(|v| v.files_deleted == 0));
    assert_eq!(rows(&env.tables(), "usage").await?, 13);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_written_and_keep_the_position() -> TestResult {
    let env = Env::new()?;
    let cfg = LedgerConfig {
        checkpoint_interval: 3,
        ..config()
    };
    let mut ledger = env.ledger(cfg.clone()).await?;
    for _ in 0..3 {
        env.append(&[usage("a")])?;
        ledger.step().await?;
    }
    let log_dir = env.tables().join("usage/_delta_log");
    assert!(
        log_dir
            .join("00000000000000000003.checkpoint.parquet")
            .is_file(),
        "checkpoint after 3 commits"
    );
    assert!(log_dir.join("_last_checkpoint").is_file());
    assert!(
        !env.tables()
            .join("decisions/_delta_log/_last_checkpoint")
            .exists()
    );
    let positions = ledger.committed_positions();
    drop(ledger);

    // Reopened from the checkpoint: the same position, nothing replayed.
    let mut ledger = env.ledger(cfg).await?;
    assert_eq!(
        ledger.committed_positions().get(&Table::Usage),
        positions.get(&Table::Usage)
    );
    assert_eq!(ledger.step().await?.total_rows(), 0);
    assert_eq!(rows(&env.tables(), "usage").await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_then_none() -> TestResult {
    let env = Env::new()?;
    let mut ledger = env.ledger(config()).await?;
    let mut events: Vec<Event> = (0..4).map(|_| usage("a")).collect();
    events.push(decision("a"));
    env.append(&events)?;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let status = ledger.status().await?;
    assert_eq!(status.log_durable_end, Some(env.log.durable_end()));
    let lag: Vec<Option<u64>> = status.tables.iter().map(|t| t.lag_events).collect();
    assert_eq!(lag, vec![Some(4), Some(1), Some(0)]);
    assert!(status.tables[0].lag_seconds.is_some_and(|s| s > 0.0));
    assert_eq!(status.tables[2].lag_seconds, Some(0.0));
    assert!(status.tables.iter().all(|t| t.exists && t.files == 0));

    ledger.step().await?;
    let status = ledger.status().await?;
    assert!(status.tables.iter().all(|t| t.lag_events == Some(0)));
    let usage = &status.tables[0];
    assert_eq!(usage.table, "usage");
    assert_eq!(usage.committed_position, Some(env.log.durable_end()));
    assert_eq!(
        (usage.files, usage.rows, usage.version),
        (1, Some(4), Some(1))
    );
    assert!(usage.bytes > 0 && usage.last_commit_at.is_some());
    let counters = status.counters.ok_or("counters")?;
    assert_eq!((counters.events_committed, counters.data_commits), (5, 2));
    // Serializable for the CLI.
    let json = serde_json::to_value(&status)?;
    assert_eq!(json["tables"][0]["lag_events"], 0);

    // The standalone status sees the same tables; corrections never recorded a position.
    let standalone = crate::ledger_status(&config(), &env.tables_uri(), Some(env.log())).await?;
    assert_eq!(
        standalone.tables[0].committed_position,
        Some(env.log.durable_end())
    );
    assert_eq!(standalone.tables[2].committed_position, None);
    assert!(standalone.tables.iter().all(|t| t.lag_events == Some(0)));
    assert_eq!(standalone.tables[0].rows, Some(4));
    // Without a log, and on a root that does not exist (nothing is created).
    let missing = env.dir.path().join("nowhere");
    let none = crate::ledger_status(&config(), &missing.to_string_lossy(), None).await?;
    assert!(
        none.tables
            .iter()
            .all(|t| !t.exists && t.lag_events.is_none())
    );
    assert!(!missing.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_skipped_counted_and_reported() -> TestResult {
    let env = Env::new()?;
    env.append(&[usage("a")])?;
    let bad_position = env.log.durable_end();
    env.append_raw([
        b"not json at all".to_vec(),
        br#"{"event_type":"telemetry","event_id":"x"}"#.to_vec(),
    ])?;
    env.append(&[usage("b")])?;
    let mut ledger = env.ledger(config()).await?;
    let step = ledger.step().await?;
    assert_eq!((step.rows[0], step.undecodable), (2, 2));
    assert_eq!(step.end, env.log.durable_end());
    let status = ledger.status().await?;
    assert_eq!(status.counters.map(|c| c.undecodable_records), Some(2));
    let codes: Vec<&str> = status.undecodable.iter().map(|u| u.code.as_str()).collect();
    assert_eq!(codes, vec!["event.decode", "event.unknown_type"]);
    assert_eq!(status.undecodable[0].position, bad_position);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reports_progress_and_commits_everything() -> TestResult {
    let env = Env::new()?;
    let events: Vec<Event> = (0..2_500)
        .map(|i| {
            if i % 10 == 0 {
                decision("a")
            } else {
                bare_usage("a")
            }
        })
        .collect();
    env.append(&events)?;
    let cfg = LedgerConfig {
        batch_max_events: 1_000,
        ..config()
    };
    let mut ledger = env.ledger(cfg).await?;
    let calls = std::sync::Mutex::new(Vec::new());
    let summary = ledger
        .catch_up(|p| {
            if let Ok(mut c) = calls.lock() {
                c.push(p);
            }
        })
        .await?;
    let calls = calls.into_inner().map_err(|_| "poisoned")?;
    // The local log measures itself in bytes: the total is what lies between the start
    // and its end, known before reading a record.
    let total = match env.log.span(Position::START, env.log.durable_end()) {
        Some(Span::Bytes(b)) => b,
        other => return Err(format!("{other:?}").into()),
    };
    assert!(total > 2_500 * 100, "{total}");
    let at = |done| Progress {
        done,
        total,
        unit: ProgressUnit::LogBytes,
    };
    assert_eq!(calls.first(), Some(&at(0)));
    assert_eq!(calls.last(), Some(&at(total)));
    assert!(
        calls.windows(2).all(|w| w[0].done <= w[1].done),
        "{calls:?}"
    );
    // Progress moves with each batch of 1,000 (not only at the end).
    assert!(
        calls.iter().any(|p| p.done > 0 && p.done < total),
        "{calls:?}"
    );
    assert!(calls.len() >= 4, "{calls:?}");
    assert_eq!(summary.rows, [2_250, 250, 0]);
    assert_eq!(rows(&env.tables(), "usage").await?, 2_250);
    // Every table, also the one without events, records the end.
    for p in ledger.committed_positions().values() {
        assert_eq!(*p, env.log.durable_end());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_commits_on_its_timer_and_drains_on_shutdown() -> TestResult {
    let env = Env::new()?;
    // Defaults, as in `tally up` (a background vacuum starts right away).
    let ledger = env.ledger(LedgerConfig::default()).await?;
    let handle = ledger.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ledger.run(async {
        let _ = stopped.await;
    }));

    // Events are committed within about the commit timer (`batch_max_age_ms`, 1 s) of
    // being durable.
    env.append(&[usage("a"), decision("a")])?;
    let appended = Instant::now();
    let end = env.log.durable_end();
    loop {
        let p = handle.committed_positions();
        if p.get(&Table::Usage) == Some(&end) && p.get(&Table::Decisions) == Some(&end) {
            break;
        }
        assert!(
            appended.elapsed() < Duration::from_secs(5),
            "not committed: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = appended.elapsed();
    assert!(latency < Duration::from_millis(2_500), "{latency:?}");

    // Appended just before shutdown: committed by the shutdown drain.
    env.append(&[usage("b")])?;
    let _ = stop.send(());
    task.await??;
    assert_eq!(rows(&env.tables(), "usage").await?, 2);
    let status = handle.status().await?;
    assert!(status.tables.iter().all(|t| t.lag_events == Some(0)));
    assert!(status.last_error.is_none() && handle.last_error().is_none());
    assert_eq!(status.counters.map(|c| c.vacuum_runs), Some(3));
    // Every table recorded the end position at shutdown.
    for p in handle.committed_positions().values() {
        assert_eq!(*p, env.log.durable_end());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_validated_and_rejects_unknown_keys() -> TestResult {
    let parsed: Result<LedgerConfig, _> = serde_json::from_str(r#"{"batch_max_event": 5}"#);
    assert!(parsed.is_err());
    let parsed: LedgerConfig = serde_json::from_str(r#"{"source_name": "eu-1"}"#)?;
    assert_eq!(parsed.batch_max_age_ms, 1_000);
    assert!(parsed.validate().is_ok());
    let short = LedgerConfig {
        dedupe_horizon_hours: 24,
        ..LedgerConfig::default()
    };
    assert_eq!(
        short.validate().err().map(|e| e.code()),
        Some("ledger.config")
    );
    let env = Env::new()?;
    let err = crate::Ledger::open(short, &env.tables_uri(), env.log())
        .await
        .err();
    assert_eq!(err.map(|e| e.code()), Some("ledger.config"));
    // An unknown position encoding is refused with its own code.
    assert_eq!(
        crate::txn_version(Position::new(1 << 40, 0))
            .err()
            .map(|e| e.code()),
        Some("ledger.position")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_compacts_in_the_background_while_ingesting() -> TestResult {
    let env = Env::new()?;
    let cfg = LedgerConfig {
        batch_max_age_ms: 20,
        optimize_max_small_files: 2,
        ..config()
    };
    let ledger = env.ledger(cfg).await?;
    let handle = ledger.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ledger.run(async {
        let _ = stopped.await;
    }));
    let day = Timestamp::parse("2026-04-01T09:00:00Z")?.as_micros();
    let wait_for = |n: i64| {
        let handle = handle.clone();
        let end = env.log.durable_end();
        async move {
            let start = Instant::now();
            while handle.committed_positions().get(&Table::Usage) != Some(&end) {
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(format!("batch {n} not committed"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    };
    for i in 0..4 {
        env.append(&[usage_at("a", day + i)])?;
        wait_for(i).await?;
    }
    // More than 2 files in one day: compaction runs in the background.
    let start = Instant::now();
    loop {
        let counters = handle.status().await?.counters.ok_or("counters")?;
        if counters.optimize_runs >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no compaction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ingestion goes on on top of the compacted table.
    env.append(&[usage_at("a", day + 10)])?;
    wait_for(10).await?;
    let _ = stop.send(());
    task.await??;
    assert_eq!(rows(&env.tables(), "usage").await?, 5);
    assert_eq!(distinct_ids(&env.tables(), "usage").await?, 5);
    let files = parquet_files(&env.tables().join("usage")).len();
    let live = handle.status().await?.tables[0].files;
    assert!(
        live < 4,
        "live files after compaction: {live} (on disk: {files})"
    );
    Ok(())
}
