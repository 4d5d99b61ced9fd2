//! The not-yet-committed tail: events only in the log are queryable at once, and stop
//! coming from the tail once the ledger committed them.

use std::sync::Arc;

use parking_lot::Mutex;
use tally_events::arrow::Table;
use tally_events::log::{EventLog, LogConfig, Position, SegmentLog};
use tally_events::{Event, FinishState, Outcome, RuleKind};
use tally_queries::{LogTail, Principal, TailSource, Verdict, why};

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn an_event_only_in_the_tail_is_returned() {
    let (dir, _) = committed_fixture().await;
    let tail = Arc::new(StaticTail::default());
    let e = engine_with(
        dir.path(),
        Default::default(),
        Some(tail.clone() as Arc<dyn TailSource>),
    )
    .await;
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM usage", &Principal::Admin).await,
        8
    );

    tail.batches.lock().push((
        Table::Usage,
        usage_batch(&[usage(
            "req-tail",
            "acme",
            t0(),
            FinishState::Completed,
            7,
            3,
            42,
        )]),
    ));
    tail.batches.lock().push((
        Table::Decisions,
        decisions_batch(&[decision(
            "req-tail",
            "acme",
            t0(),
            Outcome::Deny,
            "rpm",
            RuleKind::RateLimit,
            "too fast",
        )]),
    ));
    // Visible on the very next query, in tables, views and reports.
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM usage", &Principal::Admin).await,
        9
    );
    assert_eq!(
        strs(
            &e,
            "SELECT decision_rule FROM requests WHERE request_id = 'req-tail'",
            &acme(),
            "decision_rule"
        )
        .await,
        vec![Some("rpm".to_owned())]
    );
    assert_eq!(
        scalar(&e, "SELECT sum(cost_micros) FROM usage_hourly", &acme()).await,
        3_200 + 42
    );
    let r = why(&e, "req-tail", &acme()).await.unwrap();
    assert_eq!(r.verdict, Verdict::Denied);
    // Still scoped.
    assert_eq!(
        scalar(
            &e,
            "SELECT count(*) FROM usage WHERE request_id = 'req-tail'",
            &globex()
        )
        .await,
        0
    );
}

#[tokio::test]
async fn tables_that_do_not_exist_yet_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tables");
    let tail = Arc::new(StaticTail::default());
    let e = engine_at(&root, Some(tail.clone() as Arc<dyn TailSource>)).await;
    for sql in [
        "SELECT * FROM usage",
        "SELECT * FROM decisions",
        "SELECT * FROM corrections",
        "SELECT * FROM requests",
        "SELECT * FROM usage_corrected",
        "SELECT * FROM usage_hourly",
        "SELECT * FROM spend_daily",
        "SELECT * FROM denials",
    ] {
        let b = e
            .collect(sql, &acme())
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        assert_eq!(rows(&b), 0, "{sql}");
    }
    assert!(!root.exists(), "queries must not create the tables root");
    // The tail alone is enough.
    tail.batches.lock().push((
        Table::Usage,
        usage_batch(&[usage(
            "first",
            "acme",
            t0(),
            FinishState::Completed,
            1,
            1,
            1,
        )]),
    ));
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM requests", &acme()).await,
        1
    );
}

async fn engine_at(
    root: &std::path::Path,
    tail: Option<Arc<dyn TailSource>>,
) -> tally_queries::QueryEngine {
    tally_queries::QueryEngine::new(Default::default(), root.to_str().unwrap(), tail)
        .await
        .unwrap()
}

async fn append(log: &SegmentLog, e: Event) {
    log.append("acme", &tally_events::encode(&e))
        .unwrap()
        .durable()
        .await
        .unwrap();
}

#[tokio::test]
async fn log_tail_feeds_queries_until_the_ledger_commits() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("tables");
    let log = Arc::new(SegmentLog::open(&dir.path().join("log"), &LogConfig::default()).unwrap());
    let committed = Arc::new(Mutex::new(Position::START));
    let c = committed.clone();
    let tail = LogTail::new(log.clone(), Arc::new(move |_t: Table| *c.lock()));
    let e = engine_at(&tables, Some(Arc::new(tail) as Arc<dyn TailSource>)).await;

    let first = usage("log-1", "acme", t0(), FinishState::Completed, 10, 5, 100);
    let deny = decision(
        "log-2",
        "acme",
        t0(),
        Outcome::Deny,
        "cap",
        RuleKind::UsageCap,
        "over budget",
    );
    let started = std::time::Instant::now();
    append(&log, Event::Usage(first.clone())).await;
    append(&log, Event::Decision(deny.clone())).await;
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        strs(&e, "SELECT rule FROM denials", &acme(), "rule").await,
        vec![Some("cap".to_owned())]
    );

    // The ledger commits both events and moves its position: they now come from Delta,
    // once.
    write_table(&tables, Table::Usage, usage_batch(&[first])).await;
    write_table(&tables, Table::Decisions, decisions_batch(&[deny])).await;
    *committed.lock() = log.durable_end();
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 1);
    assert_eq!(scalar(&e, "SELECT count(*) FROM denials", &acme()).await, 1);

    // A new event shows up from the tail next to the committed ones.
    append(
        &log,
        Event::Usage(usage(
            "log-3",
            "acme",
            t0(),
            FinishState::ClientAborted,
            1,
            0,
            0,
        )),
    )
    .await;
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 2);
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &globex()).await, 0);
}

/// The position the tail starts from comes from the table version the query reads, not
/// from a separately read (possibly stale) committed position: a commit the engine did
/// not hear about yet never makes a row count twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_between_position_and_scan_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("tables");
    let log = Arc::new(SegmentLog::open(&dir.path().join("log"), &LogConfig::default()).unwrap());
    // The engine's notion of the committed position never moves: as stale as it gets.
    let tail = LogTail::new(log.clone(), Arc::new(|_t: Table| Position::START))
        .with_ledger_app_id(tally_ledger::app_id("local"));
    let e = engine_at(&tables, Some(Arc::new(tail) as Arc<dyn TailSource>)).await;
    for i in 0..3 {
        let u = usage(
            &format!("c-{i}"),
            "acme",
            t0(),
            FinishState::Completed,
            10,
            5,
            100,
        );
        append(&log, Event::Usage(u)).await;
    }
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 3);

    // A real ledger commits the three events (recording the log position in Delta).
    let mut ledger = tally_ledger::Ledger::open(
        tally_ledger::LedgerConfig::default(),
        tables.to_str().unwrap(),
        log.clone() as Arc<dyn EventLog>,
    )
    .await
    .unwrap();
    let step = ledger.step().await.unwrap();
    assert_eq!(step.rows[0], 3);
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 3);
    assert_eq!(
        scalar(&e, "SELECT count(DISTINCT request_id) FROM usage", &acme()).await,
        3
    );

    // One more event: from the tail, beside the committed three.
    let u = usage("c-3", "acme", t0(), FinishState::Completed, 10, 5, 100);
    append(&log, Event::Usage(u)).await;
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &acme()).await, 4);
}
