//! `tally enforcer`: the proxy on its own (split mode). Policies, usage and decision
//! events to the event log — Kafka with its local outage spool when `kafka:` is set, else
//! the local segment log of the data directory, which a `tally ledger run` on the same
//! directory materializes — and the operations endpoints (`/healthz`, `/readyz`,
//! `/metrics`) on the admin listener. No ledger and no SQL here; wiring only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tally_enforcer::{EnforcerMetrics, EventSink, ProxyState};
use tally_events::log::{EventLog, SegmentLog, SpoolingLog};

use super::up::{ops, policy_upkeep, rebuild_counters, shutdown_signal, wait_in_flight};
use crate::GlobalArgs;

#[derive(Args, Debug, Clone)]
pub(crate) struct EnforcerArgs {
    /// Proxy listen address (overrides proxy.listen).
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listen address for /healthz, /readyz and /metrics (overrides admin.listen).
    #[arg(long, env = "TALLY_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Seconds to let in-flight requests and streams finish on shutdown.
    #[arg(long, env = "TALLY_DRAIN_SECONDS", default_value_t = 30)]
    drain_seconds: u64,
    /// Add a `tenant` label to the token, cost and decision metrics.
    #[arg(long, env = "TALLY_METRICS_TENANT_LABEL")]
    metrics_tenant_label: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: EnforcerArgs) -> Result<()> {
    let mut cfg = super::load_config(global)?;
    if let Some(l) = args.listen {
        cfg.proxy.listen = l;
    }
    if let Some(l) = args.admin_listen {
        cfg.admin.listen = l;
    }
    let drain = Duration::from_secs(args.drain_seconds);
    super::runtime()?.block_on(async move {
        // The event log: Kafka (with the outage spool) or the local segment log.
        let (log, source, log_dir, kafka): (Arc<dyn EventLog>, _, _, _) = match &cfg.kafka {
            Some(kafka) => {
                let dir = kafka
                    .spool
                    .dir
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("spool"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("log.io: cannot create {}", dir.display()))?;
                let spool = Arc::new(
                    SpoolingLog::open(kafka, &dir)
                        .context("opening the Kafka event log and its outage spool")?,
                );
                let description = format!("kafka {} topic {}", kafka.brokers, kafka.topic);
                (
                    spool.clone() as Arc<dyn EventLog>,
                    ops::LogSource::Kafka(spool),
                    dir,
                    Some(description),
                )
            }
            None => {
                let dir = cfg.log_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("log.io: cannot create {}", dir.display()))?;
                let log = Arc::new(SegmentLog::open(&dir, &cfg.log)?);
                (
                    log.clone() as Arc<dyn EventLog>,
                    ops::LogSource::Local(log),
                    dir,
                    None,
                )
            }
        };
        let metrics = Arc::new(EnforcerMetrics::new(args.metrics_tenant_label));
        let (sink, sink_task) =
            EventSink::start_with_metrics(log.clone(), &cfg.proxy.event_queue, metrics);
        let state = Arc::new(
            ProxyState::new(cfg.proxy.clone(), cfg.instance_name(), sink)
                .map_err(|e| anyhow::anyhow!("config.invalid: {e}"))?,
        );

        // Counters from the committed tables, plus (local log) the tail the ledger has not
        // committed. With Kafka, a follower thread folds the topic from the tables'
        // positions on: every instance's usage up to the end as of now (the uncommitted
        // tail), then the other instances' usage as it arrives, so limits hold across
        // enforcers.
        let follow_stop = Arc::new(AtomicBool::new(false));
        let mut follower = None;
        if !state.policy.policy().is_empty() {
            let engine = super::query::local_engine(&cfg)
                .await
                .context("opening the tables to rebuild policy counters")?;
            rebuild_counters(&state.policy, &engine).await?;
        }
        // Followed even without rules: a policy loaded later counts the others too.
        if let Some(kafka) = &cfg.kafka {
            let starts = committed_usage_positions(&cfg, kafka).await?;
            follower = Some(follow_topic(
                kafka.clone(),
                starts,
                state.clone(),
                cfg.instance_name(),
                follow_stop.clone(),
            )?);
        }

        let listener = tally_enforcer::server::bind(cfg.proxy.listen).await?;
        let proxy_addr = listener.local_addr()?;
        let admin =
            super::admin_listener::AdminListener::bind(cfg.admin.listen, cfg.admin.tls.as_ref())
                .await?;
        let admin_addr = admin.addr();
        let admin_scheme = admin.scheme();
        let listening = Arc::new(AtomicBool::new(false));
        let ops = {
            let weak = Arc::downgrade(&state);
            Arc::new(ops::Ops::new(
                ops::Probes {
                    proxy_listening: listening.clone(),
                    proxy_addr: proxy_addr.to_string(),
                    sink: state.sink.health(),
                    log_dir: log_dir.clone(),
                    ledger: None,
                    engine: None,
                },
                tally_queries::Authenticator::new(&cfg.queries),
                &state.sink,
                source,
                move || {
                    weak.upgrade()
                        .map_or(0.0, |s| s.stats.in_flight.load(Ordering::Relaxed) as f64)
                },
            ))
        };
        let admin_task = tokio::spawn(async move { axum::serve(admin, ops::router(ops)).await });
        let upkeep = policy_upkeep(state.clone());

        println!(
            "tally enforcer listening on {}://{proxy_addr}",
            if cfg.proxy.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        println!("tally admin API on {admin_scheme}://{admin_addr} (/healthz, /readyz, /metrics)");
        match &kafka {
            Some(k) => println!("  event log: {k} (outage spool {})", log_dir.display()),
            None => println!("  event log: {}", log_dir.display()),
        }

        let shutdown_at = Arc::new(std::sync::OnceLock::new());
        let signal = {
            let (listening, at) = (listening.clone(), shutdown_at.clone());
            async move {
                shutdown_signal().await;
                listening.store(false, Ordering::Relaxed);
                let _ = at.set(Instant::now());
            }
        };
        listening.store(true, Ordering::Relaxed);
        tally_enforcer::server::serve(listener, state.clone(), signal, drain).await?;
        wait_in_flight(&state, shutdown_at.get().copied(), drain).await;
        upkeep.abort();
        follow_stop.store(true, Ordering::Relaxed);
        if let Some(f) = follower
            && f.join().is_err()
        {
            tracing::error!("the topic follower panicked");
        }
        drop(state);
        match tokio::time::timeout(Duration::from_secs(10), sink_task.finish()).await {
            Ok(Ok(())) => tracing::info!("event log flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the event log failed"),
            Err(_) => tracing::warn!("gave up waiting for the event sink"),
        }
        admin_task.abort();
        // The Kafka log waits for outstanding deliveries (or spools them) when dropped.
        drop(log);
        println!("tally enforcer stopped");
        Ok(())
    })
}

