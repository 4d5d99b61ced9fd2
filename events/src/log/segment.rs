//! The local segment log: segment files and record framing, the group-commit writer
//! thread, torn-tail recovery on open, reading (in-process and from another process) and
//! retention. Must not interpret payloads, must not acknowledge a record before an fsync
//! covers it, and must not persist anything besides the segment files.
//!
//! Layout: `{segment:020}.seg` files in one directory. Each starts with a 16-byte header
//! (`TALLYSEG`, format version, 7 reserved bytes) followed by frames
//! `len: u32 LE | header_crc: u32 LE (crc32c of len) | payload_crc: u32 LE | payload`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::receipt::Watermark;
use super::{EventLog, FsyncPolicy, LogConfig, LogError, Position, Receipt, Record, Span};

/// First bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"TALLYSEG";
/// Segment format version written after the magic.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Bytes of the segment header; the first record of a segment starts here.
pub(crate) const HEADER_LEN: u64 = 16;
/// Bytes of a frame header (len, header crc, payload crc).
pub(crate) const FRAME_HEADER_LEN: usize = 12;

/// In interval mode, buffered bytes past this are written (not fsynced) at once, so the
/// writer streams to the page cache instead of writing one large burst per interval.
const EARLY_WRITE_BYTES: usize = 1 << 20;
/// Append buffers kept for reuse, and the largest one kept.
const POOLED_BUFFERS: usize = 4;
const POOLED_BUFFER_MAX: usize = 16 << 20;
/// How long `close`/`Drop` wait for the writer to flush before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters of a [`SegmentLog`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LogStats {
    /// Segment files in the log directory.
    pub segments: u64,
    /// Bytes of all segment files written so far (headers included).
    pub bytes: u64,
    /// The position after the last durable record.
    pub durable_end: Position,
    /// Records appended since open.
    pub appended: u64,
    /// fsyncs of segment files since open.
    pub fsyncs: u64,
}

/// The embedded durable log: append-only segment files in one directory, written by a
/// dedicated group-commit thread. `Send + Sync`; usable as `Arc<dyn EventLog>`.
pub struct SegmentLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.shared.dir)
            .field("fsync", &self.shared.policy)
            .field("durable_end", &self.shared.mark.durable())
            .finish_non_exhaustive()
    }
}

/// State shared by the log handle, the writer thread and readers.
struct Shared {
    dir: PathBuf,
    /// The open directory: holds the exclusive lock and is fsynced after file creation.
    dir_file: File,
    policy: FsyncPolicy,
    interval: Duration,
    segment_bytes: u64,
    max_record_bytes: u32,
    state: Mutex<AppendState>,
    /// Wakes the writer.
    work: Condvar,
    mark: Arc<Watermark>,
    /// Segment number -> bytes written to its file (final length once sealed).
    segments: Mutex<BTreeMap<u64, u64>>,
    fsyncs: AtomicU64,
    writer_done: Mutex<bool>,
    writer_done_cond: Condvar,
}

/// Appended but not yet written records, and the logical end of the log.
struct AppendState {
    /// Where the next record goes.
    next: Position,
    /// Framed records waiting for the writer, in order; one chunk per segment.
    chunks: Vec<Chunk>,
    /// Cleared buffers for reuse.
    free: Vec<Vec<u8>>,
    /// Bytes in `chunks`.
    pending_bytes: usize,
    /// Why appends are refused (closed or writer stopped).
    closed: Option<String>,
    /// Why the writer stopped, if it failed.
    failure: Option<String>,
    /// The writer should flush everything and stop.
    shutdown: bool,
    appended: u64,
}

/// Consecutive framed records of one segment, starting at `start` in its file.
struct Chunk {
    segment: u64,
    start: u64,
    buf: Vec<u8>,
}

impl SegmentLog {
    /// Open (or create) the log in `dir`: recover the last segment (truncating a torn
    /// tail, refusing mid-file corruption) and start the writer thread. `config.dir` is
    /// ignored; the caller resolves the directory. Fails if another `SegmentLog` (in this
    /// or another process) has the directory open.
    pub fn open(dir: &Path, config: &LogConfig) -> Result<SegmentLog, LogError> {
        fs::create_dir_all(dir)
            .map_err(|e| LogError::io(format!("creating log directory {}", dir.display()), e))?;
        let dir_file = File::open(dir)
            .map_err(|e| LogError::io(format!("opening log directory {}", dir.display()), e))?;
        match dir_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LogError::io(
                    format!("locking log directory {}", dir.display()),
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "another SegmentLog has this directory open",
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(LogError::io(
                    format!("locking log directory {}", dir.display()),
                    e,
                ));
            }
        }

        let files = list_segments(dir)?;
        check_contiguous(dir, &files)?;
        let mut segments = BTreeMap::new();
        let (last, len) = match files.last_key_value() {
            None => {
                create_segment(dir, 0)?
                    .sync_all()
                    .map_err(|e| LogError::io("fsyncing new segment", e))?;
                sync_dir(&dir_file, dir)?;
                (0, HEADER_LEN)
            }
            Some((&last, last_path)) => {
                for (&segment, path) in files.range(..last) {
                    let len = fs::metadata(path)
                        .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?
                        .len();
                    segments.insert(segment, len);
                }
                (last, recover_last(last_path, last)?)
            }
        };
        segments.insert(last, len);

        let path = segment_path(dir, last);
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        file.seek(SeekFrom::Start(len))
            .map_err(|e| LogError::io(format!("seeking {}", path.display()), e))?;

