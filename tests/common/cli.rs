//! Running the built `tally` binary against a data directory: a command with the data
//! dir set and quiet logs, one that must succeed, and the first row of `tally sql` as
//! numbers.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// `tally --data-dir <data_dir>` with no config file and error-level logs.
pub fn tally_in(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.arg("--data-dir")
        .arg(data_dir)
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "error");
    c
}

/// Run `tally <args>` on `data_dir`; it must succeed. Returns stdout.
pub fn run_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = tally_in(data_dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first row of `tally sql` as unsigned integers (a query of counts and sums).
pub fn sql_numbers(data_dir: &Path, query: &str) -> Vec<u64> {
    let text = run_ok(data_dir, &["sql", "--format", "csv", query]);
    let row = text.lines().nth(1).unwrap_or_else(|| panic!("{text}"));
    row.split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{row}")))
        .collect()
}

/// `tally --config <cfg> ledger run --once` on `data_dir` (a Kafka-fed ledger when the
/// config has `kafka:`); it must succeed. Returns stdout.
pub fn ledger_once(data_dir: &Path, cfg: &Path) -> String {
    let out = tally_in(data_dir)
        .arg("--config")
        .arg(cfg)
        .args(["ledger", "run", "--once"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tally ledger run --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
