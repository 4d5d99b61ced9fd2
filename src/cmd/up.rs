//! `tally up`: the embedded stack. Opens the local event log, starts the event sink, the
//! ledger, the query servers, the operations endpoints (`ops`: health, readiness,
//! metrics) and the proxy (and, with --dev, the simulator as every upstream), and shuts
//! down gracefully on Ctrl-C / SIGTERM: stop accepting, drain in-flight requests and
//! streams within `--drain-seconds`, flush the log (every receipt durable), let the
//! ledger commit what is durable, exit 0. Wiring only: no behaviour of its own.
//!
//! [`Stack`] is the running stack as a value, so `tally demo` starts and stops the same
//! thing `tally up --dev` does.

pub(crate) mod ops;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tally_enforcer::{EnforcerMetrics, EventSink, ProxyState, SinkTask};
use tally_events::arrow::Table;
use tally_events::log::{EventLog, Position, SegmentLog};
use tally_queries::QueryEngine;
use tokio::task::JoinHandle;

use crate::GlobalArgs;
use crate::config::TallyConfig;

/// The admin token accepted in `--dev` mode.
pub(crate) const DEV_ADMIN_TOKEN: &str = "dev-admin";

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

/// How to start the stack besides what the configuration says.
#[derive(Debug, Clone, Default)]
pub(crate) struct StackOptions {
    /// Development mode: the simulator runs in-process on this address as every
    /// upstream, `dev-<tenant>-<anything>` keys are accepted and so is the admin token
    /// `dev-admin`.
    pub(crate) dev_simulator: Option<SocketAddr>,
    /// A `tenant` label on the token, cost and decision metrics.
    pub(crate) metrics_tenant_label: bool,
    /// Where the ledger, the admin server and the Postgres server run (the background
    /// runtime, see `background` in the configuration). None: the current runtime.
    pub(crate) background: Option<tokio::runtime::Handle>,
}

