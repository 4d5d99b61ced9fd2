//! Durability receipts: the handle an `append` returns and the shared durable watermark
//! it resolves against (blocking or async). Owns waiting and waking only; must not do any
//! I/O and must never report a record durable before the writer has fsynced it.

use std::fmt;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::{LogError, Position};

/// What the writer has made durable so far, and whether it has stopped.
#[derive(Debug)]
struct MarkState {
    /// Every record whose position is below this is durable.
    durable: Position,
    /// Set once the writer stopped (error or shutdown): records at or past `durable`
    /// will never become durable in this process.
    stopped: Option<String>,
}

/// The durable watermark shared by a log's writer and all its receipts: one per log, so a
/// receipt costs an `Arc` clone, not a channel.
pub(crate) struct Watermark {
    state: Mutex<MarkState>,
    /// Wakes blocking waiters.
    cond: Condvar,
    /// Wakes async waiters.
    notify: Notify,
}

impl fmt::Debug for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Watermark")
            .field("durable", &state.durable)
            .field("stopped", &state.stopped)
            .finish()
    }
}

impl Watermark {
    pub(crate) fn new(durable: Position) -> Self {
        Self {
            state: Mutex::new(MarkState {
                durable,
                stopped: None,
            }),
            cond: Condvar::new(),
            notify: Notify::new(),
        }
    }

    /// The position after the last durable record.
    pub(crate) fn durable(&self) -> Position {
        self.state.lock().durable
    }

    /// Called by the writer after an fsync covering everything before `to`.
    pub(crate) fn advance(&self, to: Position) {
        {
            let mut state = self.state.lock();
            if to > state.durable {
                state.durable = to;
            }
        }
        self.wake();
    }

    /// The writer stopped: everything not durable yet fails with `reason`. The first
    /// reason given is kept.
    pub(crate) fn stop(&self, reason: &str) {
        {
            let mut state = self.state.lock();
            if state.stopped.is_none() {
                state.stopped = Some(reason.to_owned());
            }
        }
        self.wake();
    }

    fn wake(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    /// `Some(result)` once the record at `position` is settled.
    fn check(state: &MarkState, position: Position) -> Option<Result<Position, LogError>> {
        if position < state.durable {
            Some(Ok(position))
        } else {
            state.stopped.as_ref().map(|reason| {
                Err(LogError::Closed(format!(
                    "record at {position} was not made durable: {reason}"
                )))
            })
        }
    }

    fn wait_blocking(&self, position: Position) -> Result<Position, LogError> {
        let mut state = self.state.lock();
        loop {
            if let Some(result) = Self::check(&state, position) {
                return result;
            }
            self.cond.wait(&mut state);
        }
    }

    async fn wait_async(&self, position: Position) -> Result<Position, LogError> {
        loop {
            // Register interest before checking, so a wake between check and await is not lost.
            let mut notified = std::pin::pin!(self.notify.notified());
            notified.as_mut().enable();
            if let Some(result) = Self::check(&self.state.lock(), position) {
                return result;
            }
            notified.await;
        }
    }
}

/// Acknowledgement handle of one appended record: resolves once the record is durable
/// under the log's fsync policy, or fails if the log's writer stopped before that.
#[derive(Debug, Clone)]
pub struct Receipt {
    position: Position,
    /// `None`: durable already (see [`Receipt::ready`]).
    mark: Option<Arc<Watermark>>,
}

impl Receipt {
    /// A receipt for a record that is already durable (for logs that are durable on return).
    pub fn ready(position: Position) -> Self {
        Self {
            position,
            mark: None,
        }
    }

    pub(crate) fn pending(position: Position, mark: Arc<Watermark>) -> Self {
        Self {
            position,
            mark: Some(mark),
        }
    }

    /// Where the record was placed.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Whether the record is durable already (never blocks).
    pub fn is_durable(&self) -> bool {
        match &self.mark {
            None => true,
            Some(mark) => self.position < mark.durable(),
        }
    }

    /// Block the calling thread until the record is durable. Do not call this on an async
    /// runtime's thread; use [`Receipt::durable`] there.
    pub fn wait(self) -> Result<Position, LogError> {
        match &self.mark {
            None => Ok(self.position),
            Some(mark) => mark.wait_blocking(self.position),
        }
    }

    /// Wait (asynchronously, without blocking the runtime) until the record is durable.
    pub async fn durable(self) -> Result<Position, LogError> {
        match &self.mark {
            None => Ok(self.position),
            Some(mark) => mark.wait_async(self.position).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_receipts_resolve_at_once() {
        let r = Receipt::ready(Position::new(3, 40));
        assert!(r.is_durable());
        assert_eq!(r.wait().ok(), Some(Position::new(3, 40)));
    }

    #[test]
    fn pending_receipts_follow_the_watermark_and_fail_when_stopped() {
        let mark = Arc::new(Watermark::new(Position::new(0, 16)));
        let first = Receipt::pending(Position::new(0, 16), Arc::clone(&mark));
        let second = Receipt::pending(Position::new(0, 40), Arc::clone(&mark));
        assert!(!first.is_durable());
        let waiter = {
            let first = first.clone();
            std::thread::spawn(move || first.wait())
        };
        mark.advance(Position::new(0, 40));
        assert!(matches!(waiter.join(), Ok(Ok(p)) if p == Position::new(0, 16)));
        assert!(first.is_durable());
        assert!(!second.is_durable());
        mark.stop("writer failed");
        // Durable before the stop: still fine. Not durable: fails, never acknowledged.
        assert!(first.wait().is_ok());
        assert!(matches!(second.wait(), Err(LogError::Closed(_))));
    }
}
