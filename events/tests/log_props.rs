//! Crash properties of the segment log: after random appends (all acknowledged), a torn
//! last segment or a flipped byte anywhere must never surface a corrupted or reordered
//! record; reads give exactly a prefix of the acknowledged records, and a torn tail is
//! recovered so appends go on.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tally_events::log::{
    EventLog, FsyncPolicy, LogConfig, LogError, Position, Receipt, Record, SegmentLog,
};

const HEADER_LEN: u64 = 16;

fn config(segment_bytes: u64, always: bool) -> LogConfig {
    LogConfig {
        dir: None,
        fsync: if always {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Interval
        },
        fsync_interval_ms: 1,
        segment_bytes,
        max_record_bytes: 8 * 1024,
    }
}

/// Distinct contents for every (sequence, size).
fn payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seq.wrapping_mul(131) ^ j.wrapping_mul(7)) as u8)
        .collect()
}

/// An acknowledged record: where the log said it put it, and what it holds.
#[derive(Debug, Clone)]
struct Acked {
    position: Position,
    payload: Vec<u8>,
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Append records of the given sizes, wait for every receipt and close the log.
fn write_log(dir: &Path, sizes: &[usize], cfg: &LogConfig) -> Result<Vec<Acked>, TestCaseError> {
    let log = SegmentLog::open(dir, cfg).map_err(fail)?;
    let mut pending: Vec<(Receipt, Vec<u8>)> = Vec::new();
    for (seq, &len) in sizes.iter().enumerate() {
        let body = payload(seq, len);
        pending.push((log.append("tenant", &body).map_err(fail)?, body));
    }
    let mut acked = Vec::new();
    for (receipt, payload) in pending {
        let position = receipt.wait().map_err(fail)?;
        acked.push(Acked { position, payload });
    }
    log.close().map_err(fail)?;
    Ok(acked)
}

/// Read from `from` in batches of `max` until the end or the first error.
fn read_until_error(
    mut read: impl FnMut(Position, usize) -> Result<Vec<Record>, LogError>,
    max: usize,
) -> (Vec<Record>, Option<LogError>) {
    let mut out: Vec<Record> = Vec::new();
    let mut from = Position::START;
    loop {
        match read(from, max) {
            Ok(batch) if batch.is_empty() => return (out, None),
            Ok(batch) => {
                from = batch[batch.len() - 1].next;
                out.extend(batch);
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

/// `records` are exactly the first `records.len()` acknowledged records.
fn assert_prefix(records: &[Record], acked: &[Acked]) -> Result<(), TestCaseError> {
    prop_assert!(
        records.len() <= acked.len(),
        "{} records read, only {} appended",
        records.len(),
        acked.len()
    );
    for (i, (r, a)) in records.iter().zip(acked).enumerate() {
        prop_assert_eq!(r.position, a.position, "record {} position", i);
        prop_assert!(r.payload == a.payload, "record {} payload differs", i);
    }
    Ok(())
}

fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, TestCaseError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(fail)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    Ok(files)
}

fn segment_number(path: &Path) -> Result<u64, TestCaseError> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("bad segment name {}", path.display())))
}

fn arb_log() -> impl Strategy<Value = (Vec<usize>, u64, bool)> {
    (
        prop::collection::vec(prop_oneof![3 => 0usize..200, 1 => 0usize..4096], 1..40),
        prop_oneof![64u64..1024, 1024u64..16_384],
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// (a) A crash tore the last segment at an arbitrary byte: reopening succeeds, keeps
    /// exactly the records wholly before the cut, and appends continue after them.
    #[test]
    fn a_torn_last_segment_keeps_a_prefix_and_appends_continue(
        (sizes, segment_bytes, always) in arb_log(),
        cut in any::<Index>(),
        max in 1usize..16,
        more in prop::collection::vec(0usize..300, 1..4),
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let cfg = config(segment_bytes, always);
        let acked = write_log(dir.path(), &sizes, &cfg)?;

        let files = segment_files(dir.path())?;
        let last = files.last().ok_or_else(|| fail("no segment file"))?;
        let last_segment = segment_number(last)?;
        let len = fs::metadata(last).map_err(fail)?.len();
        let cut = cut.index(len as usize + 1) as u64;
        OpenOptions::new().write(true).open(last).and_then(|f| f.set_len(cut)).map_err(fail)?;

        let log = SegmentLog::open(dir.path(), &cfg).map_err(|e| fail(format!("reopen after cut at {cut}: {e}")))?;
        let (records, err) = read_until_error(|from, max| log.read(from, max), max);
        prop_assert!(err.is_none(), "read error after recovery: {:?}", err);
        assert_prefix(&records, &acked)?;
        let cut_at = Position::new(last_segment, cut);
        let survivors = acked.iter().filter(|a| a.position.segment < last_segment || a.position.offset + 12 + a.payload.len() as u64 <= cut).count();
        prop_assert_eq!(records.len(), survivors, "records wholly before the cut at {} must survive", cut_at);

        // Appends continue right after the survivors.
        let mut all: Vec<Acked> = acked[..survivors].to_vec();
        for (i, &len) in more.iter().enumerate() {
            let body = payload(10_000 + i, len);
            let position = log.append("tenant", &body).and_then(Receipt::wait).map_err(fail)?;
            all.push(Acked { position, payload: body });
        }
        if let Some(first_new) = all.get(survivors) {
            let expected = records.last().map_or(Position::new(last_segment, HEADER_LEN), |r| r.next);
            prop_assert!(
                first_new.position == expected || first_new.position == Position::new(expected.segment + 1, HEADER_LEN),
                "first append after recovery at {}, expected {}", first_new.position, expected
            );
        }
        let (records, err) = read_until_error(|from, max| log.read(from, max), max);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(records.len(), all.len());
        assert_prefix(&records, &all)?;
        drop(log);

        // And all of it survives another restart, for both readers.
        let log = SegmentLog::open(dir.path(), &cfg).map_err(fail)?;
        let (records, err) = read_until_error(|from, max| log.read(from, max), max);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(records.len(), all.len());
        assert_prefix(&records, &all)?;
        let (records, err) = read_until_error(|from, max| SegmentLog::read_dir(dir.path(), from, max), max);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(records.len(), all.len());
    }

    /// (b) A byte flipped anywhere: reads (in process, or with the standalone reader if the
    /// log refuses to open) never return a corrupted record, only a prefix; and the damage
    /// is reported unless it is indistinguishable from a torn tail.
    #[test]
    fn a_flipped_byte_never_surfaces_a_corrupted_record(
        (sizes, segment_bytes, always) in arb_log(),
        file_index in any::<Index>(),
        byte_index in any::<Index>(),
        flip in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().map_err(fail)?;
        let cfg = config(segment_bytes, always);
        let acked = write_log(dir.path(), &sizes, &cfg)?;

        let files = segment_files(dir.path())?;
        let path = file_index.get(&files);
        let segment = segment_number(path)?;
        let last_segment = segment_number(files.last().ok_or_else(|| fail("no segment file"))?)?;
        let mut bytes = fs::read(path).map_err(fail)?;
        let at = byte_index.index(bytes.len());
        bytes[at] ^= flip;
        fs::write(path, &bytes).map_err(fail)?;

        // What must happen: records before the damaged one survive; the damaged one (and
        // everything after) is never returned.
        let at = at as u64;
        let first_of_segment = acked.iter().position(|a| a.position.segment == segment);
        let damaged = if at < 9 {
            first_of_segment // magic or version: the whole segment is unreadable
        } else if at < HEADER_LEN {
            None // reserved header bytes: not covered by a checksum
        } else {
            acked.iter().position(|a| a.position.segment == segment && a.position.offset <= at && at < a.position.offset + 12 + a.payload.len() as u64)
        };
        let torn_tail = segment == last_segment && at >= HEADER_LEN && damaged == Some(acked.len() - 1);

        let (records, err) = match SegmentLog::open(dir.path(), &cfg) {
            Ok(log) => {
                prop_assert!(segment != last_segment || damaged.is_none() || torn_tail, "damage in the last segment at {} not reported by open", at);
                read_until_error(|from, max| log.read(from, max), 1)
            }
            Err(e @ LogError::Corrupt { .. }) => {
                prop_assert!(segment == last_segment && !torn_tail, "open refused undamaged/torn log: {}", e);
                read_until_error(|from, max| SegmentLog::read_dir(dir.path(), from, max), 1)
            }
            Err(e) => return Err(fail(format!("open failed with a non-corruption error: {e}"))),
        };
        assert_prefix(&records, &acked)?;
        match damaged {
            Some(index) => {
                prop_assert_eq!(records.len(), index, "records before the damaged one must be read: {:?}", err);
                if torn_tail {
                    prop_assert!(err.is_none(), "{:?}", err);
                } else {
                    prop_assert!(matches!(err, Some(LogError::Corrupt { .. })), "damage at {}:{} not reported: {:?}", segment, at, err);
                }
            }
            None => {
                prop_assert!(err.is_none(), "{:?}", err);
                prop_assert_eq!(records.len(), acked.len());
            }
        }
    }
}
