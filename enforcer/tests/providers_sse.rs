//! Property tests of the incremental SSE parser: chunk boundaries never change the events
//! or their raw bytes, the bytes handed back always reproduce the input exactly (also
//! after an oversized event), arbitrary bytes never panic, and memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tally_enforcer::providers::{SseEvent, SseParser};

/// The observable fields of an event (raw bytes aside).
type Fields = (Option<String>, Option<String>, Option<String>, Option<u64>);

/// What a run produced: the events, the failing chunk's index if any, the bytes a relay
/// would forward, and the most bytes held between pushes.
struct Run {
    events: Vec<SseEvent>,
    failed_at: Option<usize>,
    forwarded: Vec<u8>,
    max_buffered: usize,
}

fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(&input[start..c]);
        start = c;
    }
    out.push(&input[start..]);
    out
}

/// Relays like the proxy does: forward each event's raw bytes; on error forward what
/// `finish` hands back, then every remaining chunk untouched.
fn run(input: &[u8], cuts: &[usize], max: usize) -> Run {
    let mut p = SseParser::new(max);
    let mut r = Run {
        events: Vec::new(),
        failed_at: None,
        forwarded: Vec::new(),
        max_buffered: 0,
    };
    for (i, piece) in pieces(input, cuts).into_iter().enumerate() {
        if r.failed_at.is_some() {
            assert!(p.push(piece).is_err(), "a failed parser stays failed");
            r.forwarded.extend_from_slice(piece);
            continue;
        }
        match p.push(piece) {
            Ok(evs) => {
                for ev in evs {
                    r.forwarded.extend_from_slice(ev.raw());
                    r.events.push(ev);
                }
                r.max_buffered = r.max_buffered.max(p.buffered_len());
            }
            Err(_) => {
                r.failed_at = Some(i);
                r.forwarded.extend_from_slice(&p.finish());
                r.forwarded.extend_from_slice(piece);
            }
        }
    }
    if r.failed_at.is_none() {
        r.forwarded.extend_from_slice(&p.finish());
    }
    r
}

/// Streams made of SSE-ish tokens, to hit field names, colons, spaces, every line ending,
/// BOMs and multi-byte characters far more often than random bytes would.
fn sse_like() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("data"),
        Just("event"),
        Just("id"),
        Just("retry"),
        Just("foo"),
        Just(":"),
        Just(" "),
        Just("\n"),
        Just("\n\n"),
        Just("\r"),
        Just("\r\n"),
        Just("\r\n\r\n"),
        Just("x"),
        Just("42"),
        Just("é"),
        Just("\u{feff}"),
        Just("[DONE]"),
        Just("{\"a\":[1,\"b\"]}"),
        Just("\0"),
    ];
    prop::collection::vec(token, 0..120).prop_map(|ts| ts.concat().into_bytes())
}

fn any_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![sse_like(), prop::collection::vec(any::<u8>(), 0..600)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn splitting_never_changes_events_or_raw_bytes(
        input in any_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = run(&input, &[], 1 << 20);
        let split = run(&input, &cuts, 1 << 20);
        prop_assert_eq!(whole.failed_at, None);
        prop_assert_eq!(split.failed_at, None);
        prop_assert_eq!(&whole.events, &split.events);
        prop_assert_eq!(&whole.forwarded, &input);
        prop_assert_eq!(&split.forwarded, &input);
    }

    #[test]
    fn byte_for_byte_and_bounded_even_when_events_are_too_large(
        input in any_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 1usize..48,
    ) {
        let whole = run(&input, &[], max);
        let split = run(&input, &cuts, max);
        // Whatever happens, the client receives exactly what the upstream sent.
        prop_assert_eq!(&whole.forwarded, &input);
        prop_assert_eq!(&split.forwarded, &input);
        // An oversized event is detected regardless of chunk boundaries.
        prop_assert_eq!(whole.failed_at.is_some(), split.failed_at.is_some());
        // Held bytes never exceed the bound between pushes, and no returned event does.
        prop_assert!(split.max_buffered <= max);
        prop_assert!(split.events.iter().all(|e| e.raw().len() <= max));
        // Events returned before the failure are the whole-feed events' prefix.
        if whole.failed_at.is_none() {
            prop_assert_eq!(&whole.events, &split.events);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn finish_event_reads_the_tail_like_a_terminated_event(
        input in sse_like(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // Parsing `input` then `finish_event` gives the same fields as parsing it with a
        // blank line appended (a pending CR at the end counts as a line end either way).
        let mut p = SseParser::new(1 << 20);
        let mut got = Vec::new();
        for piece in pieces(&input, &cuts) {
            got.extend(p.push(piece).unwrap_or_default());
        }
        got.extend(p.finish_event());
        let raw: Vec<u8> = got.iter().flat_map(|e| e.raw().to_vec()).collect();
        prop_assert_eq!(&raw, &input);
        let mut closed = input.clone();
        closed.extend_from_slice(b"\n\n");
        let mut q = SseParser::new(1 << 20);
        let mut want = q.push(&closed).unwrap_or_default();
        want.extend(q.finish_event());
        let fields = |evs: &[SseEvent]| -> Vec<Fields> {
            evs.iter()
                .filter(|e| e.data.is_some() || e.event.is_some() || e.id.is_some() || e.retry.is_some())
                .map(|e| (e.event.clone(), e.data.clone(), e.id.clone(), e.retry))
                .collect()
        };
        prop_assert_eq!(fields(&got), fields(&want));
    }
}

#[test]
fn a_huge_event_is_refused_without_growing() {
    let mut p = SseParser::new(1024);
    let mut failed = false;
    for _ in 0..1000 {
        match p.push(&[b'a'; 100]) {
            Ok(evs) => assert!(evs.is_empty()),
            Err(_) => {
                failed = true;
                break;
            }
        }
        assert!(p.buffered_len() <= 1024);
    }
    assert!(failed);
    assert!(p.finish().len() <= 1024);
}
