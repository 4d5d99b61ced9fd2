//! SIGKILL of a real writer process: every record it acknowledged (after its receipt
//! resolved under `fsync: always`) is readable after reopening, in order, and the log is a
//! contiguous prefix of what it appended.
//!
//! The writer is this test binary re-executed with `TALLY_LOG_KILL_CHILD=<dir>` running only
//! `kill_child_writer`, which does nothing in a normal test run.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_events::log::{EventLog, FsyncPolicy, LogConfig, Position, Record, SegmentLog};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHILD_ENV: &str = "TALLY_LOG_KILL_CHILD";
const ACK: &str = "TALLY-ACK ";

/// Record `seq`: its number, then filler of a size that varies with it.
fn payload(seq: u64) -> Vec<u8> {
    let mut out = seq.to_le_bytes().to_vec();
    out.extend((0..(seq * 37) % 700).map(|i| (seq ^ i) as u8));
    out
}

/// A small xorshift generator (no dependency needed for a few random numbers).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The writer process (only when re-executed by the parent): append in small batches,
/// printing each sequence number once its receipt has resolved.
#[test]
fn kill_child_writer() -> TestResult {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let log = SegmentLog::open(Path::new(&dir), &config)?;
    let mut rng = Rng::seeded();
    let mut stdout = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 0;
    while Instant::now() < deadline {
        let batch = 1 + rng.below(48);
        let receipts = (seq..seq + batch)
            .map(|s| log.append("tenant", &payload(s)))
            .collect::<Result<Vec<_>, _>>()?;
        for receipt in receipts {
            receipt.wait()?;
            writeln!(stdout, "{ACK}{seq}")?;
            stdout.flush()?;
            seq += 1;
        }
    }
    Ok(())
}

fn read_all(log: &dyn EventLog) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let mut from = Position::START;
    loop {
        let batch = log.read(from, 500)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        from = last.next;
        out.extend(batch);
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut rng = Rng::seeded();
    for round in 0..3 {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&exe)
            .args([
                "kill_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            // Only complete lines count: a line cut by the kill was not fully printed.
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n') {
                if let Some((_, n)) = line.trim_end().rsplit_once(ACK)
                    && let Ok(n) = n.parse::<u64>()
                    && tx.send(n).is_err()
                {
                    break;
                }
                line.clear();
            }
        });

        // Kill at a random moment once it is writing.
        let first = rx.recv_timeout(Duration::from_secs(20));
        if first.is_ok() {
            std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        }
        child.kill()?; // SIGKILL
        let status = child.wait()?;
        let _ = reader.join();
        let first = first.map_err(|_| "the writer process acknowledged nothing")?;
        let acked: Vec<u64> = std::iter::once(first).chain(rx.try_iter()).collect();
        assert!(
            !status.success(),
            "round {round}: the writer was not killed"
        );
        assert!(
            acked.iter().enumerate().all(|(i, &s)| s == i as u64),
            "round {round}: acknowledgements out of order"
        );

        let log = SegmentLog::open(dir.path(), &LogConfig::default())?;
        let records = read_all(&log)?;
        assert!(
            records.len() >= acked.len(),
            "round {round}: {} records after the kill, {} acknowledged",
            records.len(),
            acked.len()
        );
        for (seq, record) in records.iter().enumerate() {
            assert!(
                record.payload == payload(seq as u64),
                "round {round}: record {seq} at {} is not record {seq}",
                record.position
            );
        }
        assert_eq!(
            SegmentLog::read_dir(dir.path(), Position::START, usize::MAX)?.len(),
            records.len()
        );
        // The recovered log takes appends again.
        let next = log
            .append("tenant", &payload(records.len() as u64))?
            .wait()?;
        assert_eq!(read_all(&log)?.last().map(|r| r.position), Some(next));
        eprintln!(
            "round {round}: {} acknowledged, {} recovered, {} segments",
            acked.len(),
            records.len(),
            log.stats().segments
        );
    }
    Ok(())
}
