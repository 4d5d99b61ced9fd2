//! `tally ledger`: run the materializer as its own process (split mode; from the local
//! log, or from Kafka with one ledger per partition: as a member of the ledgers'
//! consumer group in `ledger_group`, or every partition at once with `--once`), compact and
//! vacuum the tables, and show lag, last commit and size of each table. Wiring only: the
//! work is `tally_ledger::Ledger`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tally_events::log::EventLog;
use tally_ledger::{Ledger, Progress, ProgressUnit};

use crate::GlobalArgs;
use crate::config::TallyConfig;

#[derive(Subcommand, Debug)]
pub(crate) enum LedgerCommand {
    /// Materialize the event log into the Delta tables until Ctrl-C / SIGTERM, as its own
    /// process (one ledger per log and tables root: `tally up` runs its own). With
    /// `kafka:` configured it joins the ledgers' consumer group (`kafka.group`) and
    /// materializes the partitions the group assigns to it, one ledger per partition,
    /// each resuming from the position the tables record; run several for more
    /// throughput (up to one per partition). On a stop signal the batch in hand is
    /// committed; anything later is committed on the next start (or by the process that
    /// takes the partition over), and a crash at any moment neither loses nor duplicates
    /// an event.
    Run {
        /// Catch up to the log's end as of now (with progress), then exit. With Kafka:
        /// every partition up to its high watermark, in this process, without joining
        /// the consumer group.
        #[arg(long)]
        once: bool,
        /// Listen address of `/healthz` and `/readyz` while running (overrides
        /// admin.listen).
        #[arg(long, env = "TALLY_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
    },
    /// Compact small files of every table (also runs automatically in the background).
    Optimize,
    /// Delete files no table version references any more that are older than the
    /// retention (default: ledger.vacuum_retention_hours).
    Vacuum {
        /// Retention in hours (at least 1: readers of older versions need their files).
        #[arg(long)]
        retention_hours: Option<u64>,
    },
    /// Per table: committed log position, lag, last commit, files and bytes.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The ledger over the data directory's log, read-only: the log is written by the
/// proxy's process, which also reclaims segments.
async fn open(cfg: &TallyConfig) -> Result<Ledger> {
    let log: Arc<dyn EventLog> = Arc::new(super::query::ReadOnlyLog::new(cfg.log_dir()));
    Ledger::open(cfg.ledger.clone(), &cfg.tables_root(), log)
        .await
        .context("opening the ledger")
}

/// The ledger configuration of each partition of the topic: the configured one with the
/// source name `<ledger.source_name>.p<N>`, so each partition's consumer position is its
/// own app transaction in every table.
pub(crate) async fn partition_ledgers(
    cfg: &TallyConfig,
    kafka: &tally_events::log::KafkaConfig,
) -> Result<Vec<(u32, tally_ledger::LedgerConfig)>> {
    let partitions = tokio::task::spawn_blocking({
        let kafka = kafka.clone();
        move || tally_events::log::KafkaPartitionLog::partitions(&kafka)
    })
    .await?
    .context("reading the topic's partitions")?;
    Ok((0..partitions)
        .map(|p| (p, super::ledger_group::partition_config(cfg, p)))
        .collect())
}

/// The Kafka-fed ledger: one [`Ledger`] per partition, each with its own source name
/// `<ledger.source_name>.p<N>` (so its positions are its own app transaction in every
/// table), all committing to the same tables. Running: a member of the ledgers' consumer
/// group, for the partitions the group assigns (`ledger_group`). `once`: every partition
/// of the topic, caught up to its high watermark as of now, then exit.
async fn run_kafka(
    cfg: &TallyConfig,
    once: bool,
    admin_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let Some(kafka) = &cfg.kafka else {
        anyhow::bail!("config.invalid: no kafka: section");
    };
    if !once {
        return super::ledger_group::run(cfg, kafka, admin_listen).await;
    }
    let per_partition = partition_ledgers(cfg, kafka).await?;
    let partitions = per_partition.len();
    let root = cfg.tables_root();
    let mut ledgers = Vec::new();
    for (p, config) in per_partition {
        let log: Arc<dyn EventLog> = Arc::new(
            tally_events::log::KafkaPartitionLog::open(kafka, p)
                .with_context(|| format!("opening partition {p} of {}", kafka.topic))?,
        );
        ledgers.push(
            Ledger::open(config, &root, log)
                .await
                .with_context(|| format!("opening the ledger of partition {p}"))?,
        );
    }
    println!(
        "tally ledger: kafka {} topic {} ({partitions} partition(s)) -> {root}",
        kafka.brokers, kafka.topic
    );
    let mut totals = [0u64; 3];
    for (p, ledger) in ledgers.iter_mut().enumerate() {
        let bar = CatchUpBar::new(&format!("partition {p}"));
        let s = ledger.catch_up(|progress| bar.update(progress)).await;
        bar.finish();
        let s = s?;
        for (t, n) in totals.iter_mut().zip(s.rows) {
            *t += n;
        }
    }
    println!(
        "committed {} usage, {} decision and {} correction event(s) from {partitions} partition(s)",
        totals[0], totals[1], totals[2]
    );
    Ok(())
}

/// The admin listener of `tally ledger run` (`/healthz`, `/readyz`). An explicit
/// `--admin-listen` must bind; the configured default may be taken by a `tally up` on
/// the same host, and then the ledger runs without probes.
pub(crate) async fn bind_admin(
    cfg: &TallyConfig,
    admin_listen: Option<std::net::SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>> {
    let listen = admin_listen.unwrap_or(cfg.admin.listen);
    match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => {
            println!(
                "tally ledger admin on http://{} (/healthz, /readyz)",
                l.local_addr()?
            );
            Ok(Some(l))
        }
        Err(e) if admin_listen.is_none() => {
            tracing::warn!(%listen, error = %e, "admin.bind: no /healthz and /readyz (pass --admin-listen to choose an address)");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "admin.bind: cannot listen on {listen}: {e}"
        )),
    }
}

