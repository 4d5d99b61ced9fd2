//! Fuzz target `event_decode`: the event wire decoder (`tally_events::codec`) and the
//! ledger's conversion of decoded events to Arrow rows, on arbitrary bytes. Checks that
//! a decoded event encodes and decodes back to itself, that the one-pass canonical reader
//! and serde's reader agree, that a decoder reused after another event decodes as a fresh
//! one, that the borrowing fast reader and the full model agree, and that the ledger's row
//! builder gives the same rows as the batch conversion of the owned event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_events::arrow::{
    RowsBuilder, Table, corrections_to_batch, decisions_to_batch, usage_to_batch, with_day_column,
};
use tally_events::{Decoded, Event, WireDecoder, WireEvent, decode, decode_wire, encode};

/// A usage event with every optional field set, in its written form.
const FULL_USAGE: &[u8] = br#"{"event_type":"usage","event_id":"01a22ad4-afb6-71d2-b7a9-0d39505a88e8","schema_version":1,"occurred_at":"2026-11-01T00:00:00Z","gateway_instance":"g","request_id":"r","tenant":"t","api_key_id":"k","labels":{"team":"a"},"provider":"openai","route":"chat","model_requested":"m","model_served":"m","upstream_request_id":"u","upstream":"main","status_code":200,"streamed":true,"finish_state":"completed","input_tokens":1,"cached_input_tokens":1,"cache_write_tokens":1,"output_tokens":1,"reasoning_tokens":1,"audio_input_tokens":1,"audio_output_tokens":1,"usage_source":"provider_reported","cost_micros":1,"price_version":"v","latency_ms":1,"ttft_ms":1,"retry_attempt":1,"retry_of":"r0"}"#;

fn table_of(event: &Event) -> Table {
    match event {
        Event::Usage(_) => Table::Usage,
        Event::Decision(_) => Table::Decisions,
        Event::Correction(_) => Table::Corrections,
    }
}

/// The ledger's rows for `wire` equal the batch conversion of `event` (the same event).
fn check_rows(wire: &WireEvent<'_>, event: &Event) {
    let table = table_of(event);
    let mut rows = RowsBuilder::new(table);
    let built = rows.append(wire).and_then(|()| rows.finish());
    let batch = match event {
        Event::Usage(u) => usage_to_batch(std::slice::from_ref(u)),
        Event::Decision(d) => decisions_to_batch(std::slice::from_ref(d)),
        Event::Correction(c) => corrections_to_batch(std::slice::from_ref(c)),
    };
    match (built, batch) {
        (Ok(built), Ok(batch)) => {
            assert_eq!(built, batch, "row builder and batch conversion differ");
            let _ = with_day_column(table, &batch);
        }
        (Err(_), Err(_)) => {}
        (built, batch) => panic!("row builder {built:?} vs batch conversion {batch:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The one-pass canonical reader takes only what serde reads the same way.
    if let Some(fast) = tally_events::codec::read_canonical(data) {
        match serde_json::from_slice::<WireEvent<'_>>(data) {
            Ok(slow) => assert_eq!(fast, slow, "canonical and serde readers differ"),
            Err(e) => panic!("the canonical reader took what serde refuses: {e}"),
        }
    }
    // A decoder reused after another event (a usage event with every optional field)
    // decodes the bytes as a fresh call does.
    let mut reused = WireDecoder::default();
    let _ = reused.decode(FULL_USAGE);
    let again = reused
        .decode(data)
        .map(|d| d.clone().into_event())
        .map_err(|e| e.to_string());
    let alone = decode_wire(data)
        .map(|d| d.into_event())
        .map_err(|e| e.to_string());
    assert_eq!(again, alone, "a reused decoder and a fresh one differ");
    let decoded = match decode_wire(data) {
        Ok(decoded) => decoded,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            assert!(decode(data).is_err());
            return;
        }
    };
    let _ = (
        decoded.event_type(),
        decoded.event_id(),
        decoded.occurred_at(),
    );
    if let Decoded::Wire(w) = &decoded {
        // The fast reader and the full model agree on what the full model accepts.
        let event = w.to_event();
        if let Ok(model) = serde_json::from_slice::<Event>(data) {
            assert_eq!(event, model, "fast reader and full model differ");
        }
        check_rows(w, &event);
    }
    let event = decoded.into_event();
    assert_eq!(event.event_type(), table_of(&event).event_type());

    let bytes = encode(&event);
    let again = decode(&bytes).unwrap_or_else(|e| {
        panic!(
            "an encoded event does not decode ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, event, "decode(encode(e)) != e");
    assert_eq!(encode(&again), bytes, "encoding is not stable");
    let wire = WireEvent::from_event(&event);
    assert_eq!(
        wire.to_event(),
        event,
        "WireEvent::from_event(e).to_event() != e"
    );
    check_rows(&wire, &event);
});
