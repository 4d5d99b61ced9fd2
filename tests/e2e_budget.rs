//! Budgets with real clients through the real binary (`tally up --dev` to the simulator):
//! 200 streaming requests from the official `openai` SDK race a $1.00 daily cap. The
//! recorded spend stays within the cap plus what admitted requests used beyond their
//! reservations; every refused request got a 429 naming the cap, and `tally why` names
//! it. A cap with `on_exceed: cut` ends a long stream near the limit, and `tally why`
//! explains the cut.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::cli::run_ok;
use common::{Tally, away_from_midnight, python, read_events};
use tally_events::{DecisionEvent, Event, FinishState, Outcome, UsageEvent};

const CAP_MICROS: i64 = 1_000_000;
const REQUESTS: usize = 200;

/// A config using `policy` as the policy file; returns `tally up` arguments.
fn with_policy(dir: &Path, policy: &str) -> Vec<String> {
    let policies = dir.join("policies.yaml");
    std::fs::write(&policies, policy).unwrap();
    let config = dir.join("tally.yaml");
    std::fs::write(
        &config,
        format!("proxy:\n  policy_file: {}\n", policies.display()),
    )
    .unwrap();
    vec!["--config".into(), config.to_str().unwrap().into()]
}

fn start(data_dir: &Path, args: &[String]) -> Tally {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Tally::start(data_dir, &args)
}

/// `tally why --json` for several request ids: one report each.
fn why(data_dir: &Path, ids: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["why", "--json"];
    args.extend_from_slice(ids);
    let out: serde_json::Value = serde_json::from_str(&run_ok(data_dir, &args)).unwrap();
    match out {
        serde_json::Value::Array(reports) => reports,
        one => vec![one],
    }
}

fn split(events: Vec<Event>) -> (HashMap<String, UsageEvent>, Vec<DecisionEvent>) {
    let mut usage = HashMap::new();
    let mut decisions = Vec::new();
    for e in events {
        match e {
            Event::Usage(u) => {
                assert!(
                    usage.insert(u.header.request_id.clone(), u).is_none(),
                    "one usage event per request (no retries here)"
                );
            }
            Event::Decision(d) => decisions.push(d),
            _ => {}
        }
    }
    (usage, decisions)
}

