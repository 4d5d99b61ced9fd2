//! Operations endpoints of `tally up` and `tally enforcer` on the admin listener:
//! `/healthz` (the process
//! answers), `/readyz` (named checks as JSON, 503 when one fails) — both without a token,
//! for probes — and `/metrics` (Prometheus/OpenMetrics text, admin token required). Owns
//! the one metrics registry: the enforcer's metrics plus the event log, ledger and spool
//! figures read at scrape time. Must not change any state it reports on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tally_enforcer::metrics::{FnKind, FnMetric};
use tally_enforcer::{EventSink, SinkHealth};
use tally_events::log::{SegmentLog, SpoolingLog};
use tally_ledger::{LedgerHandle, LedgerStatus};
use tally_queries::{Authenticator, Principal, QueryEngine, QueryError};

/// Longest time one readiness check or the ledger status of a scrape may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The OpenMetrics text content type Prometheus negotiates.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the readiness checks look at.
pub(crate) struct Probes {
    /// Set while the proxy accepts connections (cleared when shutdown begins).
    pub(crate) proxy_listening: Arc<AtomicBool>,
    pub(crate) proxy_addr: String,
    pub(crate) sink: SinkHealth,
    /// The local directory the event log (or the Kafka log's outage spool) writes to.
    pub(crate) log_dir: PathBuf,
    /// The in-process ledger and whether its task has ended (`tally up`; `tally
    /// enforcer` has none).
    pub(crate) ledger: Option<(LedgerHandle, Arc<AtomicBool>)>,
    /// The query engine (`tally up`; `tally enforcer` has none).
    pub(crate) engine: Option<Arc<QueryEngine>>,
}

/// The event log whose figures `/metrics` reports.
pub(crate) enum LogSource {
    /// The local segment log.
    Local(Arc<SegmentLog>),
    /// Kafka with its local outage spool.
    Kafka(Arc<SpoolingLog>),
}

/// The state of the operations routes.
pub(crate) struct Ops {
    registry: Registry,
    probes: Probes,
    auth: Authenticator,
    /// The ledger status of the latest scrape (read by the ledger metrics).
    ledger_status: Arc<Mutex<Option<LedgerStatus>>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops").finish_non_exhaustive()
    }
}

impl Ops {
    /// The registry with every metric of the embedded stack.
    pub(crate) fn new(
        probes: Probes,
        auth: Authenticator,
        sink: &EventSink,
        log: LogSource,
        in_flight: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        let mut registry = Registry::with_prefix("tally");
        sink.register_metrics(&mut registry);
        registry.register(
            "requests_in_flight",
            "Requests being forwarded or streamed right now",
            FnMetric::single(FnKind::Gauge, in_flight),
        );
        let ledger_status = Arc::new(Mutex::new(None));
        match log {
            LogSource::Local(log) => {
                register_log(&mut registry, log);
                register_spool(&mut registry, None);
            }
            LogSource::Kafka(log) => register_spool(&mut registry, Some(log)),
        }
        if probes.ledger.is_some() {
            register_ledger(&mut registry, &ledger_status);
        }
        Self {
            registry,
            probes,
            auth,
            ledger_status,
        }
    }

