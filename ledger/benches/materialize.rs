//! Ledger throughput: events per second from the local event log into committed Delta
//! tables, beside (a) a bare arrow-rs Parquet write of the same batches with the same
//! writer settings (the limit: no decoding, no dedupe, no Delta commit) and (b) DuckDB
//! converting the same events from JSON Lines to Parquet (the peer), in one run.
//!
//! ```sh
//! cargo bench --workspace --bench materialize            # 10 million events
//! TALLY_BENCH_EVENTS=1000000 cargo bench --workspace --bench materialize
//! ```
//!
//! Needs about 1 KiB of disk per event (log, JSON Lines, Parquet) under
//! `TALLY_BENCH_DIR` (default: the system temp dir). DuckDB comes from the test
//! virtualenv (`scripts/setup-test-deps.sh`); without it that column is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::{sort_to_indices, take_record_batch};
use deltalake::arrow::datatypes::TimestampMicrosecondType;
use deltalake::parquet::arrow::ArrowWriter;
use tally_events::arrow::{RowsBuilder, Table};
use tally_events::log::{EventLog, LogConfig, Position, SegmentLog};
use tally_events::{Decoded, Timestamp, WireDecoder, WireEvent};
use tally_ledger::{Ledger, LedgerConfig, parquet_writer_properties};

#[path = "../../events/benches/support/mix.rs"]
mod mix;
use mix::{Rng, event};

fn dir_bytes(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            total += dir_bytes(&p, ext);
        } else if ext.is_empty() || p.extension().is_some_and(|x| x == ext) {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

fn dir_bytes_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("TALLY_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tally/venv")))?;
    let p = venv.join("bin/python");
    p.is_file().then_some(p)
}

// The time goes to a file: DuckDB draws a progress bar on stdout for queries longer than
// two seconds (also switched off here).
const DUCKDB: &str = r#"
import sys, time, duckdb
src, dst, out = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_json('{src}', format = 'newline_delimited')) TO '{dst}' (FORMAT parquet, COMPRESSION zstd)")
elapsed = time.perf_counter() - t
with open(out, "w") as f:
    f.write(repr(elapsed))
"#;

