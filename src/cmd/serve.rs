//! `tally serve`: the query servers on their own (split mode) — the admin HTTP API
//! (`POST /v1/sql`, `/v1/why`, `/v1/usage`, probes) and the Postgres wire protocol over
//! the tables at `ledger.tables_uri`, plus the local log's uncommitted tail when the data
//! directory has one. Read-only; wiring only: the engine is `tally_queries`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use tally_queries::{Principal, QueryEngine};

use crate::GlobalArgs;

/// Longest time the readiness check may take.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// Admin/SQL HTTP listen address (overrides admin.listen).
    #[arg(long, env = "TALLY_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Postgres wire protocol listen address (overrides postgres.listen).
    #[arg(long, env = "TALLY_POSTGRES_LISTEN")]
    postgres_listen: Option<SocketAddr>,
}

/// `/readyz`: the tables can be read (a one-row scan of `usage`).
async fn ready(engine: Arc<QueryEngine>) -> (StatusCode, String) {
    let probe = engine.collect("SELECT 1 FROM usage LIMIT 1", &Principal::Admin);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("tables: {} ({})", e, e.code()),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("tables: no answer within {READY_TIMEOUT:?}"),
        ),
    }
}

pub(crate) fn run(global: &GlobalArgs, args: ServeArgs) -> Result<()> {
    let mut cfg = super::load_config(global)?;
    if let Some(l) = args.admin_listen {
        cfg.admin.listen = l;
    }
    if let Some(l) = args.postgres_listen {
        cfg.postgres.listen = l;
    }
    super::runtime()?.block_on(async move {
        let engine = Arc::new(super::query::local_engine(&cfg).await?);
        let admin =
            super::admin_listener::AdminListener::bind(cfg.admin.listen, cfg.admin.tls.as_ref())
                .await?;
        let admin_addr = admin.addr();
        let admin_scheme = admin.scheme();
        let probe = engine.clone();
        let router = tally_queries::router(engine.clone())
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || ready(probe.clone())));
        println!(
            "tally admin API on {admin_scheme}://{admin_addr} (POST /v1/sql, GET /v1/why/<id>, GET /v1/usage)"
        );
        let pg_task = match super::up::start_postgres(&cfg, &engine, &tokio::runtime::Handle::current()).await? {
            Some((addr, task)) => {
                println!("tally postgres wire on {addr}");
                Some(task)
            }
            None => None,
        };
        println!("  tables: {}", cfg.tables_root());
        axum::serve(admin, router)
            .with_graceful_shutdown(super::up::shutdown_signal())
            .await
            .context("admin listener failed")?;
        if let Some(t) = pg_task {
            t.abort();
        }
        Ok(())
    })
}
