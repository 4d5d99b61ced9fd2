//! `tally serve`, the query servers alone (split mode): over tables a separate
//! `tally ledger run --once` committed, its probes answer, `POST /v1/sql` needs the
//! admin token and returns the committed figures, `psql` reads the same through the
//! Postgres wire protocol, and SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::synth::write_events;

const TOKEN: &str = "serve-admin-token";

#[test]
fn serve_answers_sql_over_http_and_postgres_from_committed_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let written = write_events(&data.join("log"), 2_000, Duration::ZERO);
    let config = tmp.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!(
            "queries:\n  admin_tokens: [\"{}\"]\n",
            tally_queries::hash_token(TOKEN)
        ),
    )
    .unwrap();
    let tally = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("TALLY_LOG_FILTER", "warn");
        c
    };
    let out = tally().args(["ledger", "run", "--once"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = tally()
        .args([
            "serve",
            "--admin-listen",
            "127.0.0.1:0",
            "--postgres-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut admin, mut pg) = (None, None);
    while admin.is_none() || pg.is_none() {
        let line = lines.next().expect("serve printed its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("tally admin API on ") {
            admin = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("tally postgres wire on ") {
            pg = Some(rest.trim().to_owned());
        }
    }
    let (admin, pg) = (admin.unwrap(), pg.unwrap());
    let http = reqwest::blocking::Client::new();
    assert_eq!(
        http.get(format!("{admin}/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(format!("{admin}/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().unwrap_or_default());

    let query =
        "SELECT count(*) AS n, sum(input_tokens) AS input, sum(cost_micros) AS cost FROM usage";
    let anonymous = http
        .post(format!("{admin}/v1/sql"))
        .body(query)
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let resp = http
        .post(format!("{admin}/v1/sql"))
        .bearer_auth(TOKEN)
        .header("accept", "text/csv")
        .body(query)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().unwrap();
    let expected = format!("{},{},{}", written.usage, written.input, written.cost);
    assert_eq!(text.lines().nth(1), Some(expected.as_str()), "{text}");

    let (host, port) = pg.rsplit_once(':').unwrap();
    let psql = Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "admin", "-d", "tally", "-At", "-F", ",", "-c", query,
        ])
        .env("PGPASSWORD", TOKEN)
        .output()
        .expect("psql (postgresql-client) is installed");
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), expected);

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tally serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
