//! `tally export` end to end, through the CLI against a data directory filled by real
//! traffic through `tally up --dev`: every format is reproducible (the same bytes twice),
//! `--check` adds the export up to the ledger, `--close` freezes a period so a re-export
//! is byte-identical even after a late event arrives, and that late event shows up as an
//! adjustment line (`--adjustments`), never as a silent change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::Tally;
use serde_json::Value;
use tally_events::Timestamp;

const PRICING: &str = "default:
  markup_percent: 20
tenants:
  acme:
    name: Acme Corp
    stripe_customer_id: cus_e2eacme
    markup_percent: 12.5
  globex:
    stripe_customer_id: cus_e2eglobex
";

struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }
}

/// `tally --data-dir DATA export ARGS…`, within two minutes.
fn export(data: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "error")
        .arg("--data-dir")
        .arg(data)
        .arg("export")
        .args(args)
        .current_dir(data.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally export {args:?} did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn ok(data: &Path, args: &[&str]) -> Run {
    let r = export(data, args);
    assert!(
        r.status.success(),
        "tally export {args:?} failed: {}",
        r.stderr
    );
    r
}

fn chat(proxy: &str, key: &str, model: &str, content: &str) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// CSV lines as maps of column → value.
fn csv_rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn sum(rows: &[std::collections::BTreeMap<String, String>], col: &str) -> i64 {
    rows.iter().map(|r| r[col].parse::<i64>().unwrap()).sum()
}

#[test]
fn exports_are_reproducible_closed_periods_frozen_and_late_events_adjusted() {
    // Every event of this test must fall on one UTC day.
    let into_day = (Timestamp::now().as_micros() / 1_000_000) % 86_400;
    if into_day > 86_400 - 120 {
        std::thread::sleep(Duration::from_secs((86_400 - into_day + 2) as u64));
    }
    let day = Timestamp::now()
        .to_datetime()
        .format("%Y-%m-%d")
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pricing = tmp.path().join("pricing.yaml");
    std::fs::write(&pricing, PRICING).unwrap();
    let pricing = pricing.to_str().unwrap();

    let t = Tally::start(&data, &[]);
    for i in 0..3 {
        chat(&t.proxy, "dev-acme-1", "gpt-4o-mini", &format!("acme {i}"));
    }
    for i in 0..2 {
        chat(&t.proxy, "dev-globex-1", "gpt-4o", &format!("globex {i}"));
    }
    // A graceful stop commits everything durable: exports read committed tables only.
    t.stop();

    // Each format twice: the same bytes.
    let now = Timestamp::from_micros(Timestamp::now().as_micros() + 3_600_000_000).to_string();
    let formats: [(&str, Vec<&str>); 4] = [
        ("csv", vec![]),
        ("jsonl", vec![]),
        ("cloudevents", vec!["--granularity", "day"]),
        ("stripe", vec!["--now", &now]),
    ];
    for (format, extra) in &formats {
        let mut args = vec!["--period", &day, "--format", format, "--pricing", pricing];
        args.extend(extra.iter().copied());
        let a = ok(&data, &args);
        let b = ok(&data, &args);
        assert!(!a.stdout.is_empty(), "{format}: empty export");
        assert_eq!(a.stdout, b.stdout, "{format}: re-run changed the bytes");
    }
    let open = ok(&data, &["--period", &day, "--pricing", pricing]);
    let rows = csv_rows(&open.text());
    assert_eq!(rows.len(), 2, "{}", open.text());
    assert_eq!(sum(&rows, "requests"), 5);
    let acme = rows.iter().find(|r| r["tenant"] == "acme").unwrap();
    assert_eq!(acme["customer"], "Acme Corp");
    assert_eq!(acme["pricing"], "markup 12.5%");
    // Stripe meter events carry the customer and deterministic identifiers.
    let stripe = ok(
        &data,
        &[
            "--period",
            &day,
            "--format",
            "stripe",
            "--pricing",
            pricing,
            "--now",
            &now,
        ],
    );
    let events: Vec<Value> = stripe
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["payload"]["stripe_customer_id"] == "cus_e2eacme")
    );
    assert!(
        events
            .iter()
            .all(|e| e["identifier"].as_str().unwrap().starts_with("tly_"))
    );

    // --out writes the same bytes; --check adds up.
    let out = tmp.path().join("open.csv");
    let r = ok(
        &data,
        &[
            "--period",
            &day,
            "--pricing",
            pricing,
            "--out",
            out.to_str().unwrap(),
            "--check",
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), open.stdout);
    assert!(r.stderr.contains("export = ledger: yes"), "{}", r.stderr);
    assert!(r.stderr.contains("exported 2 record(s)"), "{}", r.stderr);

    // Close the period; exporting it again gives the closed bytes.
    let closed = ok(&data, &["--period", &day, "--pricing", pricing, "--close"]);
    assert_eq!(closed.stdout, open.stdout);
    let again = ok(&data, &["--period", &day, "--pricing", pricing]);
    assert_eq!(again.stdout, closed.stdout);

    // A late event in the closed period.
    let t = Tally::start(&data, &[]);
    chat(&t.proxy, "dev-acme-1", "gpt-4o-mini", "a late one");
    t.stop();

    // The closed export does not move, and says there is something to adjust.
    let after = ok(&data, &["--period", &day, "--pricing", pricing]);
    assert_eq!(after.stdout, closed.stdout, "a closed period changed");
    assert!(after.stderr.contains("--adjustments"), "{}", after.stderr);
    let jsonl_closed = ok(
        &data,
        &["--period", &day, "--format", "jsonl", "--pricing", pricing],
    );
    assert_eq!(
        jsonl_closed.text().lines().count(),
        2,
        "the closed JSONL has the closed lines"
    );
    let checked = ok(&data, &["--period", &day, "--pricing", pricing, "--check"]);
    assert!(
        checked.stderr.contains("export = ledger: yes"),
        "{}",
        checked.stderr
    );

    // The late event is an adjustment line, the same on every preview.
    let adj = ok(
        &data,
        &["--period", &day, "--pricing", pricing, "--adjustments"],
    );
    let adj2 = ok(
        &data,
        &["--period", &day, "--pricing", pricing, "--adjustments"],
    );
    assert_eq!(adj.stdout, adj2.stdout);
    let lines = csv_rows(&adj.text());
    assert_eq!(lines.len(), 1, "{}", adj.text());
    let l = &lines[0];
    assert_eq!(l["kind"], "adjustment");
    assert_eq!(l["reason"], "late_events");
    assert_eq!(l["tenant"], "acme");
    assert_eq!(l["requests"], "1");
    assert!(l["input_tokens"].parse::<i64>().unwrap() > 0);
    assert!(l["id"].starts_with("tly_"));
    // Closed lines plus adjustments are the ledger's figures now.
    let ledger_now = ok(
        &data,
        &[
            "--period",
            &day,
            "--format",
            "jsonl",
            "--pricing",
            pricing,
            "--adjustments",
        ],
    );
    let adj_json: Value = serde_json::from_str(ledger_now.text().lines().next().unwrap()).unwrap();
    assert_eq!(adj_json["kind"], "adjustment");
    assert_eq!(adj_json["requests"], 1);
    assert_eq!(sum(&csv_rows(&closed.text()), "requests") + 1, 6);
    // Stripe cannot take adjustments.
    let refused = export(
        &data,
        &[
            "--period",
            &day,
            "--format",
            "stripe",
            "--pricing",
            pricing,
            "--adjustments",
        ],
    );
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("export."), "{}", refused.stderr);

    // Sealing the batch: the next preview starts from there, and has nothing.
    let sealed = ok(
        &data,
        &[
            "--period",
            &day,
            "--pricing",
            pricing,
            "--adjustments",
            "--close",
        ],
    );
    assert_eq!(sealed.stdout, adj.stdout);
    let empty = ok(
        &data,
        &["--period", &day, "--pricing", pricing, "--adjustments"],
    );
    assert_eq!(csv_rows(&empty.text()).len(), 0, "{}", empty.text());
}
