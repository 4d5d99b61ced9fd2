//! Real SQL clients against a running `tally up --dev`: `psql` (Debian's
//! postgresql-client) and Python's `psycopg` connect to the Postgres wire server and run
//! the canned report queries; their results equal `tally sql`'s. And freshness: a
//! request through the proxy is visible to `tally sql` within one second of its response.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::run_ok;
use common::{Tally, python};

const ADMIN: &str = "dev-admin";

/// The canned reports, written so every column is text or an integer (the clients'
/// renderings of those agree; timestamps and decimals are cast to text).
const QUERIES: &[&str] = &[
    "SELECT tenant, count(*) AS requests, sum(input_tokens) AS input_tokens, \
     sum(output_tokens) AS output_tokens, sum(cost_micros) AS cost_micros \
     FROM usage GROUP BY tenant ORDER BY tenant",
    "SELECT provider, COALESCE(model_served, model_requested) AS model, finish_state, count(*) AS n \
     FROM usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    "SELECT CAST(day AS VARCHAR) AS day, tenant, provider, model, requests, cost_micros, \
     CAST(cost_usd AS VARCHAR) AS cost_usd, tokens FROM spend_daily ORDER BY day, tenant, provider, model",
    "SELECT tenant, rule, outcome, count(*) AS n FROM denials GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    "SELECT request_id, tenant, finish_state, COALESCE(decision_rule, '') AS rule FROM requests ORDER BY request_id",
];

fn chat(proxy: &str, key: &str, model: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","max_tokens":50,"messages":[{{"role":"user","content":"hello"}}]}}"#
        ))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// `tally sql --format csv`, as rows of fields (header dropped).
fn tally_rows(data_dir: &std::path::Path, query: &str) -> Vec<Vec<String>> {
    let text = run_ok(data_dir, &["sql", "--format", "csv", query]);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn psql_rows(host: &str, port: &str, query: &str) -> Vec<Vec<String>> {
    let out = Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "admin", "-d", "tally", "--csv", "-t", "-c", query,
        ])
        .env("PGPASSWORD", ADMIN)
        .output()
        .expect("psql (postgresql-client; scripts/setup-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "psql: {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&out.stdout[..]);
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn psycopg_rows(host: &str, port: &str) -> Vec<Vec<Vec<String>>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pg_queries.py");
    let mut child = Command::new(python())
        .args([script, host, port, ADMIN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(QUERIES).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psycopg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Vec<Vec<Option<String>>>> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|rows| {
            rows.into_iter()
                .map(|row| row.into_iter().map(Option::unwrap_or_default).collect())
                .collect()
        })
        .collect()
}

#[test]
fn psql_and_psycopg_see_what_tally_sql_sees_and_requests_are_fresh_within_a_second() {
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "rules:\n  - name: no-gpt-4o-for-beta\n    match: tenant == 'beta' && model == 'gpt-4o'\n    action: deny\n",
    )
    .unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("proxy:\n  policy_file: {}\n", policy.path().display()),
    )
    .unwrap();
    let t = Tally::up_dev(&["--config", config.path().to_str().unwrap()]);
    let mut sent = 0;
    for (key, model, status) in [
        ("dev-acme-1", "gpt-4o-mini", 200),
        ("dev-acme-2", "gpt-4o", 200),
        ("dev-beta-1", "gpt-4o-mini", 200),
        ("dev-beta-1", "gpt-4o", 403),
        ("dev-gamma-1", "claude-haiku-4-5", 200),
    ] {
        assert_eq!(chat(&t.proxy, key, model), status, "{key} {model}");
        sent += 1;
    }

    // Freshness: one second after the last response, `tally sql` counts every request.
    let answered = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(answered.elapsed()));
    let count = tally_rows(&t.data_dir, "SELECT count(*) FROM usage");
    assert_eq!(count, vec![vec![sent.to_string()]], "visible within 1 s");

    let pg = t.postgres.clone().expect("postgres wire server address");
    let (host, port) = pg.rsplit_once(':').unwrap();
    let from_psycopg = psycopg_rows(host, port);
    for (i, q) in QUERIES.iter().enumerate() {
        let expected = tally_rows(&t.data_dir, q);
        assert!(!expected.is_empty(), "{q} returned nothing");
        assert_eq!(psql_rows(host, port, q), expected, "psql: {q}");
        assert_eq!(from_psycopg[i], expected, "psycopg: {q}");
    }
    t.stop();
}
