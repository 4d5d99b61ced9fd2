//! Fuzz target `segment_reader`: the local segment log (`tally_events::log::SegmentLog`)
//! reading segment files of arbitrary bytes. Input: byte 0 says how many segment files
//! (1 + bits 0-1, at most 3) and whether they are numbered from 0 or 7 (bit 2); each file
//! but the last is a u16 LE length then its bytes, the last file is the rest. The files
//! are written into an empty directory (on tmpfs when there is one); then the log is read
//! from another process's point of view (`read_dir`), opened (recovery), read, appended
//! to and closed. Every step must return a result, never panic; what an opened log reads
//! must be what `read_dir` read before, and a record appended must read back after it.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_events::log::{EventLog, FsyncPolicy, LogConfig, Position, SegmentLog};
use tally_fuzz::header;

/// Where to make the log directories: tmpfs when available (fsyncs cost nothing there).
static BASE: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
});

const MAX_RECORDS: usize = 100_000;

fn files(data: &[u8]) -> (u64, Vec<&[u8]>) {
    let ([flags], mut rest) = header::<1>(data);
    let count = 1 + usize::from(flags & 3).min(2);
    let first = if flags & 4 == 0 { 0 } else { 7 };
    let mut out = Vec::with_capacity(count);
    for _ in 1..count {
        let ([lo, hi], tail) = header::<2>(rest);
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    out.push(rest);
    (first, out)
}

fuzz_target!(|data: &[u8]| {
    let (first, contents) = files(data);
    let Ok(dir) = tempfile::Builder::new()
        .prefix("tally-fuzz-seg")
        .tempdir_in(&*BASE)
    else {
        return;
    };
    for (i, bytes) in contents.iter().enumerate() {
        let path = dir.path().join(format!("{:020}.seg", first + i as u64));
        std::fs::write(path, bytes).expect("writing a segment file");
    }

    let before = SegmentLog::read_dir(dir.path(), Position::START, MAX_RECORDS);
    if let Err(e) = &before {
        assert!(!e.code().is_empty() && !e.to_string().is_empty());
    }
    // A resume position inside the data, as a consumer would pass one.
    let _ = SegmentLog::read_dir(
        dir.path(),
        Position::new(first, 16 + data.len() as u64 % 256),
        8,
    );

    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    };
    let log = match SegmentLog::open(dir.path(), &config) {
        Ok(log) => log,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    let read = log.read(Position::START, MAX_RECORDS);
    if let (Ok(before), Ok(read)) = (&before, &read) {
        assert_eq!(
            before, read,
            "an opened log reads other records than read_dir"
        );
    }
    let _ = log.stats();
    let appended = log
        .append("fuzz", b"{}")
        .and_then(|receipt| receipt.wait())
        .expect("appending to an opened log");
    log.close().expect("closing the log");
    // A log that read whole before the append (both ways: `read` trusts the sealed
    // segments it skips over, `read_dir` checks every header) reads whole after it, the
    // new record last.
    if let (Ok(_), Ok(read)) = (before, read) {
        let after = SegmentLog::read_dir(dir.path(), Position::START, MAX_RECORDS)
            .expect("the log reads back after a clean close");
        let (last, earlier) = after.split_last().expect("the appended record reads back");
        assert_eq!(last.position, appended);
        assert_eq!(&last.payload[..], b"{}");
        assert_eq!(earlier, &read[..], "records changed across an append");
    }
});