        let end = Position::new(last, len);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            dir_file,
            policy: config.fsync,
            interval: Duration::from_millis(config.fsync_interval_ms),
            segment_bytes: config.segment_bytes,
            max_record_bytes: config.max_record_bytes,
            state: Mutex::new(AppendState {
                next: end,
                chunks: Vec::new(),
                free: Vec::new(),
                pending_bytes: 0,
                closed: None,
                failure: None,
                shutdown: false,
                appended: 0,
            }),
            work: Condvar::new(),
            mark: Arc::new(Watermark::new(end)),
            segments: Mutex::new(segments),
            fsyncs: AtomicU64::new(0),
            writer_done: Mutex::new(false),
            writer_done_cond: Condvar::new(),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            file,
            segment: last,
            written: len,
            unsynced: false,
        };
        let handle = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("starting the log writer thread", e))?;
        Ok(SegmentLog {
            shared,
            writer: Some(handle),
        })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters and sizes.
    pub fn stats(&self) -> LogStats {
        let durable_end = self.shared.mark.durable();
        let appended = self.shared.state.lock().appended;
        let (segments, bytes) = {
            let map = self.shared.segments.lock();
            (map.len() as u64, map.values().sum())
        };
        LogStats {
            segments,
            bytes,
            durable_end,
            appended,
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// Flush and fsync everything appended, then stop the writer. Fails if some appended
    /// record could not be made durable.
    pub fn close(mut self) -> Result<(), LogError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), LogError> {
        {
            let mut state = self.shared.state.lock();
            state.shutdown = true;
            if state.closed.is_none() {
                state.closed = Some("the log is closed".into());
            }
        }
        self.shared.work.notify_all();
        let Some(handle) = self.writer.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let finished = {
            let mut done = self.shared.writer_done.lock();
            while !*done {
                if self
                    .shared
                    .writer_done_cond
                    .wait_until(&mut done, deadline)
                    .timed_out()
                {
                    break;
                }
            }
            *done
        };
        if !finished {
            // Leave the stuck thread behind rather than hang; nothing more is acknowledged.
            let reason = format!("the log writer did not finish within {STOP_TIMEOUT:?}");
            tracing::error!(dir = %self.shared.dir.display(), "{reason}");
            self.shared.mark.stop(&reason);
            return Err(LogError::Closed(reason));
        }
        if handle.join().is_err() {
            return Err(LogError::Closed("the log writer thread panicked".into()));
        }
        let state = self.shared.state.lock();
        if let Some(failure) = &state.failure {
            return Err(LogError::Closed(failure.clone()));
        }
        let durable = self.shared.mark.durable();
        if durable < state.next {
            return Err(LogError::Closed(format!(
                "records from {durable} to {} were not made durable",
                state.next
            )));
        }
        Ok(())
    }

    /// Read up to `max` records from the log in `dir` without opening it for writing:
    /// usable from another process while a writer appends. Stops without error at an
    /// incomplete tail of the last segment (it may be mid-write) but reports corruption
    /// followed by valid records as [`LogError::Corrupt`].
    pub fn read_dir(dir: &Path, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        let files = list_segments(dir)?;
        let mut out = Vec::new();
        let (Some((&oldest, _)), Some((&last, _))) =
            (files.first_key_value(), files.last_key_value())
        else {
            return if from == Position::START {
                Ok(out)
            } else {
                Err(LogError::BadPosition(from))
            };
        };
        let mut pos = resolve_from(from, oldest)?;
        if pos.segment > last {
            return Err(LogError::BadPosition(from));
        }
        let mut first = true;
        while out.len() < max {
            let Some(path) = files.get(&pos.segment) else {
                if first {
                    return Err(LogError::BadPosition(from));
                }
                return Err(LogError::Corrupt {
                    file: segment_path(dir, pos.segment),
                    position: Position::new(pos.segment, 0),
                    detail: "segment file is missing between existing segments".into(),
                });
            };
            let tail = pos.segment == last;
            read_segment(path, pos, None, tail, max, &mut out)?;
            if tail {
                break;
            }
            first = false;
            pos = Position::new(pos.segment + 1, HEADER_LEN);
        }
        Ok(out)
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "closing the event log");
        }
    }
}

impl EventLog for SegmentLog {
    fn append(&self, _key: &str, payload: &[u8]) -> Result<Receipt, LogError> {
        let shared = &*self.shared;
        if payload.len() > shared.max_record_bytes as usize {
            return Err(LogError::RecordTooLarge {
                size: payload.len(),
                max: shared.max_record_bytes,
            });
        }
        // Checksums outside the lock.
        let header = frame_header(payload);
        let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;

        let mut guard = shared.state.lock();
        let state = &mut *guard;
        if let Some(reason) = &state.closed {
            return Err(LogError::Closed(reason.clone()));
        }
        if state.next.offset > HEADER_LEN && state.next.offset + frame_len > shared.segment_bytes {
            state.next = Position::new(state.next.segment + 1, HEADER_LEN);
        }
        let position = state.next;
        let chunk = match state.chunks.last_mut() {
            Some(chunk) if chunk.segment == position.segment => chunk,
            _ => {
                let buf = state.free.pop().unwrap_or_default();
                state.chunks.push(Chunk {
                    segment: position.segment,
                    start: position.offset,
                    buf,
                });
                let last = state.chunks.len() - 1;
                &mut state.chunks[last]
            }
        };
        chunk.buf.extend_from_slice(&header);
        chunk.buf.extend_from_slice(payload);
        state.next.offset += frame_len;
        state.appended += 1;
        let before = state.pending_bytes;
        state.pending_bytes += frame_len as usize;
        // The writer only sleeps with nothing pending, so the first append after it took
        // the pending chunks is the one that must wake it (and, in interval mode, the one
        // that crosses the early-write size).
        let wake = before == 0
            || (shared.policy == FsyncPolicy::Interval
                && before < EARLY_WRITE_BYTES
                && state.pending_bytes >= EARLY_WRITE_BYTES);
        drop(guard);
        if wake {
            shared.work.notify_one();
        }
        Ok(Receipt::pending(position, Arc::clone(&shared.mark)))
    }

    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        let shared = &*self.shared;
        // Watermark first: every segment below it is sealed with its final length recorded.
        let durable = shared.mark.durable();
        let oldest = shared
            .segments
            .lock()
            .first_key_value()
            .map_or(durable.segment, |(&s, _)| s);
        let mut pos = resolve_from(from, oldest)?;
        if pos > durable {
            return Err(LogError::BadPosition(from));
        }
        let mut out = Vec::new();
        while out.len() < max && pos < durable {
            let limit = if pos.segment < durable.segment {
                match shared.segments.lock().get(&pos.segment) {
                    Some(&len) => len,
                    None if out.is_empty() => return Err(LogError::BadPosition(pos)),
                    None => break, // deleted by a concurrent checkpoint
                }
            } else {
                durable.offset
            };
            if pos.offset > limit {
                return Err(LogError::BadPosition(pos));
            }
            if pos.offset == limit {
                pos = Position::new(pos.segment + 1, HEADER_LEN);
                continue;
            }
            let path = segment_path(&shared.dir, pos.segment);
            let end = read_segment(&path, pos, Some(limit), false, max, &mut out)?;
            pos = Position::new(pos.segment, end);
        }
        Ok(out)
    }

    fn checkpoint(&self, upto: Position) -> Result<(), LogError> {
        let shared = &*self.shared;
        // Segments below the durable end's segment are sealed: never the active one.
        let below = upto.segment.min(shared.mark.durable().segment);
        let doomed: Vec<u64> = {
            let mut map = shared.segments.lock();
            let doomed: Vec<u64> = map.range(..below).map(|(&s, _)| s).collect();
            for s in &doomed {
                map.remove(s);
            }
            doomed
        };
        for &segment in &doomed {
            let path = segment_path(&shared.dir, segment);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(format!("deleting {}", path.display()), e)),
            }
        }
        if !doomed.is_empty() {
            sync_dir(&shared.dir_file, &shared.dir)?;
            tracing::debug!(
                dir = %shared.dir.display(),
                deleted = doomed.len(),
                upto = %upto,
                "event log retention deleted segments"
            );
        }
        Ok(())
    }

    fn durable_end(&self) -> Position {
        self.shared.mark.durable()
    }

    fn span(&self, from: Position, to: Position) -> Option<Span> {
        if to <= from {
            return Some(Span::Bytes(0));
        }
        // Segments gone (reclaimed) count nothing; the last counts up to `to`.
        let segments = self.shared.segments.lock();
        let bytes = segments
            .range(from.segment..=to.segment)
            .map(|(&segment, &len)| {
                let start = if segment == from.segment {
                    from.offset.max(HEADER_LEN)
                } else {
                    HEADER_LEN
                };
                let end = if segment == to.segment {
                    to.offset
                } else {
                    len
                };
                end.saturating_sub(start)
            })
            .sum();
        Some(Span::Bytes(bytes))
    }
}

