//! The path from request handling to the event log: a bounded in-memory queue drained
//! by one task that encodes events and appends them to the log. Request handling never
//! does disk I/O here; when the queue is full it either waits for room (`block`) or
//! refuses (`fail_closed`), and counts it. With `respond_after: durable` a response's
//! last bytes wait for its event's log receipt. Must not decide what events to write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tally_events::log::{EventLog, Receipt};
use tally_events::{Event, Timestamp, codec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{EventQueueConfig, RespondAfter, WhenFull};
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
    /// When an append last failed, microseconds since the Unix epoch.
    pub failed_at_micros: AtomicI64,
    /// Responses that completed without their event known durable: the log refused it
    /// or did not make it durable within `durable_wait_ms`.
    pub durable_misses: AtomicU64,
}

/// With `when_full: fail_closed`, how long after a refused append new requests are
/// refused too, microseconds.
pub const FAILING_REFUSE_MICROS: i64 = 1_000_000;

/// An event in the queue, with where to send its receipt when the caller waits for it.
#[derive(Debug)]
struct Queued {
    // Boxed: the futures that carry a queued event across an await (a response waiting
    // for room or for durability) stay a pointer wide rather than an event wide.
    event: Box<Event>,
    ack: Option<oneshot::Sender<Receipt>>,
}

/// Handle for emitting events; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Queued>,
    when_full: WhenFull,
    respond_after: RespondAfter,
    durable_wait: Duration,
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
        let (tx, mut rx) = mpsc::channel::<Queued>(config.capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let task_stats = stats.clone();
        let task_metrics = metrics.clone();
        let handle = tokio::spawn(async move {
            let mut last: Option<Receipt> = None;
            let mut buf = Vec::with_capacity(1024);
            while let Some(Queued { event, ack }) = rx.recv().await {
                buf.clear();
                codec::encode_into(&event, &mut buf);
                match log.append(&event.header().tenant, &buf) {
                    Ok(r) => {
                        task_stats.appended.fetch_add(1, Ordering::Relaxed);
                        task_stats.failing.store(false, Ordering::Relaxed);
                        task_metrics.record_event(&event);
                        if let Some(ack) = ack {
                            let _ = ack.send(r.clone());
                        }
                        last = Some(r);
                    }
                    Err(e) => {
                        task_stats.append_errors.fetch_add(1, Ordering::Relaxed);
                        task_stats
                            .failed_at_micros
                            .store(Timestamp::now().as_micros(), Ordering::Relaxed);
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
                respond_after: config.respond_after,
                durable_wait: Duration::from_millis(config.durable_wait_ms),
                stats,
                metrics,
            },
            SinkTask { handle },
        )
    }

    /// Queue an event. With `block` this waits for room; with `fail_closed` a full queue
    /// is an error (the caller answers 503).
    pub fn emit(&self, event: Event) -> impl Future<Output = Result<(), ProxyError>> + Send + '_ {
        self.queue(Box::new(event))
    }

    async fn queue(&self, event: Box<Event>) -> Result<(), ProxyError> {
        match self.tx.try_send(Queued { event, ack: None }) {
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
    pub fn emit_always(&self, event: Event) -> impl Future<Output = ()> + Send + '_ {
        let queued = Queued {
            event: Box::new(event),
            ack: None,
        };
        async move {
            self.queue_or_drop(queued).await;
        }
    }

    /// Queue an event that must not be refused and, with `respond_after: durable`, wait
    /// until the log made it durable (at most `durable_wait_ms`): call it before the
    /// last bytes of the response it records go out. Whether the event is known durable
    /// (always `true` with `respond_after: queued`, where nothing is awaited).
    pub fn emit_durable(&self, event: Event) -> impl Future<Output = bool> + Send + '_ {
        self.queue_durable(Box::new(event))
    }

    async fn queue_durable(&self, event: Box<Event>) -> bool {
        if self.respond_after == RespondAfter::Queued {
            self.queue_or_drop(Queued { event, ack: None }).await;
            return true;
        }
        let event_id = event.header().event_id;
        let (ack, receipt) = oneshot::channel();
        let queued = Queued {
            event,
            ack: Some(ack),
        };
        if !self.queue_or_drop(queued).await {
            return false;
        }
        let durable = tokio::time::timeout(self.durable_wait, async {
            match receipt.await {
                Ok(r) => r.durable().await.is_ok(),
                // The log refused the event (already logged and counted by the task).
                Err(_) => false,
            }
        })
        .await
        .unwrap_or(false);
        if !durable {
            self.stats.durable_misses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%event_id, code = "event_log.not_durable",
                "response completed before its usage event was durable in the log");
        }
        durable
    }

    /// Queue `q` waiting for room; whether it was queued (if the sink is already shut
    /// down the event is dropped, counted and logged).
    async fn queue_or_drop(&self, q: Queued) -> bool {
        match self.queue_waiting(q).await {
            Ok(()) => true,
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event_id = %e.0.event.header().event_id, "event sink closed; event not written");
                false
            }
        }
    }

    /// Queue `q`, waiting for room if the queue is full (and counting that it was).
    async fn queue_waiting(&self, q: Queued) -> Result<(), mpsc::error::SendError<Queued>> {
        match self.tx.try_send(q) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(q)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                self.tx.send(q).await
            }
            Err(mpsc::error::TrySendError::Closed(q)) => Err(mpsc::error::SendError(q)),
        }
    }

    /// Whether responses wait for their usage event to be durable
    /// (`respond_after: durable`).
    pub fn durable_responses(&self) -> bool {
        self.respond_after == RespondAfter::Durable
    }

    /// Whether a new request may be admitted. Always with `block`; with `fail_closed`,
    /// only while the queue has room and the log did not refuse an append in the last
    /// [`FAILING_REFUSE_MICROS`] (after that one request goes through and tests the log
    /// again, so a log that recovered is noticed).
    pub fn has_room(&self) -> bool {
        match self.when_full {
            WhenFull::Block => true,
            WhenFull::FailClosed => {
                let recently_failed = self.stats.failing.load(Ordering::Relaxed)
                    && Timestamp::now().as_micros()
                        - self.stats.failed_at_micros.load(Ordering::Relaxed)
                        < FAILING_REFUSE_MICROS;
                self.tx.capacity() > 0 && !recently_failed
            }
        }
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
        registry.register(
            "responses_not_durable",
            "Responses completed before their usage event was durable in the log (respond_after: durable)",
            stat(|s| &s.durable_misses),
        );
    }
}

/// See [`EventSink::health`].
#[derive(Clone, Debug)]
pub struct SinkHealth {
    tx: mpsc::WeakSender<Queued>,
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
