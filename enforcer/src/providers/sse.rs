//! Incremental Server-Sent Events parser: owns splitting an upstream byte stream into
//! events (WHATWG `text/event-stream` rules) and handing back each event's exact raw bytes
//! so the proxy can forward or drop it without re-serializing. Must not interpret event
//! payloads (that is the provider adapters' job), never panic on arbitrary bytes, and never
//! buffer more than the configured maximum event size.
//!
//! Rules followed (HTML Living Standard, "Server-sent events", event stream
//! interpretation): lines end with CRLF, LF or CR; a line starting with `:` is a comment;
//! `field:value` with one optional space after the colon; a line without a colon is a
//! field with an empty value; `data` lines are joined with `\n`; an empty line ends the
//! event; a UTF-8 BOM at the very start of the stream is ignored. Field values are decoded
//! as UTF-8 with replacement characters, as browsers do.
//!
//! Deviations, deliberate: every block of lines ended by an empty line is returned (also
//! comment-only blocks and blocks without `data`), so that concatenating the `raw` bytes
//! of all returned events reproduces the input exactly; `id` is the id set in this block,
//! not the stream's persisted last-event-id.

use bytes::{Bytes, BytesMut};

/// Default bound on one event's size (raw bytes, including line terminators).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One block of an event stream, ended by an empty line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, if the block set one (the WHATWG default type is `message`).
    pub event: Option<String>,
    /// The `data` lines joined with `\n`; `None` when the block had no `data` line (such a
    /// block is not dispatched by browsers or SDKs: a comment, a keep-alive…).
    pub data: Option<String>,
    /// The `id` field set in this block, if any (values containing NUL are ignored).
    pub id: Option<String>,
    /// The `retry` field, if it was a valid ASCII integer.
    pub retry: Option<u64>,
    /// False only for the unterminated tail returned by [`SseParser::finish_event`].
    pub terminated: bool,
    raw: Bytes,
}

impl SseEvent {
    /// An event with the given fields, for tests and synthesized events; `raw` is what
    /// would be forwarded.
    pub fn new(event: Option<&str>, data: Option<&str>, raw: Bytes) -> Self {
        Self {
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
            id: None,
            retry: None,
            terminated: true,
            raw,
        }
    }

    /// The exact bytes of the block as received, including the terminating empty line
    /// (and a leading BOM for the first block of a stream that had one).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The raw bytes, by value.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The event type as clients see it: the `event` field, or `message`.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => "message",
        }
    }

    /// Whether an SSE client would dispatch this block as an event (it had `data`).
    pub fn is_dispatched(&self) -> bool {
        self.data.is_some()
    }
}

/// Why the parser stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past the configured bound.
    #[error("an event-stream event exceeded {max} bytes")]
    EventTooLarge {
        /// The configured bound.
        max: usize,
    },
}

impl SseError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SseError::EventTooLarge { .. } => "stream.event_too_large",
        }
    }
}

