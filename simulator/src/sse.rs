//! Streaming bodies: SSE (and Gemini JSON-array) framing, per-chunk delays, mid-stream
//! aborts and the accounting of what was sent; it must not decide event contents.
//!
//! Every event is yielded as its own body frame from a `Body::from_stream`, after the
//! configured delay, so nothing is buffered beyond what hyper writes at once. The
//! stream owns the request's [`RecordGuard`]: when hyper drops the body (stream end,
//! abort or client disconnect) the record is pushed with what was actually sent.

use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;

use crate::faults::Invalid;
use crate::record::RecordGuard;

/// How events are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `data: {json}\n\n` (OpenAI chat/completions).
    Data,
    /// `event: {name}\ndata: {json}\n\n` (OpenAI Responses, Anthropic).
    Named,
    /// `data: {json}\r\n\r\n` (Gemini `alt=sse`).
    DataCrlf,
    /// A JSON array streamed element by element (Gemini without `alt=sse`).
    JsonArray,
}

impl Framing {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Framing::JsonArray => "application/json; charset=UTF-8",
            _ => "text/event-stream; charset=utf-8",
        }
    }
}

/// One event to stream.
#[derive(Debug)]
pub(crate) struct Step {
    /// SSE event name (used by [`Framing::Named`] only).
    pub(crate) name: &'static str,
    /// The JSON payload (or `[DONE]`).
    pub(crate) data: String,
    /// Output tokens this event carries (counted into `output_tokens_sent`).
    pub(crate) tokens: u64,
    /// Content events are the ones delayed by TTFT / inter-chunk delay and counted by
    /// `x-sim-fail-after-chunks`.
    pub(crate) content: bool,
}

impl Step {
    /// A non-content (control) event.
    pub(crate) fn control(name: &'static str, data: String) -> Self {
        Self {
            name,
            data,
            tokens: 0,
            content: false,
        }
    }

    /// A content event carrying `tokens` output tokens.
    pub(crate) fn content(name: &'static str, data: String, tokens: u64) -> Self {
        Self {
            name,
            data,
            tokens,
            content: true,
        }
    }
}

/// Timing and fault settings of one stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamSpec {
    pub(crate) framing: Framing,
    pub(crate) ttft_ms: u64,
    pub(crate) chunk_delay_ms: u64,
    pub(crate) fail_after: Option<u64>,
    pub(crate) invalid: Option<Invalid>,
}

/// The longest prefix of `s` of at most half its length that ends on a char boundary.
pub(crate) fn truncate_half(s: &str) -> &str {
    let mut end = s.len() / 2;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn render(framing: Framing, step: &Step, first_event: bool, invalid: Option<Invalid>) -> Bytes {
    let corrupt_json = matches!(invalid, Some(Invalid::Json))
        || (framing == Framing::JsonArray && invalid.is_some());
    let data = if corrupt_json {
        truncate_half(&step.data)
    } else {
        step.data.as_str()
    };
    let merge = matches!(invalid, Some(Invalid::Sse));
    let s = match framing {
        Framing::Data => format!("data: {data}{}", if merge { "\n" } else { "\n\n" }),
        Framing::Named => format!(
            "event: {}\ndata: {data}{}",
            step.name,
            if merge { "\n" } else { "\n\n" }
        ),
        Framing::DataCrlf => format!("data: {data}{}", if merge { "\r\n" } else { "\r\n\r\n" }),
        Framing::JsonArray => {
            if first_event {
                format!("[{data}")
            } else {
                format!(",\r\n{data}")
            }
        }
    };
    Bytes::from(s)
}

struct State {
    steps: std::vec::IntoIter<Step>,
    spec: StreamSpec,
    guard: RecordGuard,
    content_sent: u64,
    emitted: u64,
    done: bool,
}

async fn next(mut st: State) -> Option<(io::Result<Bytes>, State)> {
    if st.done {
        return None;
    }
    let Some(step) = st.steps.next() else {
        st.done = true;
        st.guard.rec.completed = true;
        if st.spec.framing == Framing::JsonArray {
            let tail: &'static [u8] = if st.emitted == 0 { b"[]" } else { b"]" };
            return Some((Ok(Bytes::from_static(tail)), st));
        }
        return None;
    };
    let mut invalid = None;
    if step.content {
        if st.spec.fail_after.is_some_and(|n| st.content_sent >= n) {
            st.done = true;
            // Let hyper flush what was sent so far (it flushes while the body is
            // pending); the error then aborts the connection without a final chunk.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let err = io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated mid-stream failure (x-sim-fail-after-chunks)",
            );
            return Some((Err(err), st));
        }
        let delay = if st.content_sent == 0 {
            st.spec.ttft_ms
        } else {
            st.spec.chunk_delay_ms
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if st.content_sent == 0 {
            invalid = st.spec.invalid;
        }
        st.content_sent += 1;
    }
    let bytes = render(st.spec.framing, &step, st.emitted == 0, invalid);
    st.emitted += 1;
    st.guard.rec.output_tokens_sent += step.tokens;
    Some((Ok(bytes), st))
}

/// A streaming body over `steps`; `guard` is pushed when the body is dropped.
pub(crate) fn body(steps: Vec<Step>, spec: StreamSpec, mut guard: RecordGuard) -> Body {
    guard.rec.completed = false;
    guard.rec.output_tokens_sent = 0;
    let state = State {
        steps: steps.into_iter(),
        spec,
        guard,
        content_sent: 0,
        emitted: 0,
        done: false,
    };
    Body::from_stream(futures_util::stream::unfold(state, next))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn framings() {
        let s = Step::control("ping", "{\"a\":1}".into());
        assert_eq!(
            &render(Framing::Data, &s, true, None)[..],
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(
            &render(Framing::Named, &s, true, None)[..],
            b"event: ping\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &render(Framing::DataCrlf, &s, true, None)[..],
            b"data: {\"a\":1}\r\n\r\n"
        );
        assert_eq!(
            &render(Framing::JsonArray, &s, true, None)[..],
            b"[{\"a\":1}"
        );
        assert_eq!(
            &render(Framing::JsonArray, &s, false, None)[..],
            b",\r\n{\"a\":1}"
        );
        assert_eq!(
            &render(Framing::Data, &s, true, Some(Invalid::Json))[..],
            b"data: {\"a\n\n"
        );
        assert_eq!(
            &render(Framing::Data, &s, true, Some(Invalid::Sse))[..],
            b"data: {\"a\":1}\n"
        );
        assert_eq!(truncate_half("héé"), "h");
    }
}
