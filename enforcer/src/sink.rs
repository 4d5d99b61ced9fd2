//! The path from request handling to the event log: a bounded in-memory queue drained
//! by one task that encodes events and appends them to the log. Request handling never
//! waits on disk I/O here; when the queue is full it either waits for room (`block`) or
//! refuses (`fail_closed`), and counts it. Must not decide what events to write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tally_events::log::{EventLog, Receipt};
use tally_events::{Event, codec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{EventQueueConfig, WhenFull};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{EnforcerMetrics, FnKind, FnMetric};

/// Counters of the event path, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events handed to the log.
    pub appended: AtomicU64,
    /// Times an emit found the queue full.
    pub queue_full: AtomicU64,
    /// Appends the log refused.
    pub append_errors: AtomicU64,
    /// Events dropped because the sink was already shut down.
    pub dropped: AtomicU64,
    /// The latest append failed (cleared by the next one that succeeds).
    pub failing: AtomicBool,
}

/// Handle for emitting events; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    when_full: WhenFull,
    stats: Arc<SinkStats>,
    metrics: Arc<EnforcerMetrics>,
}

/// The draining task; [`SinkTask::finish`] waits until every queued event is durable.
#[derive(Debug)]
pub struct SinkTask {
    handle: JoinHandle<Option<Receipt>>,
}

impl EventSink {
    /// Start the draining task over `log`.
    pub fn start(log: Arc<dyn EventLog>, config: &EventQueueConfig) -> (EventSink, SinkTask) {
        Self::start_with_metrics(log, config, Arc::new(EnforcerMetrics::default()))
    }

    /// Start the draining task over `log`, counting what reaches the log in `metrics`.
    pub fn start_with_metrics(
        log: Arc<dyn EventLog>,
        config: &EventQueueConfig,
        metrics: Arc<EnforcerMetrics>,
    ) -> (EventSink, SinkTask) {
        let (tx, mut rx) = mpsc::channel::<Event>(config.capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let task_stats = stats.clone();
        let task_metrics = metrics.clone();
        let handle = tokio::spawn(async move {
            let mut last: Option<Receipt> = None;
            let mut buf = Vec::with_capacity(1024);
            while let Some(event) = rx.recv().await {
                buf.clear();
                codec::encode_into(&event, &mut buf);
                match log.append(&event.header().tenant, &buf) {
                    Ok(r) => {
                        task_stats.appended.fetch_add(1, Ordering::Relaxed);
                        task_stats.failing.store(false, Ordering::Relaxed);
                        task_metrics.record_event(&event);
                        last = Some(r);
                    }
                    Err(e) => {
                        task_stats.append_errors.fetch_add(1, Ordering::Relaxed);
                        task_stats.failing.store(true, Ordering::Relaxed);
                        tracing::error!(code = e.code(), error = %e, event_id = %event.header().event_id,
                            request_id = %event.header().request_id, "event log refused an event");
                    }
                }
            }
            last
        });
        (
            EventSink {
                tx,
                when_full: config.when_full,
                stats,
                metrics,
            },
            SinkTask { handle },
        )
    }

    /// Queue an event. With `block` this waits for room; with `fail_closed` a full queue
    /// is an error (the caller answers 503).
    pub async fn emit(&self, event: Event) -> Result<(), ProxyError> {
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                match self.when_full {
                    WhenFull::Block => self.tx.send(event).await.map_err(|_| closed()),
                    WhenFull::FailClosed => Err(ProxyError::new(
                        ErrorKind::EventLog,
                        "the event queue is full; retry shortly (proxy.event_queue.when_full = fail_closed)",
                    )),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    /// Queue an event that must not be refused (it records work already done): waits
    /// for room whatever `when_full` says.
    pub async fn emit_always(&self, event: Event) {
        if let Err(e) = self.tx.send(event).await {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event_id = %e.0.header().event_id, "event sink closed; event not written");
        }
    }

    /// Whether the queue currently has room (for fail-closed admission).
    pub fn has_room(&self) -> bool {
        self.when_full == WhenFull::Block || self.tx.capacity() > 0
    }

    /// Counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// The metrics this sink and the proxy using it record into.
    pub fn metrics(&self) -> &Arc<EnforcerMetrics> {
        &self.metrics
    }

    /// A probe of the sink's health that holds no sender (so it never keeps the sink
    /// from shutting down): see [`SinkHealth::check`].
    pub fn health(&self) -> SinkHealth {
        SinkHealth {
            tx: self.tx.downgrade(),
            stats: self.stats.clone(),
        }
    }

    /// Register the enforcer's metrics and the sink's own (queue depth, refusals) under
    /// `registry`. Holds no sender: scraping never keeps the sink from shutting down.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
        let weak = self.tx.downgrade();
        registry.register(
            "event_queue_depth",
            "Events waiting in the queue between request handling and the event log",
            FnMetric::single(FnKind::Gauge, move || {
                weak.upgrade()
                    .map_or(0.0, |tx| (tx.max_capacity() - tx.capacity()) as f64)
            }),
        );
        let stat = |f: fn(&SinkStats) -> &AtomicU64| {
            let stats = self.stats.clone();
            FnMetric::single(FnKind::Counter, move || {
                f(&stats).load(Ordering::Relaxed) as f64
            })
        };
        registry.register(
            "event_queue_full",
            "Times an event found the queue full (then waited, or was refused with fail_closed)",
            stat(|s| &s.queue_full),
        );
        registry.register(
            "event_append_failures",
            "Events the event log refused to append",
            stat(|s| &s.append_errors),
        );
        registry.register(
            "events_dropped",
            "Events dropped because the event sink was already shut down",
            stat(|s| &s.dropped),
        );
    }
}

/// See [`EventSink::health`].
#[derive(Clone, Debug)]
pub struct SinkHealth {
    tx: mpsc::WeakSender<Event>,
    stats: Arc<SinkStats>,
}

impl SinkHealth {
    /// Ok while the sink takes events and the log accepted the latest append.
    pub fn check(&self) -> Result<(), String> {
        match self.tx.upgrade() {
            Some(tx) if !tx.is_closed() => {}
            _ => return Err("the event sink is shut down".to_owned()),
        }
        if self.stats.failing.load(Ordering::Relaxed) {
            return Err(format!(
                "the event log refused the latest append ({} failed appends since start)",
                self.stats.append_errors.load(Ordering::Relaxed)
            ));
        }
        Ok(())
    }
}

fn closed() -> ProxyError {
    ProxyError::new(ErrorKind::EventLog, "the event sink is shut down")
}

impl SinkTask {
    /// Wait until every event queued before all senders were dropped is durable.
    pub async fn finish(self) -> Result<(), String> {
        match self.handle.await {
            Ok(Some(receipt)) => receipt
                .durable()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(format!("event sink task failed: {e}")),
        }
    }
}
