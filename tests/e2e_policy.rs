//! Policies through the real binary: `tally policy check` on good and bad files, and a
//! budget that still holds after a restart (counters are rebuilt from the event log).

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

#[test]
fn a_spent_budget_stays_spent_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies.yaml");
    std::fs::write(
        &policies,
        "rules:\n  - name: acme-daily\n    action: usage-cap\n    limit_tokens: 600\n    unit: tokens\n    period: day\n",
    )
    .unwrap();
    let config = tmp.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!("proxy:\n  policy_file: {}\n", policies.display()),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let send = |proxy: &str| {
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
    };
    let t = Tally::start(&data_dir, &args);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let s = send(&t.proxy);
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
    t.stop();
    let t = Tally::start(&data_dir, &args);
    assert_eq!(send(&t.proxy), 429, "a restart must not reset the budget");
}
