//! The ledger's conversion, per event: decoding a wire payload and appending it to its
//! table's Arrow builder (`RowsBuilder`), on the events of the ledger benchmark's mix.
//! Measured apart (`decode`) and together (`decode+append`), per batch of one read's
//! worth of records, so a change to either shows without a Parquet writer or a Delta
//! table in the way (the `materialize` bench in the ledger measures the whole path).
//!
//! ```sh
//! cargo bench -p tally-events --bench decode_rows
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_events::arrow::{RowsBuilder, Table};
use tally_events::{Decoded, EventType, Timestamp, WireDecoder, WireEvent};

#[path = "support/mix.rs"]
mod mix;

/// Events per iteration (a few of the ledger's reads).
const EVENTS: u64 = 8192;

fn payloads() -> Vec<Vec<u8>> {
    let mut rng = mix::Rng(42);
    let start = Timestamp::parse("2026-11-01T00:00:00Z").map_or(0, |t| t.as_micros());
    (0..EVENTS)
        .map(|i| {
            let mut buf = Vec::with_capacity(1024);
            tally_events::codec::encode_into(&mix::event(&mut rng, i, start), &mut buf);
            buf
        })
        .collect()
}

fn table_of(t: EventType) -> usize {
    match t {
        EventType::Decision => 1,
        EventType::Correction => 2,
        EventType::Usage | EventType::Other => 0,
    }
}

fn bench(c: &mut Criterion) {
    let payloads = payloads();
    let mut g = c.benchmark_group("conversion");
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut decoder = WireDecoder::default();
            for p in &payloads {
                match decoder.decode(black_box(p)) {
                    Ok(d) => {
                        black_box(d.occurred_at());
                    }
                    Err(e) => panic!("decode: {e}"),
                }
            }
        })
    });
    g.bench_function("decode+append", |b| {
        b.iter(|| {
            let mut rows: Vec<RowsBuilder> = Table::ALL.into_iter().map(RowsBuilder::new).collect();
            let mut decoder = WireDecoder::default();
            for p in &payloads {
                let appended = match decoder.decode(black_box(p)) {
                    Ok(Decoded::Wire(w)) => rows[table_of(w.event_type())].append(w),
                    Ok(Decoded::Model(e)) => {
                        rows[table_of(e.event_type())].append(&WireEvent::from_event(e))
                    }
                    Err(e) => panic!("decode: {e}"),
                };
                if let Err(e) = appended {
                    panic!("append: {e}");
                }
            }
            for r in &mut rows {
                match r.finish() {
                    Ok(batch) => {
                        black_box(batch);
                    }
                    Err(e) => panic!("finish: {e}"),
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