/// Run `ledgers` until SIGTERM / Ctrl-C, serving `/healthz` and `/readyz` on the admin
/// listener: ready while every ledger runs and its latest batch committed.
async fn run_until_signal(
    cfg: &TallyConfig,
    ledgers: Vec<(String, Ledger)>,
    admin_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let admin = bind_admin(cfg, admin_listen).await?;
    let stop = tokio::sync::watch::channel(false);
    let mut probes = Vec::new();
    let mut tasks = Vec::new();
    for (label, ledger) in ledgers {
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        probes.push((label, ledger.handle(), ended.clone()));
        let mut rx = stop.1.clone();
        let run = ledger.run(async move {
            let _ = rx.changed().await;
        });
        tasks.push(tokio::spawn(async move {
            let result = run.await;
            ended.store(true, std::sync::atomic::Ordering::Relaxed);
            result
        }));
    }
    let probes = Arc::new(probes);
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let probes = probes.clone();
                async move { readiness(&probes) }
            }),
        );
    let admin_task =
        admin.map(|admin| tokio::spawn(async move { axum::serve(admin, router).await }));
    super::up::shutdown_signal().await;
    let _ = stop.0.send(true);
    let mut failed = false;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed = true;
                tracing::error!(error = %e, "a ledger stopped with uncommitted records (committed on the next start)");
            }
            Err(e) => {
                failed = true;
                tracing::error!(error = %e, "a ledger task failed");
            }
        }
    }
    if let Some(t) = admin_task {
        t.abort();
    }
    if failed {
        anyhow::bail!(
            "ledger.stopped: the ledger stopped with uncommitted records; they are committed on the next start"
        );
    }
    Ok(())
}

type LedgerProbe = (
    String,
    tally_ledger::LedgerHandle,
    Arc<std::sync::atomic::AtomicBool>,
);

/// `/readyz` of `tally ledger run`: one check per ledger.
fn readiness(probes: &[LedgerProbe]) -> axum::response::Response {
    use super::up::ops::{Check, Readiness};
    use axum::response::IntoResponse;
    let checks: Vec<Check> = probes
        .iter()
        .map(|(label, handle, ended)| {
            if ended.load(std::sync::atomic::Ordering::Relaxed) {
                Check::failed("ledger", format!("{label}: not running"))
            } else {
                match handle.last_error() {
                    None => Check::ok("ledger", format!("{label}: running")),
                    Some(e) => {
                        Check::failed("ledger", format!("{label}: latest batch failed: {e}"))
                    }
                }
            }
        })
        .collect();
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, checks })).into_response()
}

/// A progress bar on stderr for a catch-up (drawn only when stderr is a terminal), in
/// the unit the log reports: bytes of the local log, records of a Kafka partition.
struct CatchUpBar {
    bar: ProgressBar,
    styled: std::sync::Once,
}