/// Rows per Arrow batch handed to the Parquet writer (the ledger's chunk: one row group).
const CHUNK_ROWS: usize = 128 * 1024;
/// Rows per bare Parquet file: about what one ledger commit writes per table at the rates
/// measured here.
const FILE_ROWS: usize = 1024 * 1024;

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`
/// (zero where that file does not exist).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in clock ticks of
    // 1/100 s on Linux.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) only
    // checks that the bench builds and runs on a tiny input.
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("TALLY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10_000_000 } else { 20_000 });
    let base = std::env::var_os("TALLY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&base).unwrap();
    let (log_dir, tables, bare_dir) = (
        work.path().join("log"),
        work.path().join("tables"),
        work.path().join("bare"),
    );
    let jsonl = work.path().join("events.jsonl");
    std::fs::create_dir_all(&bare_dir).unwrap();

    // The input: the log, and the same payloads as JSON Lines for DuckDB.
    let t = Instant::now();
    let log = Arc::new(SegmentLog::open(&log_dir, &LogConfig::default()).unwrap());
    let mut lines = BufWriter::with_capacity(1 << 20, File::create(&jsonl).unwrap());
    let mut rng = Rng(42);
    let start = Timestamp::parse("2026-11-01T00:00:00Z")
        .unwrap()
        .as_micros();
    let mut last = None;
    let mut buf = Vec::with_capacity(1024);
    for i in 0..n {
        let e = event(&mut rng, i, start);
        buf.clear();
        tally_events::codec::encode_into(&e, &mut buf);
        last = Some(log.append(&e.header().tenant, &buf).unwrap());
        lines.write_all(&buf).unwrap();
        lines.write_all(b"\n").unwrap();
    }
    lines.flush().unwrap();
    if let Some(r) = last {
        r.wait().unwrap();
    }
    let log_bytes = dir_bytes(&log_dir, "");
    eprintln!(
        "input: {n} events, log {:.0} MiB, JSON Lines {:.0} MiB, written in {:.1?}",
        log_bytes as f64 / 1048576.0,
        std::fs::metadata(&jsonl).unwrap().len() as f64 / 1048576.0,
        t.elapsed()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // (a) bare arrow-rs: the same batches (decoded and converted beforehand, untimed, the
    // way the ledger does: straight from the wire into Arrow builders, chunks of one row
    // group, ordered by time), written as Parquet files of about a commit's rows with the
    // ledger's writer settings (without the `day` column, as in the tables).
    let mut batches: Vec<Vec<RecordBatch>> = vec![Vec::new(); 3];
    let mut builders: Vec<RowsBuilder> = Table::ALL.into_iter().map(RowsBuilder::new).collect();
    let mut from = Position::START;
    let t_convert = Instant::now();
    let finish = |b: &mut RowsBuilder, out: &mut Vec<RecordBatch>| {
        let rows = b.finish().unwrap();
        let at = rows
            .column_by_name("occurred_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let order = sort_to_indices(at, None, None).unwrap();
        out.push(take_record_batch(&rows, &order).unwrap());
    };
    loop {
        let records = log.read(from, 4096).unwrap();
        let Some(r) = records.last() else { break };
        from = r.next;
        let mut decoder = WireDecoder::default();
        for r in &records {
            let decoded = decoder.decode(&r.payload).unwrap();
            let i = match decoded.event_type() {
                tally_events::EventType::Decision => 1,
                tally_events::EventType::Correction => 2,
                _ => 0,
            };
            match decoded {
                Decoded::Wire(w) => builders[i].append(w).unwrap(),
                Decoded::Model(e) => builders[i].append(&WireEvent::from_event(e)).unwrap(),
            }
            if builders[i].len() >= CHUNK_ROWS {
                finish(&mut builders[i], &mut batches[i]);
            }
        }
    }
    for (b, out) in builders.iter_mut().zip(batches.iter_mut()) {
        if !b.is_empty() {
            finish(b, out);
        }
    }
    let convert_time = t_convert.elapsed();
    let t = Instant::now();
    let mut files = 0;
    for table_batches in &batches {
        let mut writer: Option<(ArrowWriter<File>, usize)> = None;
        for b in table_batches {
            let (w, rows) = writer.get_or_insert_with(|| {
                files += 1;
                let f = File::create(bare_dir.join(format!("{files:06}.parquet"))).unwrap();
                let w =
                    ArrowWriter::try_new(f, b.schema(), Some(parquet_writer_properties())).unwrap();
                (w, 0)
            });
            w.write(b).unwrap();
            *rows += b.num_rows();
            if *rows >= FILE_ROWS
                && let Some((w, _)) = writer.take()
            {
                w.close().unwrap();
            }
        }
        if let Some((w, _)) = writer.take() {
            w.close().unwrap();
        }
    }
    let bare_time = t.elapsed();
    let bare_bytes = dir_bytes(&bare_dir, "parquet");
    drop(batches);

    // tally: the ledger's catch-up from the log into committed tables. Last, because it
    // checkpoints the log (reclaiming the segments it committed).
    // `TALLY_BENCH_BATCH_MAX_AGE_MS` overrides the commit timer (default: the ledger's).
    let mut cfg = LedgerConfig::default();
    if let Some(ms) = std::env::var("TALLY_BENCH_BATCH_MAX_AGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.batch_max_age_ms = ms;
    }
    let (tally_time, summary) = rt.block_on(async {
        let mut ledger = Ledger::open(
            cfg,
            tables.to_str().unwrap(),
            log.clone() as Arc<dyn EventLog>,
        )
        .await
        .unwrap();
        let (t, cpu) = (Instant::now(), cpu_time());
        let s = ledger.catch_up(|_| {}).await.unwrap();
        let elapsed = t.elapsed();
        let cpu = cpu_time().saturating_sub(cpu);
        eprintln!(
            "ledger: {:.1?} of CPU in {:.1?} ({:.2} cores busy on average)",
            cpu,
            elapsed,
            cpu.as_secs_f64() / elapsed.as_secs_f64()
        );
        let status = ledger.status().await.unwrap();
        (elapsed, (s, status))
    });
    let (summary, status) = summary;
    assert_eq!(summary.total_rows(), n, "every event committed once");
    // The files of the tables' current versions (after compaction, if it ran; files it
    // replaced are still on disk until vacuum).
    let tally_bytes: u64 = status.tables.iter().map(|t| t.bytes).sum();
    let tally_files: u64 = status.tables.iter().map(|t| t.files).sum();
    let counters = status.counters.unwrap_or_default();

    // (b) DuckDB: JSON Lines to one zstd Parquet file, 2 threads.
    let duck = python().and_then(|py| {
        let out = work.path().join("duckdb.parquet");
        let time_file = work.path().join("duckdb.time");
        let o = match Command::new(py)
            .args(["-c", DUCKDB])
            .arg(&jsonl)
            .arg(&out)
            .arg(&time_file)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("duckdb skipped: {e}");
                return None;
            }
        };
        let secs: Option<f64> = std::fs::read_to_string(&time_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let Some(secs) = secs.filter(|_| o.status.success()) else {
            eprintln!(
                "duckdb failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        };
        Some((
            Duration::from_secs_f64(secs),
            std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
        ))
    });

    let per_m = |bytes: u64| format!("{:.1} MiB", bytes as f64 / 1048576.0 / (n as f64 / 1e6));
    println!("\n{n} events (90% usage, 10% decisions), 2 worker threads\n");
    println!("| | time | events/s | Parquet per 1M events |");
    println!("|---|---|---|---|");
    println!(
        "| tally ledger: log → committed Delta tables | {:.2?} | {} | {} |",
        tally_time,
        rate(n, tally_time),
        per_m(tally_bytes)
    );
    println!(
        "| bare arrow-rs Parquet write of the same batches | {:.2?} | {} | {} |",
        bare_time,
        rate(n, bare_time),
        per_m(bare_bytes)
    );
    match duck {
        Some((d, bytes)) => println!(
            "| DuckDB: JSON Lines → Parquet | {:.2?} | {} | {} |",
            d,
            rate(n, d),
            per_m(bytes)
        ),
        None => {
            println!("| DuckDB: JSON Lines → Parquet | did not run (its error is on stderr) | | |")
        }
    }
    println!(
        "\n(decode + Arrow conversion alone, untimed above for the bare writer: {:.2?}, {} events/s)",
        convert_time,
        rate(n, convert_time)
    );
    println!(
        "tally vs bare writer: {:.0}%",
        bare_time.as_secs_f64() / tally_time.as_secs_f64() * 100.0
    );
    println!(
        "tally: {} data commits, {} files in the current versions, {} compaction runs, {} checkpoints; bare: {} files",
        counters.data_commits,
        tally_files,
        counters.optimize_runs,
        counters.checkpoints,
        dir_bytes_count(&bare_dir)
    );
}
