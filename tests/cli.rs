//! The README's commands, run as a user would: `tally keys hash`, `tally up --dev` with
//! the quick-start request, `tally log inspect` and `tally log stats`, and config errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::Tally;

fn tally() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_remove("TALLY_CONFIG").env("TALLY_LOG_FILTER", "warn");
    c
}

#[test]
fn keys_hash_prints_the_config_form() {
    let out = tally()
        .args(["keys", "hash", "sk-tally-demo"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // sha256("sk-tally-demo")
    assert!(
        text.starts_with("sha256:") && text.trim().len() == 71,
        "{text}"
    );
    let again = tally()
        .args(["keys", "hash", "sk-tally-demo"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, again.stdout, "hashing is deterministic");
}

#[test]
fn quick_start_request_becomes_an_event_readable_with_log_inspect() {
    let t = Tally::up_dev(&[]);
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/v1/chat/completions", t.proxy))
        .header("authorization", "Bearer dev-acme-1")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(resp.headers().contains_key("x-tally-overhead-ms"));
    let data_dir = t.data_dir.clone();

    // Readable while tally runs (the log is locked for writing, not for reading).
    let stats = tally()
        .args(["log", "stats", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    assert!(String::from_utf8_lossy(&stats.stdout).contains("segments:      1"));

    let data_dir = t.stop();
    let out = tally()
        .args(["log", "inspect", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let usage: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == id.as_str())
        .collect();
    assert_eq!(usage.len(), 1, "{lines:?}");
    assert_eq!(usage[0]["event_type"], "usage");
    assert_eq!(usage[0]["tenant"], "acme");
    assert_eq!(usage[0]["finish_state"], "completed");
    assert!(usage[0]["output_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn config_typos_and_missing_logs_fail_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tally.yaml");
    std::fs::write(&cfg, "proxy:\n  listne: 127.0.0.1:1\n").unwrap();
    let out = tally()
        .args(["log", "stats", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.invalid") && err.contains("listne"),
        "{err}"
    );

    let out = tally()
        .args(["log", "inspect", "--data-dir"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.missing"));
}

/// A reader that stops early (`tally sql ... | head`) ends `tally sql` quietly with
/// status 0, not with an error or a panic.
#[test]
fn sql_into_a_pipe_closed_early_exits_quietly() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = tally()
        .args([
            "sql",
            "--format",
            "csv",
            "SELECT value FROM generate_series(1, 3000000)",
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // the reader goes away mid-result
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}
