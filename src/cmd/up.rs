//! `tally up` / `tally enforcer`: the embedded stack. Opens the local event log, starts
//! the event sink and the proxy (and, with --dev, the simulator as every upstream), and
//! shuts down gracefully on Ctrl-C / SIGTERM: stop accepting, drain in-flight requests,
//! flush the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tally_enforcer::{EventSink, ProxyState};
use tally_events::log::{EventLog, SegmentLog};

use crate::GlobalArgs;

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
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
}

pub(crate) fn run(global: &GlobalArgs, args: UpArgs, _embedded: bool) -> Result<()> {
    let mut cfg = super::load_config(global)?;
    if let Some(l) = args.listen {
        cfg.proxy.listen = l;
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
        let (sink, sink_task) = EventSink::start(log.clone() as Arc<dyn EventLog>, &cfg.proxy.event_queue);
        let state = Arc::new(
            ProxyState::new(cfg.proxy.clone(), cfg.instance_name(), sink)
                .map_err(|e| anyhow::anyhow!("config.invalid: {e}"))?,
        );
        let listener = tally_enforcer::server::bind(cfg.proxy.listen).await?;
        let addr = listener.local_addr()?;
        println!("tally proxy listening on http://{addr}");
        println!("  event log: {}", log_dir.display());
        if args.dev {
            println!("  dev mode: any key `dev-<tenant>-<anything>` works, e.g.");
            println!("    curl http://{addr}/v1/chat/completions -H 'authorization: Bearer dev-acme-1' \\");
            println!("      -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
        }
        tally_enforcer::server::serve(listener, state.clone(), shutdown_signal(), Duration::from_secs(args.drain_seconds)).await?;
        // Let forwarding tasks (streams being drained) finish, then flush every event.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain_seconds);
        while state.stats.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(state);
        match tokio::time::timeout(Duration::from_secs(10), sink_task.finish()).await {
            Ok(Ok(())) => tracing::info!("event log flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the event log failed"),
            Err(_) => tracing::warn!("gave up waiting for the event sink"),
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