    /// Render the registry (refreshing the ledger figures first).
    pub(crate) async fn render(&self) -> String {
        if let Some((ledger, _)) = &self.probes.ledger {
            match tokio::time::timeout(CHECK_TIMEOUT, ledger.status()).await {
                Ok(Ok(status)) => {
                    if let Ok(mut slot) = self.ledger_status.lock() {
                        *slot = Some(status);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(code = e.code(), error = %e, "ledger status for metrics")
                }
                Err(_) => tracing::warn!("ledger status for metrics timed out"),
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// Every readiness check, in a fixed order.
    pub(crate) async fn readiness(&self) -> Readiness {
        let p = &self.probes;
        let mut checks = Vec::new();
        checks.push(if p.proxy_listening.load(Ordering::Relaxed) {
            Check::ok("proxy", format!("listening on {}", p.proxy_addr))
        } else {
            Check::failed(
                "proxy",
                "not accepting connections (starting or shutting down)",
            )
        });
        checks.push(match (p.sink.check(), log_dir_writable(&p.log_dir)) {
            (Ok(()), Ok(())) => {
                Check::ok("event_log", format!("writable: {}", p.log_dir.display()))
            }
            (Err(e), _) | (_, Err(e)) => Check::failed("event_log", e),
        });
        if let Some((ledger, stopped)) = &p.ledger {
            checks.push(if stopped.load(Ordering::Relaxed) {
                Check::failed("ledger", "the ledger is not running")
            } else {
                match ledger.last_error() {
                    None => Check::ok("ledger", "running"),
                    Some(e) => Check::failed("ledger", format!("latest batch failed: {e}")),
                }
            });
        }
        if let Some(engine) = &p.engine {
            let probe = engine.collect("SELECT count(*) FROM usage WHERE 1 = 0", &Principal::Admin);
            checks.push(match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
                Ok(Ok(_)) => Check::ok("tables", engine.tables_root().to_string()),
                Ok(Err(e)) => Check::failed("tables", format!("{}: {e}", e.code())),
                Err(_) => Check::failed("tables", format!("no answer within {CHECK_TIMEOUT:?}")),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

fn log_dir_writable(dir: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && !m.permissions().readonly() => Ok(()),
        Ok(_) => Err(format!("{} is not a writable directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// The `/readyz` body.
#[derive(Serialize, Debug)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) checks: Vec<Check>,
}

/// One named readiness check.
#[derive(Serialize, Debug)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    pub(crate) fn failed(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// `/healthz`, `/readyz` (no token) and `/metrics` (admin token).
pub(crate) fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let r = ops.readiness().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Response {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match ops.auth.authorize(value) {
        Ok(Principal::Admin) => {}
        Ok(Principal::Tenant(_)) => {
            return tally_queries::http::error_response(&QueryError::Forbidden(
                "metrics cover every tenant; use an admin token".to_owned(),
            ));
        }
        Err(e) => return tally_queries::http::error_response(&e),
    }
    let body = ops.render().await;
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    resp
}

fn register_log(registry: &mut Registry, log: Arc<SegmentLog>) {
    let l = log.clone();
    registry.register(
        "log_appended_records",
        "Records appended to the event log since start",
        FnMetric::single(FnKind::Counter, move || l.stats().appended as f64),
    );
    let l = log.clone();
    registry.register(
        "log_durable_position",
        "Position after the last durable record of the event log, as (segment << 40) | offset",
        FnMetric::single(FnKind::Gauge, move || encoded(l.stats().durable_end)),
    );
    let l = log.clone();
    registry.register(
        "log_segments",
        "Segment files of the event log",
        FnMetric::single(FnKind::Gauge, move || l.stats().segments as f64),
    );
    registry.register(
        "log_bytes",
        "Bytes of the event log's segment files",
        FnMetric::single(FnKind::Gauge, move || log.stats().bytes as f64),
    );
}

fn encoded(p: tally_events::log::Position) -> f64 {
    tally_ledger::txn_version(p).map_or(-1.0, |v| v as f64)
}

type StatusSlot = Arc<Mutex<Option<LedgerStatus>>>;

fn per_table(slot: &StatusSlot, value: fn(&tally_ledger::TableStatus) -> Option<f64>) -> FnMetric {
    let slot = slot.clone();
    FnMetric::labelled(FnKind::Gauge, move || {
        let Ok(guard) = slot.lock() else {
            return Vec::new();
        };
        guard
            .iter()
            .flat_map(|s| s.tables.iter())
            .filter_map(|t| Some((vec![("table", t.table.clone())], value(t)?)))
            .collect()
    })
}

fn counter(slot: &StatusSlot, value: fn(&tally_ledger::LedgerCounters) -> u64) -> FnMetric {
    let slot = slot.clone();
    FnMetric::single(FnKind::Counter, move || {
        slot.lock()
            .ok()
            .and_then(|g| g.as_ref().and_then(|s| s.counters))
            .map_or(0.0, |c| value(&c) as f64)
    })
}

fn register_ledger(registry: &mut Registry, slot: &StatusSlot) {
    registry.register(
        "ledger_committed_position",
        "Log position up to which the table's events are committed, as (segment << 40) | offset",
        per_table(slot, |t| t.committed_position.map(encoded)),
    );
    registry.register(
        "ledger_lag_events",
        "Events of the table in the log not committed to it yet",
        per_table(slot, |t| t.lag_events.map(|n| n as f64)),
    );
    registry.register(
        "ledger_lag_seconds",
        "Age of the table's oldest event not committed yet (0 when caught up)",
        per_table(slot, |t| t.lag_seconds),
    );
    registry.register(
        "ledger_last_commit_age_seconds",
        "Seconds since the table's last Delta commit",
        per_table(slot, |t| {
            let at = t.last_commit_at?;
            let now = tally_events::Timestamp::now();
            Some((now.as_micros().saturating_sub(at.as_micros())).max(0) as f64 / 1e6)
        }),
    );
    registry.register(
        "ledger_records_read",
        "Log records the ledger read since start",
        counter(slot, |c| c.records_read),
    );
    registry.register(
        "ledger_events_committed",
        "Events the ledger wrote to the tables since start",
        counter(slot, |c| c.events_committed),
    );
    registry.register(
        "ledger_duplicates_dropped",
        "Events dropped because their event id was already in the tables",
        counter(slot, |c| c.duplicates_dropped),
    );
    let s = slot.clone();
    registry.register(
        "ledger_failing",
        "1 while the ledger's latest batch failed (see tally ledger status), else 0",
        FnMetric::single(FnKind::Gauge, move || {
            s.lock()
                .ok()
                .and_then(|g| g.as_ref().map(|s| s.last_error.is_some()))
                .map_or(0.0, |failing| if failing { 1.0 } else { 0.0 })
        }),
    );
}

fn register_spool(registry: &mut Registry, log: Option<Arc<SpoolingLog>>) {
    // The local segment log never spools: these stay 0 there.
    let stat = |f: fn(&tally_events::log::SpoolStats) -> u64| {
        let log = log.clone();
        move || log.as_ref().map_or(0.0, |l| f(&l.stats()) as f64)
    };
    registry.register(
        "spool_records",
        "Records waiting in the local outage spool for Kafka (0 with the local log)",
        FnMetric::single(FnKind::Gauge, stat(|s| s.spool_records)),
    );
    registry.register(
        "spool_bytes",
        "Bytes waiting in the local outage spool for Kafka (0 with the local log)",
        FnMetric::single(FnKind::Gauge, stat(|s| s.spool_bytes)),
    );
    if log.is_some() {
        registry.register(
            "spooling",
            "1 while appends go to the outage spool because Kafka is unavailable or slow",
            FnMetric::single(FnKind::Gauge, stat(|s| u64::from(s.spooling))),
        );
        registry.register(
            "kafka_acked_records",
            "Records Kafka acknowledged directly (not through the spool) since start",
            FnMetric::single(FnKind::Counter, stat(|s| s.kafka_acked)),
        );
        registry.register(
            "spool_drained_records",
            "Spooled records drained into Kafka since start",
            FnMetric::single(FnKind::Counter, stat(|s| s.drained)),
        );
    }
}