/// The writer thread's state: owns the active segment file.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    segment: u64,
    /// Bytes in the active file.
    written: u64,
    /// Whether the active file has writes (or a new header) not yet fsynced.
    unsynced: bool,
}

/// Marks the writer stopped however it exits (error, shutdown or panic), so no receipt
/// waits forever and no append is accepted that nobody will write.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let shared = &*self.0;
        let reason = {
            let mut state = shared.state.lock();
            state.chunks.clear();
            state.pending_bytes = 0;
            let reason = state
                .failure
                .clone()
                .unwrap_or_else(|| "the log is closed".into());
            if state.closed.is_none() {
                state.closed = Some(reason.clone());
            }
            reason
        };
        shared.mark.stop(&reason);
        *shared.writer_done.lock() = true;
        shared.writer_done_cond.notify_all();
    }
}

impl Writer {
    fn run(mut self) {
        let _guard = ExitGuard(Arc::clone(&self.shared));
        let continuous =
            self.shared.policy == FsyncPolicy::Always || self.shared.interval.is_zero();
        let mut next_sync = Instant::now();
        let mut taken: Vec<Chunk> = Vec::new();
        let mut emptied: Vec<Vec<u8>> = Vec::new();
        loop {
            let shutdown = {
                let shared = &*self.shared;
                let mut state = shared.state.lock();
                for buf in emptied.drain(..) {
                    if state.free.len() < POOLED_BUFFERS && buf.capacity() <= POOLED_BUFFER_MAX {
                        state.free.push(buf);
                    }
                }
                loop {
                    if state.shutdown || (continuous && !state.chunks.is_empty()) {
                        break;
                    }
                    if state.chunks.is_empty() && !self.unsynced {
                        shared.work.wait(&mut state);
                        continue;
                    }
                    if continuous
                        || state.pending_bytes >= EARLY_WRITE_BYTES
                        || Instant::now() >= next_sync
                    {
                        break;
                    }
                    shared.work.wait_until(&mut state, next_sync);
                }
                std::mem::swap(&mut taken, &mut state.chunks);
                state.pending_bytes = 0;
                state.shutdown
            };

            let sync_start = Instant::now();
            let sync_due = continuous || shutdown || sync_start >= next_sync;
            let mut result = self.write(&taken);
            if result.is_ok() && sync_due && self.unsynced {
                result = self.sync();
            }
            if let Err(e) = result {
                let reason = e.to_string();
                tracing::error!(
                    dir = %self.shared.dir.display(),
                    error = %reason,
                    "event log writer failed; refusing further appends"
                );
                self.shared.state.lock().failure = Some(reason);
                return;
            }
            if sync_due {
                next_sync = sync_start + self.shared.interval;
            }
            emptied.extend(taken.drain(..).map(|mut chunk| {
                chunk.buf.clear();
                chunk.buf
            }));
            if shutdown {
                return;
            }
        }
    }

    fn write(&mut self, chunks: &[Chunk]) -> Result<(), LogError> {
        for chunk in chunks {
            if chunk.segment != self.segment {
                self.rotate(chunk.segment)?;
            }
            if chunk.start != self.written {
                return Err(LogError::Closed(format!(
                    "internal error: chunk for {}:{} but segment file is at {}",
                    chunk.segment, chunk.start, self.written
                )));
            }
            self.file
                .write_all(&chunk.buf)
                .map_err(|e| self.io_error("writing", e))?;
            self.written += chunk.buf.len() as u64;
            self.unsynced = true;
            self.shared
                .segments
                .lock()
                .insert(self.segment, self.written);
        }
        Ok(())
    }

