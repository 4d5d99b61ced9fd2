//! `tally ledger run` with Kafka: this process as a member of the ledgers' consumer group
//! (`kafka.group`). The group assigns the topic's partitions among the ledger processes;
//! this process runs one `Ledger` per partition it is given (source
//! `<ledger.source_name>.p<N>`), which starts from the position the Delta tables record
//! for that source, and drops it when the partition is revoked, abandoning what it had
//! not committed (the next owner re-reads it from the recorded position). Owns the
//! membership thread, the per-partition ledger tasks and the `/readyz` of this mode;
//! must not decide where a partition is read from (the tables do: the group's Kafka
//! offsets are only committed as a hint).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tally_events::arrow::Table;
use tally_events::log::{
    EventLog, KafkaConfig, KafkaPartitionLog, KafkaReader, Position, RebalanceEvent,
};
use tally_ledger::{Ledger, LedgerConfig, LedgerHandle};

use crate::config::TallyConfig;

/// How long the membership thread waits in one poll (rebalances run inside it).
const MEMBER_POLL: Duration = Duration::from_millis(200);
/// How often the committed positions are sent to Kafka as the group's offsets (a hint).
const HINT_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between attempts to open a partition's ledger.
const MAX_OPEN_BACKOFF: Duration = Duration::from_secs(30);

/// The ledger configuration of partition `p`: the configured one with the source name
/// `<ledger.source_name>.p<N>`, so each partition's consumer position is its own app
/// transaction in every table.
pub(crate) fn partition_config(cfg: &TallyConfig, p: u32) -> LedgerConfig {
    let mut config = cfg.ledger.clone();
    config.source_name = format!("{}.p{p}", cfg.ledger.source_name);
    config
}

/// Where one owned partition's ledger is.
#[derive(Clone)]
enum Stage {
    /// Opening (reading the tables' positions, rebuilding the dedupe set); the last
    /// attempt's error if one failed.
    Opening(Option<String>),
    Running(LedgerHandle),
    /// The ledger task ended while the partition was still owned.
    Ended(String),
}

