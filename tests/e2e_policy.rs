//! Policies through the real binary: `tally policy check` on good and bad files, and a
//! budget that still holds after a restart (counters are rebuilt from the tables and the
//! event log), also once the ledger has reclaimed the log segments it committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Tally;

fn tally() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_remove("TALLY_CONFIG").env("TALLY_LOG_FILTER", "warn");
    c
}

#[test]
fn policy_check_accepts_the_cookbook_and_explains_mistakes() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/enforcer/tests/policy_cookbook"
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = tally()
            .args(["policy", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: x\n    action: rate-limit\n    limit: 0\n    window: 1m\n",
    )
    .unwrap();
    let out = tally()
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.bad_limit") && err.contains("`x`"),
        "{err}"
    );
}

fn send_chat(proxy: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("authorization", "Bearer dev-acme-1")
        .header("x-sim-output-tokens", "100")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Writes a 600-token daily cap and a config (plus `extra` YAML) into `dir`; returns the
/// arguments for `tally up`.
fn capped_config(dir: &std::path::Path, extra: &str) -> Vec<String> {
    let policies = dir.join("policies.yaml");
    std::fs::write(
        &policies,
        "rules:\n  - name: acme-daily\n    action: usage-cap\n    limit_tokens: 600\n    unit: tokens\n    period: day\n",
    )
    .unwrap();
    let config = dir.join("tally.yaml");
    std::fs::write(
        &config,
        format!("proxy:\n  policy_file: {}\n{extra}", policies.display()),
    )
    .unwrap();
    vec!["--config".into(), config.to_str().unwrap().into()]
}

/// Sends requests until the cap refuses one; returns the statuses.
fn spend_the_budget(proxy: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let s = send_chat(proxy);
        statuses.push(s);
        if s == 429 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "the budget must run out: {statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 3,
        "{statuses:?}"
    );
    statuses
}

#[test]
fn a_spent_budget_stays_spent_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let args = capped_config(tmp.path(), "");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_dir = tmp.path().join("data");
    let t = Tally::start(&data_dir, &args);
    spend_the_budget(&t.proxy);
    t.stop();
    let t = Tally::start(&data_dir, &args);
    assert_eq!(
        send_chat(&t.proxy),
        429,
        "a restart must not reset the budget"
    );
}

#[test]
fn a_spent_budget_stays_spent_after_the_ledger_reclaimed_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    // Tiny log segments and quick commits: the ledger commits the usage to the tables
    // and deletes the sealed segments, so the log alone no longer holds the spending.
    let args = capped_config(
        tmp.path(),
        "log:\n  segment_bytes: 1024\nledger:\n  batch_max_age_ms: 50\n  idle_commit_secs: 1\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_dir = tmp.path().join("data");
    let t = Tally::start(&data_dir, &args);
    let admitted = spend_the_budget(&t.proxy)
        .iter()
        .filter(|s| **s == 200)
        .count();
    let log_dir = data_dir.join("log");
    let first_segment = log_dir.join(format!("{:020}.seg", 0));
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_segment.exists() {
        assert!(
            Instant::now() < deadline,
            "the ledger did not reclaim the first log segment within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.stop();
    let in_log = common::read_events(&data_dir)
        .iter()
        .filter(|e| matches!(e, tally_events::Event::Usage(u) if u.finish_state == tally_events::FinishState::Completed))
        .count();
    assert!(
        in_log < admitted,
        "the log must have lost some of the {admitted} admitted requests' usage ({in_log} left)"
    );
    let t = Tally::start(&data_dir, &args);
    assert_eq!(
        send_chat(&t.proxy),
        429,
        "a restart after log retention must not reset the budget"
    );
}

#[test]
fn a_changed_policy_file_is_reloaded_without_dropping_requests_and_a_bad_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies.yaml");
    let allow = "rules:\n  - name: anyone\n    action: allow\n";
    std::fs::write(&policies, allow).unwrap();
    let config = tmp.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy:\n  policy_file: {}\n  policy_reload_secs: 1\n",
            policies.display()
        ),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    let t = Tally::start(&data_dir, &["--config", config.to_str().unwrap()]);
    assert_eq!(send_chat(&t.proxy), 200);

    // A stream that runs across the reload finishes normally.
    let proxy = t.proxy.clone();
    let in_flight = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!("{proxy}/v1/chat/completions"))
            .header("authorization", "Bearer dev-acme-1")
            .header("x-sim-chunk-delay-ms", "60")
            .header("x-sim-output-tokens", "40")
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":40,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .unwrap()
            .text()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let deny = "rules:\n  - name: closed\n    match: tenant == \"acme\"\n    action: deny\n    reason: acme is paused\n";
    std::fs::write(&policies, deny).unwrap();
    let until_status = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = send_chat(&t.proxy);
            if s == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {s}, expected {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until_status(403);
    let streamed = in_flight.join().unwrap();
    assert!(
        streamed.trim_end().ends_with("data: [DONE]"),
        "the stream in flight finished: {streamed}"
    );

    // A file with problems is refused; the deny rule stays in force, also on SIGHUP.
    std::fs::write(
        &policies,
        "rules:\n  - name: x\n    action: rate-limit\n    limit: 0\n    window: 1m\n",
    )
    .unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &t.child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        send_chat(&t.proxy),
        403,
        "a bad file must not replace the policy"
    );

    // Fixed, and picked up at once on SIGHUP.
    std::fs::write(&policies, allow).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &t.child.id().to_string()])
        .status();
    until_status(200);
    t.stop();
}