    /// fsync the active file and advance the watermark to its end.
    fn sync(&mut self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("fsyncing", e))?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.unsynced = false;
        self.shared
            .mark
            .advance(Position::new(self.segment, self.written));
        Ok(())
    }

    /// Seal the active segment (fsync) and start `segment` (create, header, fsync dir).
    fn rotate(&mut self, segment: u64) -> Result<(), LogError> {
        if segment != self.segment + 1 {
            return Err(LogError::Closed(format!(
                "internal error: rotating from segment {} to {segment}",
                self.segment
            )));
        }
        if self.unsynced {
            self.sync()?;
        }
        let file = create_segment(&self.shared.dir, segment)?;
        sync_dir(&self.shared.dir_file, &self.shared.dir)?;
        self.file = file;
        self.segment = segment;
        self.written = HEADER_LEN;
        self.unsynced = true;
        self.shared.segments.lock().insert(segment, HEADER_LEN);
        Ok(())
    }

    fn io_error(&self, what: &str, e: io::Error) -> LogError {
        LogError::io(
            format!(
                "{what} {}",
                segment_path(&self.shared.dir, self.segment).display()
            ),
            e,
        )
    }
}

/// The 12-byte frame header of `payload`.
pub(crate) fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let len = (payload.len() as u32).to_le_bytes();
    let header_crc = crc32c::crc32c(&len).to_le_bytes();
    let payload_crc = crc32c::crc32c(payload).to_le_bytes();
    let mut out = [0; FRAME_HEADER_LEN];
    out[0..4].copy_from_slice(&len);
    out[4..8].copy_from_slice(&header_crc);
    out[8..12].copy_from_slice(&payload_crc);
    out
}

/// A frame header whose header checksum checks out: the payload length and checksum.
fn parse_frame_header(bytes: &[u8; FRAME_HEADER_LEN]) -> Option<(u64, u32)> {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (crc32c::crc32c(&bytes[0..4]) == word(4)).then_some((u64::from(word(0)), word(8)))
}

/// Check the frame at `off` of `data`: its total length, or why it is invalid.
fn check_frame(data: &[u8], off: usize) -> Result<usize, &'static str> {
    let Some(header) = data.get(off..off + FRAME_HEADER_LEN) else {
        return Err("incomplete frame header");
    };
    let mut bytes = [0; FRAME_HEADER_LEN];
    bytes.copy_from_slice(header);
    let Some((len, payload_crc)) = parse_frame_header(&bytes) else {
        return Err(if bytes.iter().all(|&b| b == 0) {
            "zero-filled bytes"
        } else {
            "bad header checksum"
        });
    };
    let start = off + FRAME_HEADER_LEN;
    let Some(payload) = usize::try_from(len)
        .ok()
        .and_then(|len| data.get(start..start.checked_add(len)?))
    else {
        return Err("length past end of file");
    };
    if crc32c::crc32c(payload) != payload_crc {
        return Err("bad payload checksum");
    }
    Ok(FRAME_HEADER_LEN + payload.len())
}

/// The first offset at or after `from` where a complete, valid frame starts.
fn find_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(FRAME_HEADER_LEN - 1))
        .find(|&off| check_frame(data, off).is_ok())
}

fn segment_header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0; HEADER_LEN as usize];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()] = FORMAT_VERSION;
    header
}

/// Why a complete segment header is not ours.
fn check_header(header: &[u8]) -> Result<(), &'static str> {
    if header.len() < HEADER_LEN as usize {
        return Err("segment header is incomplete");
    }
    if &header[..MAGIC.len()] != MAGIC {
        return Err("not a tally segment file (bad magic)");
    }
    if header[MAGIC.len()] != FORMAT_VERSION {
        return Err("unsupported segment format version");
    }
    Ok(())
}

/// A segment whose creation was interrupted: empty, a prefix of a header, or all zeros.
fn is_torn_creation(data: &[u8]) -> bool {
    let header = segment_header();
    data.iter().all(|&b| b == 0) || (data.len() < header.len() && data == &header[..data.len()])
}

pub(crate) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files of `dir`, by number. Other files are ignored.
fn list_segments(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, LogError> {
    let context = || format!("listing log directory {}", dir.display());
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(context(), e))? {
        let entry = entry.map_err(|e| LogError::io(context(), e))?;
        if let Some(segment) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.insert(segment, entry.path());
        }
    }
    Ok(out)
}

/// Retention only deletes from the front: a hole means a lost file.
fn check_contiguous(dir: &Path, files: &BTreeMap<u64, PathBuf>) -> Result<(), LogError> {
    let mut expected = None;
    for &segment in files.keys() {
        if let Some(expected) = expected
            && segment != expected
        {
            return Err(LogError::Corrupt {
                file: segment_path(dir, expected),
                position: Position::new(expected, 0),
                detail: format!("segment file is missing (next existing segment is {segment})"),
            });
        }
        expected = Some(segment + 1);
    }
    Ok(())
}

/// Create segment file `segment` with its header (not fsynced).
fn create_segment(dir: &Path, segment: u64) -> Result<File, LogError> {
    let path = segment_path(dir, segment);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| LogError::io(format!("creating {}", path.display()), e))?;
    file.write_all(&segment_header())
        .map_err(|e| LogError::io(format!("writing {}", path.display()), e))?;
    Ok(file)
}

fn sync_dir(dir_file: &File, dir: &Path) -> Result<(), LogError> {
    dir_file
        .sync_all()
        .map_err(|e| LogError::io(format!("fsyncing log directory {}", dir.display()), e))
}