/// A partition this process owns.
struct Owned {
    stage: Arc<Mutex<Stage>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The group member: a thread polling a [`KafkaReader`] that takes part in the
/// assignment only (its partitions are paused; the ledgers read through readers of their
/// own), forwarding rebalances and committing the offset hints.
struct Member {
    stop: Arc<AtomicBool>,
    hints: Arc<Mutex<Vec<Position>>>,
    thread: std::thread::JoinHandle<()>,
}

fn join_group(
    kafka: &KafkaConfig,
    events: tokio::sync::mpsc::UnboundedSender<RebalanceEvent>,
) -> Result<Member> {
    let reader = KafkaReader::join_group_for_assignment(kafka, &kafka.group)
        .with_context(|| format!("joining consumer group {}", kafka.group))?;
    let stop = Arc::new(AtomicBool::new(false));
    let hints = Arc::new(Mutex::new(Vec::new()));
    let thread = std::thread::Builder::new()
        .name("tally-ledger-group".into())
        .spawn({
            let (stop, hints) = (stop.clone(), hints.clone());
            move || {
                let mut last_hint = std::time::Instant::now();
                let mut failing = false;
                while !stop.load(Ordering::Relaxed) {
                    match reader.poll(64, MEMBER_POLL) {
                        // Paused partitions deliver nothing; a record fetched in the
                        // instant between an assignment and its pause is the ledgers' to
                        // read, not this reader's.
                        Ok(_) => failing = false,
                        Err(e) => {
                            if !failing {
                                tracing::warn!(error = %e, "consumer group member: polling Kafka failed; retrying");
                            }
                            failing = true;
                            std::thread::sleep(MEMBER_POLL);
                        }
                    }
                    for event in reader.take_rebalance_events() {
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                    if last_hint.elapsed() >= HINT_EVERY {
                        last_hint = std::time::Instant::now();
                        let next = std::mem::take(&mut *hints.lock());
                        if let Err(e) = reader.commit_hint(&next) {
                            tracing::debug!(error = %e, "committing the group's offset hint");
                        }
                    }
                }
                // Dropping the reader leaves the group, so the others take its
                // partitions over at once.
                drop(reader);
            }
        })
        .context("starting the consumer group thread")?;
    Ok(Member {
        stop,
        hints,
        thread,
    })
}

/// Where partition `p`'s ledger resumes reading: the lowest position its tables record
/// for its source, a table without one counting as the partition's start (records a
/// table already holds are read again and skipped).
fn resume_offset(p: u32, positions: &std::collections::HashMap<Table, Position>) -> u64 {
    Table::ALL
        .iter()
        .map(|t| {
            positions
                .get(t)
                .filter(|pos| pos.segment == u64::from(p))
                .map_or(0, |pos| pos.offset)
        })
        .min()
        .unwrap_or(0)
}

/// Own partition `p` until `stop`: open its ledger (retrying with backoff while the
/// tables or Kafka fail), then run it. On `stop` the batch in hand is committed (a
/// revocation aborts the task instead).
fn own_partition(
    p: u32,
    config: LedgerConfig,
    root: String,
    kafka: KafkaConfig,
    stage: Arc<Mutex<Stage>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        let ledger = loop {
            let opened = match KafkaPartitionLog::open(&kafka, p) {
                Ok(log) => {
                    let log: Arc<dyn EventLog> = Arc::new(log);
                    Ledger::open(config.clone(), &root, log)
                        .await
                        .map_err(anyhow::Error::from)
                }
                Err(e) => Err(e.into()),
            };
            match opened {
                Ok(ledger) => break ledger,
                Err(e) => {
                    tracing::error!(partition = p, error = %e, retry_in = ?backoff, "opening the ledger of a partition failed");
                    *stage.lock() = Stage::Opening(Some(e.to_string()));
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_OPEN_BACKOFF);
        };
        println!(
            "tally ledger: partition {p} assigned: materializing from offset {} (source {})",
            resume_offset(p, &ledger.committed_positions()),
            config.source_name
        );
        *stage.lock() = Stage::Running(ledger.handle());
        let result = ledger
            .run(async move {
                let _ = stop.changed().await;
            })
            .await;
        let ended = match result {
            Ok(()) => "stopped".to_owned(),
            Err(e) => {
                tracing::error!(partition = p, code = e.code(), error = %e, "the ledger of a partition stopped with uncommitted records (its next owner commits them)");
                format!("stopped: {e}")
            }
        };
        *stage.lock() = Stage::Ended(ended);
    })
}

/// `/readyz` of a group member: the membership itself, and every owned partition's
/// ledger running with its latest batch committed. Owning no partition (more ledgers
/// than partitions) is ready: the process is a standby.
fn readiness(
    group: &str,
    owned: &BTreeMap<u32, Arc<Mutex<Stage>>>,
    member_alive: bool,
) -> axum::response::Response {
    use super::up::ops::{Check, Readiness};
    use axum::response::IntoResponse;
    let parts: Vec<String> = owned.keys().map(u32::to_string).collect();
    let mut checks = vec![if member_alive {
        Check::ok(
            "group",
            format!("member of {group}; partitions [{}]", parts.join(", ")),
        )
    } else {
        Check::failed("group", format!("no longer a member of {group}"))
    }];
    for (p, stage) in owned {
        checks.push(match &*stage.lock() {
            Stage::Opening(None) => Check::failed("ledger", format!("partition {p}: opening")),
            Stage::Opening(Some(e)) => {
                Check::failed("ledger", format!("partition {p}: opening failed: {e}"))
            }
            Stage::Running(handle) => match handle.last_error() {
                None => Check::ok("ledger", format!("partition {p}: running")),
                Some(e) => {
                    Check::failed("ledger", format!("partition {p}: latest batch failed: {e}"))
                }
            },
            Stage::Ended(why) => Check::failed("ledger", format!("partition {p}: {why}")),
        });
    }
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, checks })).into_response()
}