#[test]
fn policy_test_shows_each_rules_part_without_sending_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies.yaml");
    std::fs::write(
        &policies,
        r#"rules:
  - name: interns-no-gpt-4o
    match: 'has(labels.team) && labels.team == "interns" && model.startsWith("gpt-4o")'
    action: deny
    reason: interns use gpt-4.1-mini
  - name: night-only
    match: hour < 6
    action: deny
  - name: acme-daily-tokens
    action: usage-cap
    limit_tokens: 1500
    unit: tokens
    period: day
"#,
    )
    .unwrap();
    let request = tmp.path().join("req.json");
    let run = |body: &str| -> serde_json::Value {
        std::fs::write(&request, body).unwrap();
        let out = tally()
            .args(["policy", "test"])
            .arg(&policies)
            .arg("--request")
            .arg(&request)
            .arg("--json")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = r#""tenant": "acme", "model": "gpt-4o", "input_tokens": 400, "time": "2026-11-30T10:00:00Z""#;

    // Fits: 400 + 800 = 1,200 of 1,500; the deny rules do not match.
    let v = run(&format!(r#"{{{base}, "max_output_tokens": 800}}"#));
    assert_eq!(v["verdict"], "allowed", "{v}");
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["matched"], false);
    assert_eq!(rules[1]["matched"], false, "10:00 is not night");
    let cap = &rules[2];
    assert_eq!(cap["matched"], true);
    assert_eq!(cap["counter_key"], "acme-daily-tokens:tenant=acme");
    assert_eq!(
        (
            cap["before"].as_i64(),
            cap["amount"].as_i64(),
            cap["after"].as_i64()
        ),
        (Some(0), Some(1200), Some(1200))
    );
    assert_eq!(cap["limit"], 1500);

    // Too large for the cap: denied by it, with its message.
    let v = run(&format!(r#"{{{base}, "max_output_tokens": 1200}}"#));
    assert_eq!(v["verdict"], "denied", "{v}");
    assert_eq!(v["rule"], "acme-daily-tokens");
    assert_eq!(v["status"], 429);
    assert_eq!(v["rules"][2]["after"], 0, "a refusal reserves nothing");

    // The access rule decides first, and a bad request file is a clear error.
    let v = run(&format!(r#"{{{base}, "labels": {{"team": "interns"}}}}"#));
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].as_str()),
        (Some("denied"), Some("interns-no-gpt-4o"))
    );
    assert_eq!(v["status"], 403);
    std::fs::write(&request, r#"{"tenant": "acme", "modle": "x"}"#).unwrap();
    let out = tally()
        .args(["policy", "test"])
        .arg(&policies)
        .arg("--request")
        .arg(&request)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.request") && err.contains("modle"),
        "{err}"
    );
}
