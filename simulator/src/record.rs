//! The served record: one `ServedRecord` per request the simulator answered, kept in a
//! bounded in-memory log; it must not decide how requests are answered.
//!
//! A record is pushed exactly once, when its [`RecordGuard`] is dropped: after a
//! non-streaming response is built, after a stream ends or is aborted, or when the
//! client goes away first (the handler future or the body stream is dropped). So a
//! request whose client disconnects mid-stream is still recorded, with
//! `completed: false` and the tokens handed to the connection so far.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Which wire format served a request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI (chat completions, responses, completions, embeddings, models).
    #[default]
    Openai,
    /// Anthropic (messages, count_tokens, models).
    Anthropic,
    /// Gemini (generateContent, streamGenerateContent, models).
    Gemini,
}

impl Provider {
    /// Lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }
}

/// One request as the simulator served it.
///
/// Token fields use uniform semantics across providers, so reports can be built from
/// them without knowing each wire format:
/// * `input_tokens` is every prompt token, *including* `cached_input_tokens` and
///   `cache_write_tokens` (Anthropic's wire `input_tokens` excludes both; it equals
///   `input_tokens - cached_input_tokens - cache_write_tokens` here).
/// * `output_tokens` is every generated token the request is billed for when it
///   completes, *including* `reasoning_tokens` (Gemini reports thoughts separately on
///   the wire; here they are added in).
/// * `output_tokens_sent` is what was actually generated and handed to the connection:
///   equal to `output_tokens` for a completed request; for an aborted or disconnected
///   stream, the tokens of the content chunks sent, plus the hidden reasoning tokens
///   once the first content chunk went out (reasoning precedes visible output).
///   Providers bill what they generated, so a usage report for an incomplete request
///   should use `output_tokens_sent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedRecord {
    /// When the request arrived, in microseconds since the Unix epoch.
    pub at: i64,
    /// The wire format.
    pub provider: Provider,
    /// The route template, e.g. `/v1/chat/completions` or
    /// `/v1beta/models/{model}:streamGenerateContent`.
    pub route: String,
    /// `model` as requested (empty when the request had none).
    pub model_requested: String,
    /// `model` as reported in the response (the dated snapshot for known aliases).
    pub model_served: String,
    /// Fingerprint of the API key that authenticated the request (`None` when missing).
    pub key_fingerprint: Option<String>,
    /// The request id the simulator returned (`x-request-id` / `request-id` header,
    /// Gemini `responseId`).
    pub request_id: String,
    /// Whether the response was streamed.
    pub streamed: bool,
    /// HTTP status sent; `499` when the client went away before the response head.
    pub status: u16,
    /// All prompt tokens (see the type docs).
    pub input_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cached_input_tokens: u64,
    /// Prompt tokens written to the cache (Anthropic `cache_creation_input_tokens`).
    pub cache_write_tokens: u64,
    /// All output tokens of the full response, reasoning included.
    pub output_tokens: u64,
    /// Reasoning/thinking tokens (part of `output_tokens`).
    pub reasoning_tokens: u64,
    /// `false` if the response was aborted mid-stream or the client went away first.
    pub completed: bool,
    /// Output tokens actually generated and sent before the end (see the type docs).
    pub output_tokens_sent: u64,
}

/// The bounded log of served records.
#[derive(Debug)]
pub(crate) struct Recorder {
    records: Mutex<VecDeque<ServedRecord>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn push(&self, rec: ServedRecord) {
        let mut r = self.records.lock();
        if r.len() >= self.capacity {
            r.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        r.push_back(rec);
    }

    pub(crate) fn snapshot(&self) -> Vec<ServedRecord> {
        self.records.lock().iter().cloned().collect()
    }

    /// Records evicted because the log was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Status recorded when the client went away before the response head was sent
/// (nginx's "client closed request").
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// Owns a record while its request is in flight; pushes it to the log on drop.
#[derive(Debug)]
pub(crate) struct RecordGuard {
    recorder: Arc<Recorder>,
    pub(crate) rec: ServedRecord,
}

impl RecordGuard {
    pub(crate) fn new(recorder: Arc<Recorder>, rec: ServedRecord) -> Self {
        Self { recorder, rec }
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if self.rec.status == 0 {
            // Dropped before any response head: the client went away first.
            self.rec.status = CLIENT_CLOSED;
        }
        self.recorder.push(std::mem::take(&mut self.rec));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn guard_pushes_once_and_log_is_bounded() {
        let r = Arc::new(Recorder::new(2));
        for i in 0..3 {
            let mut g = RecordGuard::new(r.clone(), ServedRecord::default());
            g.rec.status = 200 + i;
        }
        let s = r.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].status, 201);
        assert_eq!(r.dropped(), 1);
        assert_eq!(
            serde_json::to_value(Provider::Gemini).unwrap(),
            serde_json::json!("gemini")
        );
    }
}