/// Scan the last segment fully: truncate a torn tail (an invalid frame with no valid frame
/// anywhere after it) and return the length of the valid data; refuse corruption followed
/// by valid frames.
fn recover_last(path: &Path, segment: u64) -> Result<u64, LogError> {
    let data =
        fs::read(path).map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
    let corrupt = |offset: usize, detail: String| LogError::Corrupt {
        file: path.to_path_buf(),
        position: Position::new(segment, offset as u64),
        detail,
    };
    if is_torn_creation(&data) {
        if data.len() != HEADER_LEN as usize || data != segment_header() {
            tracing::warn!(
                file = %path.display(),
                bytes = data.len(),
                "event log: rewriting the header of a segment whose creation was interrupted"
            );
            let mut file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
            file.write_all(&segment_header())
                .and_then(|()| file.sync_all())
                .map_err(|e| LogError::io(format!("rewriting {}", path.display()), e))?;
        }
        return Ok(HEADER_LEN);
    }
    check_header(&data).map_err(|detail| corrupt(0, detail.into()))?;
    let mut off = HEADER_LEN as usize;
    while off < data.len() {
        match check_frame(&data, off) {
            Ok(len) => off += len,
            Err(detail) => {
                if let Some(valid) = find_valid_frame(&data, off + 1) {
                    return Err(corrupt(
                        off,
                        format!("{detail}; a valid record follows at offset {valid}"),
                    ));
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
                file.set_len(off as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| LogError::io(format!("truncating {}", path.display()), e))?;
                tracing::warn!(
                    file = %path.display(),
                    offset = off,
                    dropped_bytes = data.len() - off,
                    reason = detail,
                    "event log: truncated a torn tail (an incomplete write at the end of the last segment)"
                );
                return Ok(off as u64);
            }
        }
    }
    Ok(off as u64)
}

/// Bytes read from a segment file at a time.
const READ_BLOCK: usize = 256 * 1024;

/// The frames of a segment file, read block by block up to a limit: the payloads cut
/// from a block share its buffer (one allocation and one copy per block, not per
/// record).
struct Frames {
    file: File,
    /// Read but not yet cut into frames.
    block: Bytes,
    /// Bytes of the file still to read before the limit.
    unread: u64,
}

impl Frames {
    /// At least `n` bytes in `block`, or what is left before the limit.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.block.len() >= n || self.unread == 0 {
            return Ok(());
        }
        let want = ((n - self.block.len()).max(READ_BLOCK) as u64).min(self.unread);
        let mut buf = Vec::with_capacity(self.block.len() + want as usize);
        buf.extend_from_slice(&self.block);
        // Into spare capacity: no zero-filling of a buffer about to be overwritten.
        let got = (&mut self.file).take(want).read_to_end(&mut buf)?;
        if (got as u64) < want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.unread -= want;
        self.block = Bytes::from(buf);
        Ok(())
    }

    /// The next frame's payload, with `remaining` bytes before the limit, or why the
    /// frame is invalid.
    fn next(&mut self, remaining: u64) -> io::Result<Result<Bytes, &'static str>> {
        if remaining < FRAME_HEADER_LEN as u64 {
            return Ok(Err("incomplete frame header"));
        }
        self.fill(FRAME_HEADER_LEN)?;
        let header: [u8; FRAME_HEADER_LEN] = self
            .block
            .get(..FRAME_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let Some((len, payload_crc)) = parse_frame_header(&header) else {
            return Ok(Err(if header.iter().all(|&b| b == 0) {
                "zero-filled bytes"
            } else {
                "bad header checksum"
            }));
        };
        if FRAME_HEADER_LEN as u64 + len > remaining {
            return Ok(Err("length past end of file"));
        }
        let total = FRAME_HEADER_LEN + len as usize;
        self.fill(total)?;
        if self.block.len() < total {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let payload = self.block.split_to(total).slice(FRAME_HEADER_LEN..);
        if crc32c::crc32c(&payload) != payload_crc {
            return Ok(Err("bad payload checksum"));
        }
        Ok(Ok(payload))
    }
}

/// Map `from` to a concrete record position: `START` is the oldest segment's first record,
/// offset 0 a segment's first record.
fn resolve_from(from: Position, oldest: u64) -> Result<Position, LogError> {
    if from == Position::START {
        return Ok(Position::new(oldest, HEADER_LEN));
    }
    if from.segment < oldest || (from.offset > 0 && from.offset < HEADER_LEN) {
        return Err(LogError::BadPosition(from));
    }
    Ok(Position::new(from.segment, from.offset.max(HEADER_LEN)))
}