/// Fields collected for the block being read.
#[derive(Debug, Default)]
struct Pending {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

/// Incremental parser; feed it chunks as they arrive with [`SseParser::push`].
///
/// Byte accounting: the `raw` bytes of every event returned, followed by
/// [`SseParser::finish`], reproduce the input exactly. After an error, `finish` returns
/// the bytes held from before the failing chunk, so a caller that then relays the failing
/// chunk and everything after it untouched still forwards the stream byte for byte.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the block being read, from its first byte.
    buf: BytesMut,
    /// Start of the current (unterminated) line within `buf`.
    line_start: usize,
    /// Bytes of `buf` already known to hold no line terminator.
    scanned: usize,
    pending: Pending,
    max_event_bytes: usize,
    /// Still at the start of the stream (a BOM may follow).
    at_stream_start: bool,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that fails once one event exceeds `max_event_bytes` raw bytes.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            line_start: 0,
            scanned: 0,
            pending: Pending::default(),
            max_event_bytes: max_event_bytes.max(1),
            at_stream_start: true,
            failed: None,
        }
    }

    /// Bytes held for the event being read (never more than the maximum event size,
    /// except transiently within one `push`).
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether a `push` failed; the parser then only hands back its bytes via `finish`.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Feeds a chunk and returns every block it completed, in order.
    ///
    /// On error nothing of this chunk is consumed or returned (not even blocks it
    /// completed before the oversized one), and the parser is spent: every later call
    /// fails the same way, and [`SseParser::finish`] returns the bytes held from before
    /// this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let held_before = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let result = match self.drain_complete(&mut out, false) {
            Ok(()) if self.buf.len() > self.max_event_bytes => Err(self.too_large()),
            r => r,
        };
        match result {
            Ok(()) => Ok(out),
            Err(err) => {
                // Give back the bytes held before this chunk: they are the prefix of what
                // was split off into `out`, followed by what is still buffered.
                let mut whole = BytesMut::new();
                for ev in out {
                    whole.extend_from_slice(&ev.raw);
                }
                whole.extend_from_slice(&self.buf);
                whole.truncate(held_before);
                self.buf = whole;
                self.pending = Pending::default();
                self.failed = Some(err);
                Err(err)
            }
        }
    }

    /// Ends the stream and returns the bytes not yet returned in an event: an
    /// unterminated tail (or, after an error, the bytes held before the failing chunk).
    /// Empty when there are none; the parser is then empty.
    pub fn finish(&mut self) -> Bytes {
        if self.failed.is_some() {
            self.clear();
            return std::mem::take(&mut self.buf).freeze();
        }
        let mut out = Vec::new();
        // At end of stream nothing can fail: the held bytes are within the bound.
        let _ = self.drain_complete(&mut out, true);
        let mut bytes = BytesMut::new();
        for ev in out {
            bytes.extend_from_slice(&ev.raw);
        }
        bytes.extend_from_slice(&self.buf);
        self.clear();
        self.buf = BytesMut::new();
        bytes.freeze()
    }

    /// Ends the stream like [`SseParser::finish`], but returns what is left as events: a
    /// block whose final CR was waiting for a possible LF, and the unterminated tail parsed
    /// as if an empty line followed (`terminated == false`). Browsers discard such a tail;
    /// usage trackers may still read it. Nothing after an error.
    pub fn finish_event(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.failed.is_some() {
            return out;
        }
        let _ = self.drain_complete(&mut out, true);
        if !self.buf.is_empty() {
            let end = self.buf.len();
            if end > self.line_start {
                self.field_line(self.line_start, end);
            }
            let raw = std::mem::take(&mut self.buf).freeze();
            let pending = std::mem::take(&mut self.pending);
            out.push(SseEvent {
                event: pending.event,
                data: pending.data,
                id: pending.id,
                retry: pending.retry,
                terminated: false,
                raw,
            });
        }
        self.clear();
        out
    }

    fn clear(&mut self) {
        self.line_start = 0;
        self.scanned = 0;
        self.pending = Pending::default();
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            max: self.max_event_bytes,
        }
    }

    /// Reads complete lines; moves each block ended by an empty line into `out`. With
    /// `at_eof`, a trailing CR counts as a line end without waiting for a possible LF.
    fn drain_complete(&mut self, out: &mut Vec<SseEvent>, at_eof: bool) -> Result<(), SseError> {
        if self.at_stream_start {
            let n = self.buf.len().min(BOM.len());
            let bom_prefix = self.buf[..n] == BOM[..n];
            if bom_prefix && n < BOM.len() && !at_eof {
                return Ok(()); // might still become a BOM
            }
            if bom_prefix && n == BOM.len() {
                self.line_start = BOM.len();
                self.scanned = BOM.len();
            }
            self.at_stream_start = false;
        }
        loop {
            let Some(rel) = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                self.scanned = self.buf.len();
                return Ok(());
            };
            let term = self.scanned + rel;
            let term_len = if self.buf[term] == b'\r' {
                match self.buf.get(term + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A CR at the end of what we have: wait to see whether LF follows,
                    // so that a block's raw bytes never depend on chunk boundaries.
                    None if at_eof => 1,
                    None => {
                        self.scanned = term;
                        return Ok(());
                    }
                }
            } else {
                1
            };
            let line_end = term + term_len;
            if term == self.line_start {
                // Empty line: the block ends here.
                if line_end > self.max_event_bytes {
                    return Err(self.too_large());
                }
                let raw = self.buf.split_to(line_end).freeze();
                let pending = std::mem::take(&mut self.pending);
                self.line_start = 0;
                self.scanned = 0;
                out.push(SseEvent {
                    event: pending.event,
                    data: pending.data,
                    id: pending.id,
                    retry: pending.retry,
                    terminated: true,
                    raw,
                });
            } else {
                self.field_line(self.line_start, term);
                self.line_start = line_end;
                self.scanned = line_end;
            }
        }
    }

    /// Applies one non-empty line (`buf[start..end]`, terminator excluded).
    fn field_line(&mut self, start: usize, end: usize) {
        let line = &self.buf[start..end];
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => self.pending.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                let value = String::from_utf8_lossy(value);
                match &mut self.pending.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.pending.data = Some(value.into_owned()),
                }
            }
            b"id" if !value.contains(&0) => {
                self.pending.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so valid UTF-8; too large to fit is ignored like garbage.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.pending.retry = Some(ms);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn events(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = p.push(input).unwrap();
        out.extend(p.finish_event());
        out
    }

    #[test]
    fn fields_and_raw_bytes() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\ndata:x\ndata: y\nid: 7\nretry: 100\n\n";
        let evs = events(input);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].event.as_deref(), Some("message_start"));
        assert_eq!(evs[0].data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            &evs[0].raw()[..],
            b"event: message_start\ndata: {\"a\":1}\n\n"
        );
        assert!(!evs[1].is_dispatched());
        assert_eq!(&evs[1].raw()[..], b": keep-alive\n\n");
        assert_eq!(evs[2].data.as_deref(), Some("x\ny"));
        assert_eq!(evs[2].id.as_deref(), Some("7"));
        assert_eq!(evs[2].retry, Some(100));
        assert_eq!(evs[2].event_type(), "message");
        let joined: Vec<u8> = evs.iter().flat_map(|e| e.raw().to_vec()).collect();
        assert_eq!(joined, input);
    }

    #[test]
    fn crlf_cr_and_lf_line_endings() {
        for input in [
            &b"data: a\r\n\r\ndata: b\r\n\r\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\n\ndata: b\n\r\n",
        ] {
            let evs = events(input);
            let data: Vec<_> = evs.iter().map(|e| e.data.clone().unwrap()).collect();
            assert_eq!(data, ["a", "b"], "{input:?}");
            assert!(evs.iter().all(|e| e.terminated));
        }
    }

    #[test]
    fn cr_at_chunk_end_waits_for_possible_lf() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: a\r\n\r").unwrap().is_empty());
        let out = p.push(b"\ndata: b\n\n").unwrap();
        let raws: Vec<_> = out.into_iter().map(SseEvent::into_raw).collect();
        assert_eq!(raws, [&b"data: a\r\n\r\n"[..], &b"data: b\n\n"[..]]);
        // At the end of the stream a pending CR does end the block.
        let mut p = SseParser::default();
        assert!(p.push(b"data: a\r\r").unwrap().is_empty());
        let evs = p.finish_event();
        assert_eq!(evs.len(), 1);
        assert!(evs[0].terminated);
        assert_eq!(evs[0].data.as_deref(), Some("a"));
    }

    #[test]
    fn optional_space_colonless_field_and_empty_data() {
        let evs = events(b"data:  two spaces\ndata\n\n");
        assert_eq!(evs[0].data.as_deref(), Some(" two spaces\n"));
        let evs = events(b"data:\n\n");
        assert_eq!(evs[0].data.as_deref(), Some(""));
        assert!(evs[0].is_dispatched());
    }

    #[test]
    fn bom_is_skipped_but_kept_in_raw() {
        let evs = events(b"\xEF\xBB\xBFdata: a\n\n");
        assert_eq!(evs[0].data.as_deref(), Some("a"));
        assert_eq!(&evs[0].raw()[..3], BOM);
        let mut p = SseParser::default();
        assert!(p.push(b"\xEF").unwrap().is_empty());
        assert!(p.push(b"\xBB").unwrap().is_empty());
        let ev = p.push(b"\xBFevent: e\ndata: a\n\n").unwrap().remove(0);
        assert_eq!(ev.event.as_deref(), Some("e"));
        // A BOM only counts at the very start.
        let evs = events(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(evs[1].data, None);
    }

    #[test]
    fn unterminated_tail() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: [DONE]\n").unwrap().is_empty());
        let tail = p.finish_event().pop().unwrap();
        assert!(!tail.terminated);
        assert_eq!(tail.data.as_deref(), Some("[DONE]"));
        assert_eq!(&tail.raw()[..], b"data: [DONE]\n");
        assert!(p.finish_event().is_empty());

        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: a\n\ndata: b").unwrap().len(), 1);
        assert_eq!(&p.finish()[..], b"data: b");
        assert!(p.finish().is_empty());
    }

    #[test]
    fn oversized_event_fails_without_consuming_the_chunk() {
        let mut p = SseParser::new(16);
        assert_eq!(p.push(b"data: a\n\ndata").unwrap().len(), 1);
        // This chunk completes a small event, then starts one that is too large.
        let err = p.push(b": x\n\ndata: 0123456789abcdef").unwrap_err();
        assert_eq!(err, SseError::EventTooLarge { max: 16 });
        assert_eq!(err.code(), "stream.event_too_large");
        assert!(p.is_failed());
        assert_eq!(p.push(b"\n\n"), Err(err));
        // The bytes held before the failing chunk come back once.
        assert_eq!(&p.finish()[..], b"data");
        assert!(p.finish().is_empty());
        assert!(p.finish_event().is_empty());
    }

    #[test]
    fn complete_but_oversized_event_fails() {
        let mut p = SseParser::new(8);
        assert!(p.push(b"data: 0123456789\n\n").is_err());
        assert!(p.finish().is_empty());
    }

    #[test]
    fn non_utf8_is_replaced_not_panicking() {
        let evs = events(b"data: \xff\xfe\n\n");
        assert_eq!(evs[0].data.as_deref(), Some("\u{fffd}\u{fffd}"));
    }
}