/// Per partition of the topic, the position up to which the `usage` table holds the
/// partition's events (what `rebuild_counters` already folded): the Kafka-fed ledger's
/// app transaction `<ledger.source_name>.p<N>`; the partition's start when nothing is
/// committed.
async fn committed_usage_positions(
    cfg: &crate::config::TallyConfig,
    kafka: &tally_events::log::KafkaConfig,
) -> Result<Vec<tally_events::log::Position>> {
    let root = cfg.tables_root();
    let mut starts = Vec::new();
    for (p, ledger) in super::ledger::partition_ledgers(cfg, kafka).await? {
        let status = tally_ledger::ledger_status(&ledger, &root, None)
            .await
            .with_context(|| format!("reading the committed position of partition {p}"))?;
        let committed = status
            .tables
            .iter()
            .find(|t| t.table == "usage")
            .and_then(|t| t.committed_position)
            .filter(|pos| pos.segment == u64::from(p));
        starts.push(committed.unwrap_or(tally_events::log::Position::new(u64::from(p), 0)));
    }
    Ok(starts)
}

/// Fold the topic's usage events into the policy counters on a thread of its own: every
/// event before the partitions' ends as of now (the tail the tables do not hold yet),
/// then only other instances' events (this instance counts its own as it serves them).
fn follow_topic(
    kafka: tally_events::log::KafkaConfig,
    starts: Vec<tally_events::log::Position>,
    state: Arc<ProxyState>,
    me: String,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let reader = tally_events::log::KafkaReader::standalone(&kafka)?;
    let mut catch_up_to = Vec::with_capacity(starts.len());
    for p in &starts {
        let partition = u32::try_from(p.segment).unwrap_or(0);
        catch_up_to.push(reader.watermarks(partition)?.1);
    }
    reader.assign(&starts)?;
    tracing::info!(
        partitions = starts.len(),
        "following the event topic for other instances' usage"
    );
    Ok(std::thread::Builder::new()
        .name("tally-follow".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let records = match reader.poll(1_000, Duration::from_millis(200)) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event topic for shared limits; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                for r in records {
                    let Ok(tally_events::Event::Usage(u)) = tally_events::decode(&r.payload) else {
                        continue;
                    };
                    let tail = usize::try_from(r.position.segment)
                        .ok()
                        .and_then(|p| catch_up_to.get(p))
                        .is_some_and(|&end| r.position.offset < end);
                    if tail || u.header.gateway_instance != me {
                        state.policy.rebuild(&u);
                    }
                }
            }
        })?)
}
