//! Append throughput of the segment log (`fsync: interval`, 5 ms) for ~200-byte records,
//! next to the raw sequential write speed of the same disk for the same bytes (a plain
//! `BufWriter` and one fsync at the end). One iteration = a batch of records, timed until
//! the last one is durable; both throughputs are per batch so the two compare directly.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tally_events::log::{EventLog, FsyncPolicy, LogConfig, SegmentLog};

/// Records per iteration.
const BATCH: u64 = 100_000;
/// Payload bytes per record (a typical encoded usage event).
const PAYLOAD: usize = 200;
/// Bytes per framed record on disk.
const FRAME: usize = 12 + PAYLOAD;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i * 7 + 3) as u8).collect()
}

fn log_batch(log: &SegmentLog, payload: &[u8]) -> Duration {
    let start = Instant::now();
    let mut last = None;
    for _ in 0..BATCH {
        match log.append("tenant", black_box(payload)) {
            Ok(receipt) => last = Some(receipt),
            Err(e) => panic!("append: {e}"),
        }
    }
    if let Some(Err(e)) = last.map(|r| r.wait()) {
        panic!("wait: {e}");
    }
    let elapsed = start.elapsed();
    // Retention outside the timing keeps the disk footprint to about one segment.
    if let Err(e) = log.checkpoint(log.durable_end()) {
        panic!("checkpoint: {e}");
    }
    elapsed
}

fn raw_batch(dir: &Path, frame: &[u8]) -> Duration {
    let path = dir.join("raw.bin");
    let start = Instant::now();
    let result = File::create(&path).and_then(|file| {
        let mut out = BufWriter::new(file);
        for _ in 0..BATCH {
            out.write_all(black_box(frame))?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_data()
    });
    let elapsed = start.elapsed();
    if let Err(e) = result.and_then(|()| std::fs::remove_file(&path)) {
        panic!("raw write: {e}");
    }
    elapsed
}

fn bench(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let payload = payload();
    // The same bytes as the log writes: a frame header and the payload.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&payload);
    assert_eq!(frame.len(), FRAME);

    let config = LogConfig {
        fsync: FsyncPolicy::Interval,
        fsync_interval_ms: 5,
        ..LogConfig::default()
    };
    let log = match SegmentLog::open(&dir.path().join("log"), &config) {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };

    let mut group = c.benchmark_group("log_append");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::ElementsAndBytes {
        elements: BATCH,
        bytes: BATCH * FRAME as u64,
    });
    group.bench_function("segment_log_interval_5ms", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| log_batch(&log, &payload)).sum())
    });
    group.bench_function("raw_bufwriter_one_fsync", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw_batch(dir.path(), &frame)).sum())
    });
    group.finish();
    if let Err(e) = log.close() {
        panic!("close: {e}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
