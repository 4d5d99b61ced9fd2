//! `tally up`: the embedded stack. Opens the local event log, starts the event sink, the
//! ledger, the query servers, the operations endpoints (`ops`: health, readiness,
//! metrics) and the proxy (and, with --dev, the simulator as every upstream), and shuts
//! down gracefully on Ctrl-C / SIGTERM: stop accepting, drain in-flight requests and
//! streams within `--drain-seconds`, flush the log (every receipt durable), let the
//! ledger commit what is durable, exit 0. Wiring only: no behaviour of its own.

mod ops;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tally_enforcer::{EnforcerMetrics, EventSink, ProxyState};
use tally_events::arrow::Table;
use tally_events::log::{EventLog, Position, SegmentLog};

use crate::GlobalArgs;

/// The admin token accepted in `--dev` mode.
const DEV_ADMIN_TOKEN: &str = "dev-admin";

#[derive(Args, Debug, Clone)]
pub(crate) struct UpArgs {
    /// Development mode: run the provider simulator in-process, point every upstream at
    /// it and accept `dev-<tenant>-<anything>` keys.
    #[arg(long, env = "TALLY_DEV")]
    dev: bool,
    /// Proxy listen address (overrides proxy.listen).
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Simulator listen address in --dev mode.
    #[arg(long, env = "TALLY_SIMULATOR_LISTEN", default_value = "127.0.0.1:9090")]
    simulator_listen: SocketAddr,
    /// Admin/SQL HTTP listen address (overrides admin.listen).
    #[arg(long, env = "TALLY_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Postgres wire protocol listen address (overrides postgres.listen).
    #[arg(long, env = "TALLY_POSTGRES_LISTEN")]
    postgres_listen: Option<SocketAddr>,
    /// Seconds to let in-flight requests and streams finish on shutdown.
    #[arg(long, env = "TALLY_DRAIN_SECONDS", default_value_t = 30)]
    drain_seconds: u64,
    /// Add a `tenant` label to the token, cost and decision metrics (one series per
    /// tenant: keep off unless tenants are few).
    #[arg(long, env = "TALLY_METRICS_TENANT_LABEL")]
    metrics_tenant_label: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: UpArgs) -> Result<()> {
    let mut cfg = super::load_config(global)?;
    if let Some(l) = args.listen {
        cfg.proxy.listen = l;
    }
    if let Some(l) = args.admin_listen {
        cfg.admin.listen = l;
    }
    if let Some(l) = args.postgres_listen {
        cfg.postgres.listen = l;
    }
    if args.dev {
        cfg.queries
            .admin_tokens
            .push(tally_queries::hash_token(DEV_ADMIN_TOKEN));
    }
    let rt = super::runtime()?;
    rt.block_on(async move {
        let mut simulator = None;
        if args.dev {
            let listener = tokio::net::TcpListener::bind(args.simulator_listen)
                .await
                .with_context(|| format!("simulator.bind: cannot listen on {}", args.simulator_listen))?;
            let addr = listener.local_addr()?;
            let sim = tally_simulator::Simulator::new(cfg.simulator.clone());
            simulator = Some(tokio::spawn(sim.serve(listener)));
            cfg.proxy.point_all_upstreams_at(&format!("http://{addr}"));
            cfg.proxy.dev_keys = true;
            tracing::info!(%addr, "provider simulator started (dev mode)");
        }
        let log_dir = cfg.log_dir();
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("log.io: cannot create {}", log_dir.display()))?;
        let log = Arc::new(SegmentLog::open(&log_dir, &cfg.log)?);
        let metrics = Arc::new(EnforcerMetrics::new(args.metrics_tenant_label));
        let (sink, sink_task) =
            EventSink::start_with_metrics(log.clone() as Arc<dyn EventLog>, &cfg.proxy.event_queue, metrics);
        // Ledger: tails the log into the Delta tables; queries see tables + uncommitted tail.
        let tables_root = cfg.tables_root();
        let ledger = tally_ledger::Ledger::open(cfg.ledger.clone(), &tables_root, log.clone() as Arc<dyn EventLog>)
            .await
            .context("opening the ledger")?;
        let handle = ledger.handle();
        let (ledger_stop, ledger_stopped) = tokio::sync::oneshot::channel::<()>();
        let ledger_ended = Arc::new(AtomicBool::new(false));
        let ledger_task = {
            let ended = ledger_ended.clone();
            let run = ledger.run(async move {
                let _ = ledger_stopped.await;
            });
            tokio::spawn(async move {
                let result = run.await;
                ended.store(true, Ordering::Relaxed);
                result
            })
        };
        let positions = {
            let h = handle.clone();
            move |t: Table| h.committed_positions().get(&t).copied().unwrap_or(Position::START)
        };
        let tail = tally_queries::LogTail::new(log.clone() as Arc<dyn EventLog>, Arc::new(positions));
        let engine = Arc::new(
            tally_queries::QueryEngine::new(cfg.queries.clone(), &tables_root, Some(Arc::new(tail)))
                .await
                .context("starting the query engine")?,
        );
        let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .with_context(|| format!("admin.bind: cannot listen on {}", cfg.admin.listen))?;
        let admin_addr = admin.local_addr()?;
        let state = Arc::new(
            ProxyState::new(cfg.proxy.clone(), cfg.instance_name(), sink)
                .map_err(|e| anyhow::anyhow!("config.invalid: {e}"))?,
        );
        let listener = tally_enforcer::server::bind(cfg.proxy.listen).await?;
        let addr = listener.local_addr()?;
        let proxy_listening = Arc::new(AtomicBool::new(false));
        let ops = {
            let weak = Arc::downgrade(&state);
            let probes = ops::Probes {
                proxy_listening: proxy_listening.clone(),
                proxy_addr: addr.to_string(),
                sink: state.sink.health(),
                log_dir: log_dir.clone(),
                ledger: handle.clone(),
                ledger_stopped: ledger_ended.clone(),
                engine: engine.clone(),
            };
            Arc::new(ops::Ops::new(
                probes,
                tally_queries::Authenticator::new(&cfg.queries),
                &state.sink,
                log.clone(),
                move || weak.upgrade().map_or(0.0, |s| s.stats.in_flight.load(Ordering::Relaxed) as f64),
            ))
        };
        let router = tally_queries::router(engine.clone()).merge(ops::router(ops));
        let admin_task = tokio::spawn(async move { axum::serve(admin, router).await });
        let mut pg_task = None;
        let mut pg_addr = None;
        if cfg.postgres.enabled {
            let pg = tokio::net::TcpListener::bind(cfg.postgres.listen)
                .await
                .with_context(|| format!("postgres.bind: cannot listen on {}", cfg.postgres.listen))?;
            pg_addr = Some(pg.local_addr()?);
            pg_task = Some(tokio::spawn(tally_queries::serve_postgres_on(engine.clone(), pg)));
        }

        // Counters are a projection of events: fold the usage in the log back in, so a
        // restart resets no budget and no window.
        let mut pos = Position::START;
        let mut folded = 0u64;
        while !state.policy.policy().is_empty() {
            let records = log.read(pos, 10_000)?;
            let Some(last) = records.last() else { break };
            pos = last.next;
            for r in &records {
                if let Ok(tally_events::Event::Usage(u)) = tally_events::decode(&r.payload) {
                    state.policy.rebuild(&u);
                    folded += 1;
                }
            }
        }
        if folded > 0 {
            tracing::info!(usage_events = folded, "policy counters rebuilt from the event log");
        }
        let sweeper = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    state.policy.sweep(tally_events::Timestamp::now());
                }
            })
        };
        println!("tally proxy listening on http://{addr}");
        println!("tally admin API on http://{admin_addr} (POST /v1/sql, GET /v1/why/<id>, GET /v1/usage)");
        if let Some(pg) = pg_addr {
            println!("tally postgres wire on {pg} (psql \"host={} port={} user=admin dbname=tally\")", pg.ip(), pg.port());
        }
        println!("  event log: {}", log_dir.display());
        println!("  tables:    {tables_root}");
        if args.dev {
            println!("  dev mode: any key `dev-<tenant>-<anything>` works, e.g.");
            println!("    curl http://{addr}/v1/chat/completions -H 'authorization: Bearer dev-acme-1' \\");
            println!("      -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
            println!("  admin token (dev): {DEV_ADMIN_TOKEN}");
        }
        println!("  health: http://{admin_addr}/healthz, http://{admin_addr}/readyz; metrics: http://{admin_addr}/metrics (admin token)");
        let drain = Duration::from_secs(args.drain_seconds);
        let shutdown_at = Arc::new(OnceLock::new());
        let signal = {
            let (listening, at) = (proxy_listening.clone(), shutdown_at.clone());
            async move {
                shutdown_signal().await;
                // Readiness fails from here on, so load balancers stop sending traffic.
                listening.store(false, Ordering::Relaxed);
                let _ = at.set(Instant::now());
            }
        };
        proxy_listening.store(true, Ordering::Relaxed);
        tally_enforcer::server::serve(listener, state.clone(), signal, drain).await?;
        // One drain budget from the signal on: connections above, forwarding tasks here
        // (a stream whose client left may still be read to the end for its usage).
        let deadline = shutdown_at.get().copied().unwrap_or_else(Instant::now) + drain;
        while state.stats.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = state.stats.in_flight.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(in_flight = left, ?drain, "drain deadline passed with requests still in flight");
        }
        sweeper.abort();
        drop(state);
        match tokio::time::timeout(Duration::from_secs(10), sink_task.finish()).await {
            Ok(Ok(())) => tracing::info!("event log flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the event log failed"),
            Err(_) => tracing::warn!("gave up waiting for the event sink"),
        }
        // The ledger commits what it has read, then stops.
        let _ = ledger_stop.send(());
        match tokio::time::timeout(Duration::from_secs(30), ledger_task).await {
            Ok(Ok(Ok(()))) => tracing::info!("ledger committed and stopped"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "ledger stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "ledger task failed"),
            Err(_) => tracing::warn!("gave up waiting for the ledger"),
        }
        admin_task.abort();
        if let Some(t) = pg_task {
            t.abort();
        }
        if let Some(s) = simulator {
            s.abort();
        }
        let stats = log.stats();
        println!("tally stopped; event log durable up to {}", stats.durable_end);
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down: draining in-flight requests");
}
