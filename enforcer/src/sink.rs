//! The path from request handling to the event log: a bounded in-memory queue drained
//! by one task that encodes events and appends them to the log. Request handling never
//! waits on disk I/O here; when the queue is full it either waits for room (`block`) or
//! refuses (`fail_closed`), and counts it. Must not decide what events to write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_events::log::{EventLog, Receipt};
use tally_events::{Event, codec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{EventQueueConfig, WhenFull};
use crate::error::{ErrorKind, ProxyError};

/// Counters of the event path, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events handed to the log.
    pub appended: AtomicU64,
    /// Times an emit found the queue full.
    pub queue_full: AtomicU64,
    /// Appends the log refused.
    pub append_errors: AtomicU64,
}

/// Handle for emitting events; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    when_full: WhenFull,
    stats: Arc<SinkStats>,
}

/// The draining task; [`SinkTask::finish`] waits until every queued event is durable.
#[derive(Debug)]
pub struct SinkTask {
    handle: JoinHandle<Option<Receipt>>,
}

impl EventSink {
    /// Start the draining task over `log`.
    pub fn start(log: Arc<dyn EventLog>, config: &EventQueueConfig) -> (EventSink, SinkTask) {
        let (tx, mut rx) = mpsc::channel::<Event>(config.capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let task_stats = stats.clone();
        let handle = tokio::spawn(async move {
            let mut last: Option<Receipt> = None;
            let mut buf = Vec::with_capacity(1024);
            while let Some(event) = rx.recv().await {
                buf.clear();
                codec::encode_into(&event, &mut buf);
                match log.append(&event.header().tenant, &buf) {
                    Ok(r) => {
                        task_stats.appended.fetch_add(1, Ordering::Relaxed);
                        last = Some(r);
                    }
                    Err(e) => {
                        task_stats.append_errors.fetch_add(1, Ordering::Relaxed);
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
