//! Shared helpers for end-to-end tests: start the real `tally` binary on loopback with a
//! temporary data directory, find its addresses, stop it, and read back its events.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

pub mod cli;
pub mod synth;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_events::log::{Position, SegmentLog};
use tally_events::{Event, UsageEvent};

/// A running `tally` process.
pub struct Tally {
    pub child: Child,
    pub proxy: String,
    pub admin: String,
    pub postgres: Option<String>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    lines: mpsc::Receiver<String>,
}

impl Tally {
    /// `tally up --dev` on ephemeral loopback ports with a fresh data directory.
    pub fn up_dev(extra: &[&str]) -> Tally {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut t = Self::start(&data_dir, extra);
        t._tmp = Some(tmp);
        t
    }

    /// `tally up --dev` on an existing data directory.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Tally {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// `tally up --dev` on an existing data directory with the proxy on `listen` (a
    /// fixed port survives restarts; the other listeners take ephemeral ports).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Tally {
        Self::start_with(data_dir, listen, extra, Stdio::inherit(), &[])
    }

    /// [`Tally::start_on`] with the process's stderr (its logs) going to `stderr`, and
    /// `envs` added to its environment (`TALLY_LOG_FILTER` is `warn` unless set there).
    pub fn start_with(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        stderr: Stdio,
        envs: &[(&str, &str)],
    ) -> Tally {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
        cmd.args([
            "up",
            "--dev",
            "--listen",
            listen,
            "--simulator-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--postgres-listen",
            "127.0.0.1:0",
            "--drain-seconds",
            "5",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("TALLY_LOG_FILTER", "warn")
        .envs(envs.iter().copied())
        .env_remove("TALLY_CONFIG")
        .current_dir(data_dir.parent().unwrap_or(Path::new("/")))
        .stdout(Stdio::piped())
        .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn tally");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut proxy, mut admin, mut postgres) = (None, None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("tally did not print its listening addresses in time");
            if let Some(addr) = line.strip_prefix("tally proxy listening on ") {
                proxy = Some(addr.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("tally admin API on ") {
                admin = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("tally postgres wire on ") {
                postgres = rest.split_whitespace().next().map(str::to_owned);
            } else if line.starts_with("  event log:") {
                break;
            }
        }
        let proxy = proxy.expect("proxy address printed");
        let admin = admin.expect("admin address printed");
        Tally {
            child,
            proxy,
            admin,
            postgres,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            lines: rx,
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(mut self) -> PathBuf {
        terminate(&mut self.child, Duration::from_secs(20), "tally");
        let dir = self.data_dir.clone();
        if let Some(tmp) = self._tmp.take() {
            // Keep the directory alive for the caller by leaking the guard into a path.
            let kept = tmp.keep();
            let _ = kept;
        }
        dir
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event in a data directory's log.
pub fn read_events(data_dir: &Path) -> Vec<Event> {
    let dir = data_dir.join("log");
    let mut pos = Position::START;
    let mut out = Vec::new();
    loop {
        let records = SegmentLog::read_dir(&dir, pos, 10_000).expect("read log");
        if records.is_empty() {
            break;
        }
        for r in records {
            out.push(tally_events::decode(&r.payload).expect("decode event"));
            pos = r.next;
        }
    }
    out
}

/// The usage events, by request id.
pub fn usage_by_request(events: &[Event]) -> std::collections::HashMap<String, UsageEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Usage(u) => Some((u.header.request_id.clone(), u.clone())),
            _ => None,
        })
        .collect()
}

/// The Python interpreter with the official SDKs (set up by scripts/setup-test-deps.sh).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TALLY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/tally/venv/bin/python");
    assert!(
        p.exists(),
        "Python SDK clients missing: run `bash scripts/setup-test-deps.sh` (scripts/test.sh does)"
    );
    p
}

/// A daily counter must not roll over in the middle of a test: if fewer than
/// `margin_secs` are left in the UTC day, wait until the next day has begun.
pub fn away_from_midnight(margin_secs: i64) {
    let secs_into_day = tally_events::Timestamp::now()
        .as_micros()
        .rem_euclid(86_400_000_000)
        / 1_000_000;
    let left = 86_400 - secs_into_day;
    if left < margin_secs {
        std::thread::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0) + 2));
    }
}

/// Send SIGTERM to `child`; it must exit 0 within `within`.
pub fn terminate(child: &mut Child, within: Duration, what: &str) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "could not signal {what}");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not stop within {within:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// xorshift64*: a small deterministic generator for kill schedules and the like.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