/// Read records of one segment file from `from` into `out` until `max` records, `limit`
/// bytes (default: the file's length) or the end. With `tolerant_tail` (the last segment
/// of a log possibly being written) an invalid frame with no valid frame after it ends the
/// read quietly; otherwise any invalid frame is [`LogError::Corrupt`]. Returns the offset
/// reached.
fn read_segment(
    path: &Path,
    from: Position,
    limit: Option<u64>,
    tolerant_tail: bool,
    max: usize,
    out: &mut Vec<Record>,
) -> Result<u64, LogError> {
    let io_err = |e: io::Error| LogError::io(format!("reading {}", path.display()), e);
    let corrupt = |offset: u64, detail: String| LogError::Corrupt {
        file: path.to_path_buf(),
        position: Position::new(from.segment, offset),
        detail,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LogError::BadPosition(from)),
        Err(e) => return Err(io_err(e)),
    };
    let file_len = file.metadata().map_err(io_err)?.len();
    let limit = match limit {
        Some(limit) if limit > file_len => {
            return Err(corrupt(
                file_len,
                format!("file is {file_len} bytes, shorter than its {limit} written bytes"),
            ));
        }
        Some(limit) => limit,
        None => file_len,
    };

    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    (&mut file)
        .take(HEADER_LEN)
        .read_to_end(&mut header)
        .map_err(io_err)?;
    if let Err(detail) = check_header(&header) {
        if tolerant_tail && is_torn_creation(&header) {
            return Ok(from.offset); // being created
        }
        return Err(corrupt(0, detail.into()));
    }
    if from.offset > limit {
        return Err(LogError::BadPosition(from));
    }

    file.seek(SeekFrom::Start(from.offset)).map_err(io_err)?;
    let mut frames = Frames {
        file,
        block: Bytes::new(),
        unread: limit - from.offset,
    };
    let mut off = from.offset;
    while out.len() < max && off < limit {
        let invalid = match frames.next(limit - off).map_err(io_err)? {
            Ok(payload) => {
                let next = off + (FRAME_HEADER_LEN + payload.len()) as u64;
                out.push(Record {
                    position: Position::new(from.segment, off),
                    next: Position::new(from.segment, next),
                    payload,
                });
                off = next;
                continue;
            }
            Err(invalid) => invalid,
        };
        if tolerant_tail {
            let mut file = frames.file;
            file.seek(SeekFrom::Start(off)).map_err(io_err)?;
            let mut rest = Vec::new();
            file.take(limit - off)
                .read_to_end(&mut rest)
                .map_err(io_err)?;
            if let Some(valid) = find_valid_frame(&rest, 1) {
                return Err(corrupt(
                    off,
                    format!(
                        "{invalid}; a valid record follows at offset {}",
                        off + valid as u64
                    ),
                ));
            }
            return Ok(off); // an incomplete tail, possibly being written
        }
        return Err(corrupt(
            off,
            format!("{invalid} (below the durable end of the log)"),
        ));
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn config(fsync: FsyncPolicy, segment_bytes: u64) -> LogConfig {
        LogConfig {
            dir: None,
            fsync,
            fsync_interval_ms: 1,
            segment_bytes,
            max_record_bytes: 64 * 1024,
        }
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
    }

    /// Append `n` records of `len` bytes and wait for all of them.
    fn fill(log: &SegmentLog, n: usize, len: usize) -> Result<Vec<Position>, LogError> {
        let receipts = (0..n)
            .map(|i| log.append("t", &payload(i, len)))
            .collect::<Result<Vec<_>, _>>()?;
        receipts.into_iter().map(Receipt::wait).collect()
    }

    fn read_all(log: &dyn EventLog, max: usize) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        let mut from = Position::START;
        loop {
            let batch = log.read(from, max)?;
            let Some(last) = batch.last() else {
                return Ok(out);
            };
            from = last.next;
            out.extend(batch);
        }
    }

    fn seg_files(dir: &Path) -> Result<Vec<u64>, LogError> {
        Ok(list_segments(dir)?.into_keys().collect())
    }

    #[test]
    fn frames_round_trip_and_corruption_is_detected() {
        let payload = b"hello, ledger".to_vec();
        let mut data = frame_header(&payload).to_vec();
        data.extend_from_slice(&payload);
        assert_eq!(check_frame(&data, 0), Ok(FRAME_HEADER_LEN + payload.len()));
        assert_eq!(
            u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            payload.len() as u32
        );

        let mut bad_len = data.clone();
        bad_len[0] ^= 0x01;
        assert_eq!(check_frame(&bad_len, 0), Err("bad header checksum"));
        let mut bad_payload = data.clone();
        bad_payload[FRAME_HEADER_LEN + 3] ^= 0x40;
        assert_eq!(check_frame(&bad_payload, 0), Err("bad payload checksum"));
        assert_eq!(
            check_frame(&data[..data.len() - 1], 0),
            Err("length past end of file")
        );
        assert_eq!(check_frame(&data[..5], 0), Err("incomplete frame header"));
        assert_eq!(check_frame(&[0; 40], 0), Err("zero-filled bytes"));

        // An empty payload is a valid frame; the scan finds frames after garbage.
        let mut two = vec![0xAB; 5];
        two.extend_from_slice(&frame_header(b""));
        assert_eq!(find_valid_frame(&two, 0), Some(5));
        assert_eq!(find_valid_frame(&[0; 64], 0), None);
    }

    #[test]
    fn appends_are_read_back_in_order_with_positions() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        assert_eq!(log.durable_end(), Position::new(0, HEADER_LEN));
        assert!(log.read(Position::START, 10)?.is_empty());
        let positions = fill(&log, 20, 100)?;
        assert_eq!(positions[0], Position::new(0, HEADER_LEN));
        assert_eq!(positions[1], Position::new(0, HEADER_LEN + 112));
        assert_eq!(log.durable_end(), Position::new(0, HEADER_LEN + 20 * 112));

        let records = read_all(&log, 7)?;
        assert_eq!(records.len(), 20);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.position, positions[i]);
            assert_eq!(r.payload, payload(i, 100));
            assert_eq!(r.next.offset, r.position.offset + 112);
        }
        let stats = log.stats();
        assert_eq!(stats.appended, 20);
        assert_eq!(stats.segments, 1);
        assert_eq!(stats.bytes, HEADER_LEN + 20 * 112);
        assert!(stats.fsyncs >= 1);

        // The bytes on disk are exactly header + frames.
        log.close()?;
        let bytes = fs::read(segment_path(dir.path(), 0))?;
        assert_eq!(&bytes[..8], b"TALLYSEG");
        assert_eq!(bytes[8], FORMAT_VERSION);
        assert_eq!(bytes.len() as u64, HEADER_LEN + 20 * 112);
        assert_eq!(check_frame(&bytes, HEADER_LEN as usize), Ok(112));
        Ok(())
    }

    #[test]
    fn segments_rotate_and_reads_follow_them() -> TestResult {
        let dir = tempfile::tempdir()?;
        // 16 + 3 * 112 = 352: three 100-byte records per segment.
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Interval, 352))?;
        let positions = fill(&log, 10, 100)?;
        let segments: Vec<u64> = positions.iter().map(|p| p.segment).collect();
        assert_eq!(segments, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(positions[3], Position::new(1, HEADER_LEN));
        // An oversized record goes alone into a fresh segment, then rotation goes on.
        let big = log.append("t", &payload(99, 1000))?.wait()?;
        assert_eq!(big, Position::new(4, HEADER_LEN));
        let after = log.append("t", &payload(100, 10))?.wait()?;
        assert_eq!(after, Position::new(5, HEADER_LEN));
        assert_eq!(seg_files(dir.path())?, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(fs::metadata(segment_path(dir.path(), 0))?.len(), 352);

        for max in [1, 2, 5, 100] {
            let records = read_all(&log, max)?;
            assert_eq!(records.len(), 12, "max {max}");
            for (i, r) in records.iter().take(10).enumerate() {
                assert_eq!(
                    (r.position, &r.payload[..]),
                    (positions[i], &payload(i, 100)[..])
                );
            }
            assert_eq!(records[10].payload.len(), 1000);
        }
        // The end of a sealed segment continues at the next one.
        let at_end = log.read(Position::new(0, 352), 1)?;
        assert_eq!(at_end[0].position, Position::new(1, HEADER_LEN));
        // Offset 0 of a segment means its first record.
        assert_eq!(
            log.read(Position::new(2, 0), 1)?[0].position,
            Position::new(2, HEADER_LEN)
        );
        assert_eq!(log.stats().segments, 6);

        // Reopen: everything is there and appends continue at the end.
        drop(log);
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Interval, 352))?;
        assert_eq!(log.durable_end(), Position::new(5, HEADER_LEN + 22));
        let next = log.append("t", &payload(101, 10))?.wait()?;
        assert_eq!(next, Position::new(5, HEADER_LEN + 22));
        assert_eq!(read_all(&log, 3)?.len(), 13);
        assert_eq!(
            SegmentLog::read_dir(dir.path(), Position::START, 100)?.len(),
            13
        );
        Ok(())
    }

    #[test]
    fn checkpoint_deletes_whole_segments_below_and_never_the_active_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 352))?;
        let positions = fill(&log, 10, 100)?; // segments 0..=3
        log.checkpoint(positions[7])?; // a record of segment 2
        assert_eq!(seg_files(dir.path())?, vec![2, 3]);
        let records = read_all(&log, 100)?;
        assert_eq!(records.first().map(|r| r.position), Some(positions[6]));
        assert_eq!(records.len(), 4);

        // Deleted segment: BadPosition, for reads in and out of process.
        assert!(matches!(
            log.read(positions[0], 10),
            Err(LogError::BadPosition(_))
        ));
        assert!(matches!(
            SegmentLog::read_dir(dir.path(), positions[4], 10),
            Err(LogError::BadPosition(_))
        ));

        // Past the end: never deletes the active segment.
        log.checkpoint(Position::new(u64::MAX, 0))?;
        assert_eq!(seg_files(dir.path())?, vec![3]);
        assert_eq!(log.stats().segments, 1);
        assert_eq!(read_all(&log, 100)?.len(), 1);
        let next = log.append("t", &payload(10, 100))?.wait()?;
        assert_eq!(next, Position::new(3, HEADER_LEN + 112));
        Ok(())
    }

    #[test]
    fn records_read_back_whole_across_read_blocks() -> TestResult {
        let dir = tempfile::tempdir()?;
        let cfg = LogConfig {
            max_record_bytes: 1 << 20,
            ..config(FsyncPolicy::Interval, 8 << 20)
        };
        let log = SegmentLog::open(dir.path(), &cfg)?;
        // Sizes that straddle block boundaries, and records larger than a block.
        let sizes: Vec<usize> = (0..400)
            .map(|i| match i % 50 {
                7 => READ_BLOCK + 13,
                31 => 3 * READ_BLOCK / 2,
                n => 1 + n * 997 % 9_000,
            })
            .collect();
        let receipts = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| log.append("t", &payload(i, len)))
            .collect::<Result<Vec<_>, _>>()?;
        for r in receipts {
            r.wait()?;
        }
        for max in [1, 3, 64, 1_000] {
            let records = read_all(&log, max)?;
            assert_eq!(records.len(), sizes.len(), "max {max}");
            for (i, r) in records.iter().enumerate() {
                assert!(r.payload[..] == payload(i, sizes[i])[..], "record {i}");
            }
            let again = SegmentLog::read_dir(dir.path(), Position::START, 1_000)?;
            assert_eq!(again, records);
        }
        Ok(())
    }

    #[test]
    fn span_counts_framed_bytes_across_segments_without_reading() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 352))?;
        let positions = fill(&log, 10, 100)?; // 3 records of 112 framed bytes per segment
        let end = log.durable_end();
        let frame = (FRAME_HEADER_LEN + 100) as u64;
        assert_eq!(
            log.span(Position::START, end),
            Some(Span::Bytes(10 * frame))
        );
        assert_eq!(
            log.span(positions[2], positions[7]),
            Some(Span::Bytes(5 * frame))
        );
        assert_eq!(
            log.span(positions[4], positions[5]),
            Some(Span::Bytes(frame))
        );
        assert_eq!(log.span(positions[7], positions[2]), Some(Span::Bytes(0)));
        // Spans add up: progress summed step by step reaches the total.
        let steps: u64 = positions
            .windows(2)
            .chain(std::iter::once([positions[9], end].as_slice()))
            .filter_map(|w| match log.span(w[0], w[1]) {
                Some(Span::Bytes(b)) => Some(b),
                _ => None,
            })
            .sum();
        assert_eq!(steps, 10 * frame);
        // Reclaimed segments count nothing.
        log.checkpoint(positions[7])?;
        assert_eq!(log.span(Position::START, end), Some(Span::Bytes(4 * frame)));
        Ok(())
    }

    #[test]
    fn bad_positions_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        fill(&log, 3, 10)?;
        let end = log.durable_end();
        assert!(log.read(end, 10)?.is_empty());
        for bad in [
            Position::new(0, 3),
            Position::new(0, end.offset + 22),
            Position::new(1, HEADER_LEN),
            Position::new(7, 0),
        ] {
            assert!(
                matches!(log.read(bad, 10), Err(LogError::BadPosition(p)) if p == bad),
                "{bad}"
            );
            assert_eq!(
                log.read(bad, 10).err().map(|e| e.code()),
                Some("log.position")
            );
        }
        assert!(matches!(
            SegmentLog::read_dir(dir.path(), Position::new(3, HEADER_LEN), 1),
            Err(LogError::BadPosition(_))
        ));
        assert!(matches!(
            log.append("t", &[0; 64 * 1024 + 1]),
            Err(LogError::RecordTooLarge { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        let positions = fill(&log, 5, 50)?;
        log.close()?;
        let path = segment_path(dir.path(), 0);
        let full = fs::metadata(&path)?.len();
        // Cut the last record in half, then add zeros (as after a crash with preallocation).
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(full - 20)?;
        file.set_len(full + 4096)?;
        drop(file);

        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        assert_eq!(fs::metadata(&path)?.len(), positions[4].offset);
        assert_eq!(log.durable_end(), positions[4]);
        let records = read_all(&log, 100)?;
        assert_eq!(records.len(), 4);
        assert_eq!(log.append("t", b"again")?.wait()?, positions[4]);
        assert_eq!(read_all(&log, 100)?.len(), 5);
        Ok(())
    }

    #[test]
    fn an_interrupted_segment_creation_is_repaired() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 100))?;
        fill(&log, 2, 50)?; // segments 0 and 1
        log.close()?;
        fs::write(segment_path(dir.path(), 2), &b"TALLY"[..])?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 100))?;
        assert_eq!(log.durable_end(), Position::new(2, HEADER_LEN));
        assert_eq!(read_all(&log, 100)?.len(), 2);
        assert_eq!(log.append("t", b"x")?.wait()?, Position::new(2, HEADER_LEN));
        Ok(())
    }

    #[test]
    fn corruption_in_the_middle_is_refused_not_truncated() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        let positions = fill(&log, 5, 50)?;
        log.close()?;
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path)?;
        let len = bytes.len();
        bytes[positions[2].offset as usize + FRAME_HEADER_LEN + 10] ^= 0xFF;
        fs::write(&path, &bytes)?;

        let err = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20)).err();
        assert!(
            matches!(&err, Some(LogError::Corrupt { position, .. }) if *position == positions[2]),
            "{err:?}"
        );
        assert_eq!(
            fs::metadata(&path)?.len() as usize,
            len,
            "nothing truncated"
        );
        // The standalone reader returns the good prefix, then reports the corruption.
        assert_eq!(
            SegmentLog::read_dir(dir.path(), Position::START, 2)?.len(),
            2
        );
        assert!(matches!(
            SegmentLog::read_dir(dir.path(), positions[1], 10),
            Err(LogError::Corrupt { .. })
        ));
        Ok(())
    }

    #[test]
    fn sealed_segments_are_verified_by_readers() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 352))?;
        let positions = fill(&log, 7, 100)?;
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path)?;
        bytes[HEADER_LEN as usize + 112 + 20] ^= 0x01; // second record of segment 1
        fs::write(&path, &bytes)?;
        let err = log.read(Position::START, 100).err();
        assert!(
            matches!(&err, Some(LogError::Corrupt { position, .. }) if *position == positions[4]),
            "{err:?}"
        );
        assert_eq!(log.read(Position::START, 4)?.len(), 4);
        assert!(matches!(
            SegmentLog::read_dir(dir.path(), Position::START, 100),
            Err(LogError::Corrupt { .. })
        ));

        // A foreign file named like a segment.
        drop(log);
        fs::write(
            segment_path(dir.path(), 3),
            b"PK\x03\x04 not a segment at all",
        )?;
        let err = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 352)).err();
        assert_eq!(
            err.as_ref().map(LogError::code),
            Some("log.corrupt"),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn read_dir_stops_quietly_at_a_tail_being_written() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Always, 1 << 20))?;
        fill(&log, 3, 40)?;
        // Half a frame at the end, as a concurrent reader may see mid-write.
        let mut partial = frame_header(&payload(3, 40)).to_vec();
        partial.extend_from_slice(&payload(3, 40)[..15]);
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), 0))?;
        file.write_all(&partial)?;
        let records = SegmentLog::read_dir(dir.path(), Position::START, 100)?;
        assert_eq!(records.len(), 3);
        assert!(SegmentLog::read_dir(dir.path(), records[2].next, 100)?.is_empty());
        // In process, reads stop at the durable end regardless.
        assert_eq!(read_all(&log, 100)?.len(), 3);
        Ok(())
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &LogConfig::default())?;
        let second = SegmentLog::open(dir.path(), &LogConfig::default());
        assert_eq!(second.err().map(|e| e.code()), Some("log.io"));
        drop(log);
        assert!(SegmentLog::open(dir.path(), &LogConfig::default()).is_ok());
        Ok(())
    }

    #[test]
    fn a_failed_write_fails_pending_receipts_and_closes_the_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log_dir = dir.path().join("log");
        let log = SegmentLog::open(&log_dir, &config(FsyncPolicy::Always, 100))?;
        fill(&log, 1, 50)?;
        // Rotation has to create a file in a directory that no longer exists.
        fs::remove_dir_all(&log_dir)?;
        let receipt = log.append("t", &payload(1, 50))?;
        let result = receipt.wait();
        assert!(matches!(result, Err(LogError::Closed(_))), "{result:?}");
        assert!(matches!(log.append("t", b"more"), Err(LogError::Closed(_))));
        assert_eq!(log.durable_end().segment, 0);
        assert!(log.close().is_err());
        Ok(())
    }

    #[test]
    fn works_behind_arc_dyn_from_many_threads() -> TestResult {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SegmentLog>();
        assert_send_sync::<Receipt>();
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&Receipt::ready(Position::START).durable());
        let dir = tempfile::tempdir()?;
        let log: Arc<dyn EventLog> = Arc::new(SegmentLog::open(
            dir.path(),
            &config(FsyncPolicy::Always, 4096),
        )?);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || -> Result<(), LogError> {
                    for i in 0..50 {
                        log.append("t", &payload(t * 1000 + i, 30))?.wait()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| "thread panicked")??;
        }
        let records = read_all(&*log, 64)?;
        assert_eq!(records.len(), 200);
        assert!(records.windows(2).all(|w| w[0].next <= w[1].position));
        Ok(())
    }

    #[tokio::test]
    async fn receipts_resolve_asynchronously() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = SegmentLog::open(dir.path(), &config(FsyncPolicy::Interval, 1 << 20))?;
        let receipts: Vec<Receipt> = (0..100)
            .map(|i| log.append("t", &payload(i, 20)))
            .collect::<Result<_, _>>()?;
        let last = receipts[99].position();
        for r in receipts {
            r.durable().await?;
        }
        assert!(log.durable_end() > last);
        assert_eq!(log.read(Position::START, 1000)?.len(), 100);
        Ok(())
    }
}