#[test]
fn two_hundred_concurrent_sdk_streams_stay_within_a_dollar_cap() {
    away_from_midnight(120);
    let tmp = tempfile::tempdir().unwrap();
    let args = with_policy(
        tmp.path(),
        "emit_allow_decisions: true\nrules:\n  - name: daily-dollars\n    action: usage-cap\n    limit_usd: 1.00\n    period: day\n",
    );
    let data_dir = tmp.path().join("data");
    let t = start(&data_dir, &args);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sdk_budget.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&t.proxy)
        .arg("dev-acme-budget")
        .arg(REQUESTS.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data_dir = t.stop();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), REQUESTS, "every SDK call reported");
    let (usage, decisions) = split(read_events(&data_dir));

    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for line in &lines {
        let id = line["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no x-tally-request-id: {line}"));
        match line["status"].as_u64() {
            Some(200) => admitted.push(id),
            Some(429) => refused.push((id, line)),
            other => panic!("unexpected status {other:?}: {line}"),
        }
    }
    assert!(
        admitted.len() >= 20 && refused.len() >= 20,
        "the race must admit and refuse: {} admitted, {} refused",
        admitted.len(),
        refused.len()
    );

    // Admitted: the recorded tokens are what the SDK reported.
    for line in lines.iter().filter(|l| l["status"] == 200) {
        let u = &usage[line["request_id"].as_str().unwrap()];
        assert_eq!(u.finish_state, FinishState::Completed, "{line}");
        assert_eq!(Some(u.tokens.input_tokens), line["input_tokens"].as_u64());
        assert_eq!(Some(u.tokens.output_tokens), line["output_tokens"].as_u64());
    }

    // The bound: spend ≤ cap + Σ max(0, real cost − reserved cost) over admitted requests.
    let reserved: HashMap<&str, i64> = decisions
        .iter()
        .filter(|d| d.rule == "daily-dollars" && d.outcome == Outcome::Allow)
        .map(|d| {
            (
                d.header.request_id.as_str(),
                d.reserved_cost_micros
                    .expect("an allow decision records its reservation"),
            )
        })
        .collect();
    assert_eq!(
        reserved.len(),
        admitted.len(),
        "one reservation per admitted request"
    );
    let spend: i64 = usage.values().map(|u| u.cost_micros).sum();
    let overrun: i64 = admitted
        .iter()
        .map(|id| (usage[*id].cost_micros - reserved[id]).max(0))
        .sum();
    eprintln!(
        "{} admitted, {} refused; spent {spend} µ$ of a {CAP_MICROS} µ$ cap, overrun allowance {overrun} µ$",
        admitted.len(),
        refused.len()
    );
    assert!(
        spend <= CAP_MICROS + overrun,
        "spent {spend} µ$ > cap {CAP_MICROS} + overrun {overrun}"
    );
    // The cap was the binding constraint: what was refused would not have fitted.
    assert!(spend > CAP_MICROS / 2, "spent only {spend} µ$");

    // Refused: a 429 naming the cap, a deny decision, and `tally why` names it.
    for (id, line) in &refused {
        assert_eq!(line["rule"], "daily-dollars", "{line}");
        let message = line["message"].as_str().unwrap_or_default();
        assert!(message.contains("daily-dollars"), "{line}");
        assert!(line["retry_after"].is_string(), "{line}");
        assert!(
            decisions.iter().any(|d| d.header.request_id == *id
                && d.rule == "daily-dollars"
                && d.outcome == Outcome::Deny),
            "no deny decision for {id}"
        );
        assert_eq!(usage[*id].finish_state, FinishState::Denied);
        assert_eq!(usage[*id].cost_micros, 0);
    }
    let ids: Vec<&str> = refused.iter().map(|(id, _)| *id).collect();
    let reports = why(&data_dir, &ids);
    assert_eq!(reports.len(), ids.len());
    for (report, id) in reports.iter().zip(&ids) {
        assert_eq!(report["request_id"], *id);
        assert_eq!(report["verdict"], "denied", "{report}");
        let summary = report["summary"].as_str().unwrap();
        assert!(
            summary.contains("daily-dollars") && summary.contains("limit"),
            "{summary}"
        );
    }
}

#[test]
fn a_stream_cut_at_the_cap_is_explained_by_tally_why() {
    let tmp = tempfile::tempdir().unwrap();
    let args = with_policy(
        tmp.path(),
        "rules:\n  - name: acme-output-cap\n    action: usage-cap\n    limit_tokens: 300\n    unit: output_tokens\n    period: day\n    on_exceed: cut\n",
    );
    let data_dir = tmp.path().join("data");
    let t = start(&data_dir, &args);
    // max_tokens 250 fits the reservation; the forced 1,000-token answer does not fit.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/v1/chat/completions", t.proxy))
        .header("authorization", "Bearer dev-acme-cut")
        .header("x-sim-output-tokens", "1000")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","max_tokens":250,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"write a long story"}]}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.text().unwrap();
    assert!(
        body.contains("tally.cut_by_policy"),
        "the client sees a provider-shaped error event: {body}"
    );
    let data_dir = t.stop();
    let [report] = why(&data_dir, &[&id]).try_into().unwrap();
    assert_eq!(report["verdict"], "denied", "{report}");
    let cut = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["rule"] == "acme-output-cap" && d["outcome"] == "deny")
        .unwrap_or_else(|| panic!("no cut decision: {report}"));
    assert!(
        cut["reason"].as_str().unwrap().contains("cut"),
        "the reason says the stream was cut: {cut}"
    );
    let [attempt] = report["attempts"].as_array().unwrap().as_slice() else {
        panic!("one attempt: {report}")
    };
    assert_eq!(attempt["finish_state"], "cut_by_policy");
    let output = attempt["output_tokens"].as_i64().unwrap();
    assert!(
        (1..=320).contains(&output),
        "cut within the cap plus one upstream chunk: {output} output tokens"
    );
    // The text report says the same to a person.
    let text = run_ok(&data_dir, &["why", &id]);
    assert!(
        text.contains("acme-output-cap") && text.contains("cut"),
        "{text}"
    );
}