/// Run as a member of the ledgers' consumer group until SIGTERM / Ctrl-C (see the module
/// docs). On a stop signal every owned partition's ledger commits its batch in hand,
/// then the process leaves the group.
pub(crate) async fn run(
    cfg: &TallyConfig,
    kafka: &KafkaConfig,
    admin_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let root = cfg.tables_root();
    let admin = super::ledger::bind_admin(cfg, admin_listen).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let member = join_group(kafka, tx)?;
    println!(
        "tally ledger: kafka {} topic {} consumer group {} -> {root}",
        kafka.brokers, kafka.topic, kafka.group
    );
    let stages: Arc<Mutex<BTreeMap<u32, Arc<Mutex<Stage>>>>> = Arc::default();
    let member_alive = Arc::new(AtomicBool::new(true));
    let admin_task = admin.map(|admin| {
        let (stages, alive, group) = (stages.clone(), member_alive.clone(), kafka.group.clone());
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let (stages, alive, group) = (stages.clone(), alive.clone(), group.clone());
                    async move {
                        let owned = stages.lock().clone();
                        readiness(&group, &owned, alive.load(Ordering::Relaxed))
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(admin, router).await })
    });

    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let signal = super::up::shutdown_signal();
    tokio::pin!(signal);
    let mut hint_timer = tokio::time::interval(Duration::from_secs(1));
    let outcome: Result<()> = loop {
        tokio::select! {
            () = &mut signal => break Ok(()),
            event = rx.recv() => match event {
                None => {
                    member_alive.store(false, Ordering::Relaxed);
                    break Err(anyhow::anyhow!("ledger.group: the consumer group member stopped"));
                }
                Some(RebalanceEvent::Assigned(parts)) => {
                    for p in parts {
                        if owned.contains_key(&p) {
                            continue;
                        }
                        let stage = Arc::new(Mutex::new(Stage::Opening(None)));
                        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                        let task = own_partition(
                            p,
                            partition_config(cfg, p),
                            root.clone(),
                            kafka.clone(),
                            stage.clone(),
                            stop_rx,
                        );
                        stages.lock().insert(p, stage.clone());
                        owned.insert(p, Owned { stage, stop: stop_tx, task });
                    }
                }
                Some(RebalanceEvent::Revoked(parts)) => {
                    for p in parts {
                        if let Some(o) = owned.remove(&p) {
                            // Abandon what is not committed: the next owner reads it
                            // again from the position the tables record. A commit in
                            // flight is atomic: made (and then the next owner resumes
                            // after it) or not.
                            o.task.abort();
                            stages.lock().remove(&p);
                            println!("tally ledger: partition {p} revoked");
                        }
                    }
                }
                Some(RebalanceEvent::Error(e)) => {
                    tracing::warn!(group = %kafka.group, error = %e, "consumer group rebalance error");
                }
            },
            _ = hint_timer.tick() => {
                let mut next = Vec::new();
                for (p, o) in &owned {
                    if let Stage::Running(handle) = &*o.stage.lock() {
                        let offset = resume_offset(*p, &handle.committed_positions());
                        next.push(Position::new(u64::from(*p), offset));
                    }
                }
                *member.hints.lock() = next;
            }
        }
    };

    // Commit the batches in hand while the partitions are still ours, then leave.
    for o in owned.values() {
        let _ = o.stop.send(true);
    }
    let mut failed = false;
    for (p, o) in owned {
        if let Err(e) = o.task.await {
            failed = true;
            tracing::error!(partition = p, error = %e, "a partition's ledger task failed");
        }
        if let Stage::Ended(why) = &*o.stage.lock()
            && why != "stopped"
        {
            failed = true;
        }
    }
    member.stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || member.thread.join()).await;
    if let Some(t) = admin_task {
        t.abort();
    }
    outcome?;
    if failed {
        anyhow::bail!(
            "ledger.stopped: a partition's ledger stopped with uncommitted records; they are committed on the next start"
        );
    }
    Ok(())
}
