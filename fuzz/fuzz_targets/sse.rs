//! Fuzz target `sse`: the incremental SSE parser (`tally_enforcer::providers::sse`) on
//! arbitrary bytes in arbitrary chunkings. Input: byte 0 seeds the chunking
//! (`tally_fuzz::chunks`), byte 1 picks the maximum event size (0: the default 4 MiB,
//! else 4 × the byte), the rest is the stream. Checks that fed in chunks the stream
//! gives the same events (or the same failure) as fed at once, and that the raw bytes
//! handed back reproduce the input exactly, also after a failure.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_enforcer::providers::sse::DEFAULT_MAX_EVENT_BYTES;
use tally_enforcer::providers::{SseError, SseEvent, SseParser};
use tally_fuzz::{chunks, header};

/// Every event of `parts` fed in order, then the tail as an event; the first error
/// instead, if a push fails.
fn parse(max: usize, parts: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for part in parts {
        events.extend(parser.push(part)?);
        assert!(
            parser.buffered_len() <= max,
            "held more than one event's bound"
        );
    }
    let tail = parser.finish_event();
    assert!(
        tail.iter()
            .take(tail.len().saturating_sub(1))
            .all(|e| e.terminated)
    );
    events.extend(tail);
    assert!(parser.finish_event().is_empty() && parser.finish().is_empty());
    Ok(events)
}

/// The bytes handed back by `push` and `finish`, plus the chunks not consumed after a
/// failure, are the input.
fn check_accounting(max: usize, parts: &[&[u8]], input: &[u8]) {
    let mut parser = SseParser::new(max);
    let mut out = Vec::with_capacity(input.len());
    let mut failed_at = None;
    for (i, part) in parts.iter().enumerate() {
        match parser.push(part) {
            Ok(events) => events.iter().for_each(|e| out.extend_from_slice(e.raw())),
            Err(e) => {
                assert_eq!(e.code(), "stream.event_too_large");
                assert!(parser.is_failed());
                assert_eq!(parser.push(b"more"), Err(e), "a failed parser stays failed");
                failed_at = Some(i);
                break;
            }
        }
    }
    out.extend_from_slice(&parser.finish());
    if let Some(i) = failed_at {
        parts[i..].iter().for_each(|p| out.extend_from_slice(p));
    }
    assert_eq!(out, input, "raw bytes lost or duplicated");
}

fuzz_target!(|data: &[u8]| {
    let ([seed, max_sel], stream) = header::<2>(data);
    let max = match max_sel {
        0 => DEFAULT_MAX_EVENT_BYTES,
        n => usize::from(n) * 4,
    };
    let parts = chunks(stream, seed);
    let whole = parse(max, &[stream]);
    let chunked = parse(max, &parts);
    assert_eq!(whole, chunked, "the chunking changed the events");
    if let Ok(events) = &whole {
        for e in events {
            assert!(!e.raw().is_empty());
            assert!(e.raw().len() <= max);
            assert_eq!(e.is_dispatched(), e.data.is_some());
            assert!(!e.event_type().is_empty());
            assert!(e.id.as_deref().is_none_or(|id| !id.contains('\0')));
        }
    }
    check_accounting(max, &parts, stream);
    check_accounting(max, &[stream], stream);
});