impl CatchUpBar {
    fn new(prefix: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_prefix(prefix.to_owned());
        Self {
            bar,
            styled: std::sync::Once::new(),
        }
    }

    fn update(&self, p: Progress) {
        self.styled.call_once(|| {
            let template = match p.unit {
                ProgressUnit::LogBytes => {
                    "{prefix} [{bar:40}] {binary_bytes}/{binary_total_bytes} of log, {binary_bytes_per_sec}, ETA {eta}"
                }
                ProgressUnit::Records => "{prefix} [{bar:40}] {pos}/{len} records, {per_sec}, ETA {eta}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                self.bar.set_style(style.progress_chars("=> "));
            }
            self.bar.set_length(p.total);
        });
        self.bar.set_position(p.done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub(crate) fn run(global: &GlobalArgs, cmd: LedgerCommand) -> Result<()> {
    let cfg = super::load_config(global)?;
    match cmd {
        LedgerCommand::Run { once, admin_listen } if cfg.kafka.is_some() => {
            super::runtime()?.block_on(run_kafka(&cfg, once, admin_listen))
        }
        LedgerCommand::Run { once, admin_listen } => super::runtime()?.block_on(async move {
            let mut ledger = open(&cfg).await?;
            if once {
                let bar = CatchUpBar::new("materializing");
                let s = ledger.catch_up(|p| bar.update(p)).await;
                bar.finish();
                let s = s?;
                println!(
                    "committed {} usage, {} decision and {} correction event(s); {} duplicate(s) dropped, {} undecodable; position {}",
                    s.rows[0], s.rows[1], s.rows[2], s.duplicates, s.undecodable, s.end
                );
                return Ok(());
            }
            println!(
                "tally ledger: {} -> {}",
                cfg.log_dir().display(),
                cfg.tables_root()
            );
            run_until_signal(&cfg, vec![("local".to_owned(), ledger)], admin_listen).await
        }),
        LedgerCommand::Optimize => super::runtime()?.block_on(async move {
            let mut ledger = open(&cfg).await?;
            for s in ledger.optimize().await? {
                println!(
                    "{:<12} {} small file(s) compacted into {} in {} partition(s)",
                    s.table, s.files_removed, s.files_added, s.partitions_optimized
                );
            }
            Ok(())
        }),
        LedgerCommand::Vacuum { retention_hours } => super::runtime()?.block_on(async move {
            if retention_hours == Some(0) {
                anyhow::bail!(
                    "ledger.vacuum: --retention-hours 0 would delete files that running queries still read; use 1 or more"
                );
            }
            let mut ledger = open(&cfg).await?;
            let retention = retention_hours.map(|h| Duration::from_secs(h * 3600));
            for s in ledger.vacuum(retention).await? {
                println!("{:<12} {} file(s) deleted", s.table, s.files_deleted);
            }
            Ok(())
        }),
        LedgerCommand::Status { json } => super::runtime()?.block_on(async move {
            let root = cfg.tables_root();
            let log: std::sync::Arc<dyn tally_events::log::EventLog> =
                std::sync::Arc::new(super::query::ReadOnlyLog::new(cfg.log_dir()));
            let status = tally_ledger::ledger_status(&cfg.ledger, &root, Some(log)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!("tables: {}", status.tables_uri);
            // The read-only view of the log has no end of its own (it reads until it
            // finds no more records): only a real end is worth printing.
            if let Some(end) = status
                .log_durable_end
                .filter(|e| *e != tally_events::log::Position::new(u64::MAX, u64::MAX))
            {
                println!("log durable end: {end}");
            }
            println!(
                "{:<12} {:>14} {:>10} {:>10} {:>8} {:>7} {:>12} {:>10}",
                "table", "committed", "lag_events", "lag_s", "version", "files", "bytes", "rows"
            );
            for t in &status.tables {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{:<12} {:>14} {:>10} {:>10} {:>8} {:>7} {:>12} {:>10}",
                    t.table,
                    opt(t.committed_position.map(|p| p.to_string())),
                    opt(t.lag_events.map(|n| n.to_string())),
                    opt(t.lag_seconds.map(|s| format!("{s:.1}"))),
                    opt(t.version.map(|v| v.to_string())),
                    t.files,
                    t.bytes,
                    opt(t.rows.map(|r| r.to_string())),
                );
            }
            for u in &status.undecodable {
                println!("undecodable record: {u:?}");
            }
            Ok(())
        }),
    }
}