/// The embedded stack, started and serving everything but the proxy, which serves from
/// [`Stack::serve_until`] on.
pub(crate) struct Stack {
    pub(crate) proxy_addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) pg_addr: Option<SocketAddr>,
    /// The in-process simulator (dev mode).
    pub(crate) simulator_addr: Option<SocketAddr>,
    pub(crate) log_dir: PathBuf,
    pub(crate) tables_root: String,
    pub(crate) log: Arc<SegmentLog>,
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) ledger: tally_ledger::LedgerHandle,
    /// The proxy's state. Clones must be dropped before [`Stack::serve_until`] returns
    /// from draining, or flushing the event log waits for them.
    pub(crate) state: Arc<ProxyState>,
    listener: tokio::net::TcpListener,
    proxy_listening: Arc<AtomicBool>,
    sink_task: SinkTask,
    ledger_stop: tokio::sync::oneshot::Sender<()>,
    ledger_task: JoinHandle<Result<(), tally_ledger::LedgerError>>,
    admin_task: JoinHandle<std::io::Result<()>>,
    pg_task: Option<JoinHandle<std::io::Result<()>>>,
    simulator_task: Option<JoinHandle<std::io::Result<()>>>,
    sweeper: JoinHandle<()>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("proxy_addr", &self.proxy_addr)
            .field("admin_addr", &self.admin_addr)
            .field("pg_addr", &self.pg_addr)
            .field("simulator_addr", &self.simulator_addr)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Start the simulator (dev mode), the event log and sink, the ledger, the query
    /// engine and servers, and bind the proxy. `cfg` gets the dev-mode changes.
    pub(crate) async fn start(cfg: &mut TallyConfig, opts: &StackOptions) -> Result<Stack> {
        let bg = opts
            .background
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let mut simulator_task = None;
        let mut simulator_addr = None;
        if let Some(listen) = opts.dev_simulator {
            cfg.queries
                .admin_tokens
                .push(tally_queries::hash_token(DEV_ADMIN_TOKEN));
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("simulator.bind: cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let sim = tally_simulator::Simulator::new(cfg.simulator.clone());
            simulator_task = Some(tokio::spawn(sim.serve(listener)));
            simulator_addr = Some(addr);
            cfg.proxy.point_all_upstreams_at(&format!("http://{addr}"));
            cfg.proxy.dev_keys = true;
            tracing::info!(%addr, "provider simulator started (dev mode)");
        }
        let log_dir = cfg.log_dir();
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("log.io: cannot create {}", log_dir.display()))?;
        let log = Arc::new(SegmentLog::open(&log_dir, &cfg.log)?);
        let metrics = Arc::new(EnforcerMetrics::new(opts.metrics_tenant_label));
        let (sink, sink_task) = EventSink::start_with_metrics(
            log.clone() as Arc<dyn EventLog>,
            &cfg.proxy.event_queue,
            metrics,
        );
        // Ledger: tails the log into the Delta tables; queries see tables + uncommitted tail.
        let tables_root = cfg.tables_root();
        let ledger = {
            let (ledger_cfg, root, log) = (cfg.ledger.clone(), tables_root.clone(), log.clone());
            bg.spawn(async move {
                tally_ledger::Ledger::open(ledger_cfg, &root, log as Arc<dyn EventLog>).await
            })
            .await
            .context("the ledger's start-up task failed")?
            .context("opening the ledger")?
        };
        let handle = ledger.handle();
        let (ledger_stop, ledger_stopped) = tokio::sync::oneshot::channel::<()>();
        let ledger_ended = Arc::new(AtomicBool::new(false));
        let ledger_task = {
            let ended = ledger_ended.clone();
            let run = ledger.run(async move {
                let _ = ledger_stopped.await;
            });
            bg.spawn(async move {
                let result = run.await;
                ended.store(true, Ordering::Relaxed);
                result
            })
        };
        let positions = {
            let h = handle.clone();
            move |t: Table| {
                h.committed_positions()
                    .get(&t)
                    .copied()
                    .unwrap_or(Position::START)
            }
        };
        let tail =
            tally_queries::LogTail::new(log.clone() as Arc<dyn EventLog>, Arc::new(positions))
                .with_ledger_app_id(tally_ledger::app_id(&cfg.ledger.source_name));
        let engine = Arc::new(
            QueryEngine::new(cfg.queries.clone(), &tables_root, Some(Arc::new(tail)))
                .await
                .context("starting the query engine")?,
        );
        let admin =
            super::admin_listener::AdminListener::bind(cfg.admin.listen, cfg.admin.tls.as_ref())
                .await?;
        let admin_addr = admin.addr();
        let state = Arc::new(
            ProxyState::new(cfg.proxy.clone(), cfg.instance_name(), sink)
                .map_err(|e| anyhow::anyhow!("config.invalid: {e}"))?,
        );
        let listener = tally_enforcer::server::bind(cfg.proxy.listen).await?;
        let proxy_addr = listener.local_addr()?;
        let proxy_listening = Arc::new(AtomicBool::new(false));
        let ops = {
            let weak = Arc::downgrade(&state);
            let probes = ops::Probes {
                proxy_listening: proxy_listening.clone(),
                proxy_addr: proxy_addr.to_string(),
                sink: state.sink.health(),
                log_dir: log_dir.clone(),
                ledger: Some((handle.clone(), ledger_ended.clone())),
                engine: Some(engine.clone()),
            };
            Arc::new(ops::Ops::new(
                probes,
                tally_queries::Authenticator::new(&cfg.queries),
                &state.sink,
                ops::LogSource::Local(log.clone()),
                move || {
                    weak.upgrade()
                        .map_or(0.0, |s| s.stats.in_flight.load(Ordering::Relaxed) as f64)
                },
            ))
        };
        let router = tally_queries::router(engine.clone()).merge(ops::router(ops));
        let admin_task = bg.spawn(async move { axum::serve(admin, router).await });
        let (pg_addr, pg_task) = match start_postgres(cfg, &engine, &bg).await? {
            Some((addr, task)) => (Some(addr), Some(task)),
            None => (None, None),
        };

        rebuild_counters(&state.policy, &engine).await?;
        let sweeper = policy_upkeep(state.clone());
        Ok(Stack {
            proxy_addr,
            admin_addr,
            pg_addr,
            simulator_addr,
            log_dir,
            tables_root,
            log,
            engine,
            ledger: handle,
            state,
            listener,
            proxy_listening,
            sink_task,
            ledger_stop,
            ledger_task,
            admin_task,
            pg_task,
            simulator_task,
            sweeper,
        })
    }

    /// Serve the proxy until `signal` resolves, then shut down gracefully: drain
    /// in-flight requests and streams within `drain`, flush the event log, let the
    /// ledger commit what is durable, stop the servers. Returns the log's durable end.
    pub(crate) async fn serve_until(
        self,
        signal: impl Future<Output = ()>,
        drain: Duration,
    ) -> Result<Position> {
        let Stack {
            log,
            state,
            listener,
            proxy_listening,
            sink_task,
            ledger_stop,
            ledger_task,
            admin_task,
            pg_task,
            simulator_task,
            sweeper,
            ..
        } = self;
        let shutdown_at = Arc::new(OnceLock::new());
        let signal = {
            let (listening, at) = (proxy_listening.clone(), shutdown_at.clone());
            async move {
                signal.await;
                // Readiness fails from here on, so load balancers stop sending traffic.
                listening.store(false, Ordering::Relaxed);
                let _ = at.set(Instant::now());
            }
        };
        proxy_listening.store(true, Ordering::Relaxed);
        tally_enforcer::server::serve(listener, state.clone(), signal, drain).await?;
        // One drain budget from the signal on: connections above, forwarding tasks here
        // (a stream whose client left may still be read to the end for its usage).
        wait_in_flight(&state, shutdown_at.get().copied(), drain).await;
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
        if let Some(s) = simulator_task {
            s.abort();
        }
        Ok(log.stats().durable_end)
    }
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
    let background_cfg = cfg.background.clone();
    super::block_on_with_background(&background_cfg, |background| async move {
        let opts = StackOptions {
            dev_simulator: args.dev.then_some(args.simulator_listen),
            metrics_tenant_label: args.metrics_tenant_label,
            background: Some(background),
        };
        let stack = Stack::start(&mut cfg, &opts).await?;
        let (addr, admin_addr) = (stack.proxy_addr, stack.admin_addr);
        let admin_scheme = if cfg.admin.tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "tally proxy listening on {}://{addr}",
            if cfg.proxy.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        println!(
            "tally admin API on {admin_scheme}://{admin_addr} (POST /v1/sql, GET /v1/why/<id>, GET /v1/usage)"
        );
        if let Some(pg) = stack.pg_addr {
            println!(
                "tally postgres wire on {pg} (psql \"host={} port={} user=admin dbname=tally\")",
                pg.ip(),
                pg.port()
            );
        }
        println!("  event log: {}", stack.log_dir.display());
        println!("  tables:    {}", stack.tables_root);
        if args.dev {
            println!("  dev mode: any key `dev-<tenant>-<anything>` works, e.g.");
            println!(
                "    curl http://{addr}/v1/chat/completions -H 'authorization: Bearer dev-acme-1' \\"
            );
            println!(
                "      -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
            );
            println!("  admin token (dev): {DEV_ADMIN_TOKEN}");
        }
        println!(
            "  health: {admin_scheme}://{admin_addr}/healthz, {admin_scheme}://{admin_addr}/readyz; metrics: {admin_scheme}://{admin_addr}/metrics (admin token)"
        );
        let durable_end = stack
            .serve_until(shutdown_signal(), Duration::from_secs(args.drain_seconds))
            .await?;
        println!("tally stopped; event log durable up to {durable_end}");
        Ok(())
    })
}

/// After the proxy stopped accepting: wait for forwarding tasks (a stream whose client
/// left may still be read to the end for its usage) until `drain` after the signal.
pub(crate) async fn wait_in_flight(
    state: &ProxyState,
    signalled: Option<Instant>,
    drain: Duration,
) {
    let deadline = signalled.unwrap_or_else(Instant::now) + drain;
    while state.stats.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.stats.in_flight.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            ?drain,
            "drain deadline passed with requests still in flight"
        );
    }
}

/// The policy's background work, in one task: drop idle counters every minute, and
/// reload the policy file when it changes (checked every `proxy.policy_reload_secs`) or
/// on SIGHUP.
pub(crate) fn policy_upkeep(state: Arc<ProxyState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sweep = {
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    state.policy.sweep(tally_events::Timestamp::now());
                }
            }
        };
        let Some(path) = state.config.policy_file.clone() else {
            return sweep.await;
        };
        let trigger = Arc::new(tokio::sync::Notify::new());
        let hangup = {
            let trigger = trigger.clone();
            async move {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    Ok(mut hup) => {
                        while hup.recv().await.is_some() {
                            trigger.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no SIGHUP handler; the policy file is still checked periodically")
                    }
                }
                std::future::pending::<()>().await;
            }
        };
        let every = Duration::from_secs(state.config.policy_reload_secs);
        let reload =
            tally_enforcer::reload::PolicyReloader::new(path).run(state.clone(), every, trigger);
        tokio::join!(sweep, hangup, reload);
    })
}

/// Counters are a projection of events: fold back in the usage that can still count
/// (since [`tally_enforcer::policy::PolicyEngine::history_start`]), read from the
/// committed tables plus the log tail, so a restart resets no budget and no window, even
/// after the ledger has reclaimed the log segments it committed.
pub(crate) async fn rebuild_counters(
    policy: &tally_enforcer::policy::PolicyEngine,
    engine: &QueryEngine,
) -> Result<()> {
    let Some(since) = policy.history_start(tally_events::Timestamp::now()) else {
        return Ok(());
    };
    let started = Instant::now();
    let folded = tally_queries::reports::history::usage_since(engine, since, |u| {
        policy.rebuild(u)
    })
    .await
    .with_context(|| {
        format!(
            "policy.rebuild_failed: cannot read the usage since {since} to rebuild policy counters; \
             the proxy does not start with budgets it cannot account for (check the tables, or \
             raise queries.timeout_ms if the history is large)"
        )
    })?;
    if folded > 0 {
        tracing::info!(
            usage_events = folded,
            since = %since,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy counters rebuilt from the tables and the event log"
        );
    }
    Ok(())
}

/// Bind the Postgres wire listener (when `postgres.enabled`) and serve `engine` on it,
/// in a task on `on`.
pub(crate) async fn start_postgres(
    cfg: &TallyConfig,
    engine: &Arc<QueryEngine>,
    on: &tokio::runtime::Handle,
) -> Result<Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>> {
    if !cfg.postgres.enabled {
        return Ok(None);
    }
    let pg = tokio::net::TcpListener::bind(cfg.postgres.listen)
        .await
        .with_context(|| format!("postgres.bind: cannot listen on {}", cfg.postgres.listen))?;
    let addr = pg.local_addr()?;
    let task = on.spawn(tally_queries::serve_postgres_on(engine.clone(), pg));
    Ok(Some((addr, task)))
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
