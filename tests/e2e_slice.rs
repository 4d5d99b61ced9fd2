//! The vertical slice, driven like a user: a request through `tally up --dev` becomes a
//! row in the Delta tables that `tally sql` (CLI), `POST /v1/sql` (HTTP) and psql (the
//! Postgres wire protocol) return, a denial is explained by `tally why`, and the tables
//! survive a restart as plain Delta Lake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Tally;

fn tally(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "warn")
        .arg("--data-dir")
        .arg(data_dir);
    c
}

fn sql(data_dir: &std::path::Path, query: &str) -> String {
    let out = tally(data_dir)
        .args(["sql", "--format", "csv", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tally sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chat(proxy: &str, key: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"count my tokens"}]}"#)
        .send()
        .unwrap()
}

#[test]
fn a_request_becomes_a_row_you_can_select() {
    let t = Tally::up_dev(&[]);
    let resp = chat(&t.proxy, "dev-acme-slice");
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let denied = chat(&t.proxy, "wrong-key");
    assert_eq!(denied.status(), 401);
    let denied_id = denied.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // Visible to SQL within a second (tail or table), from another process.
    let query = format!(
        "SELECT tenant, finish_state, input_tokens > 0 AS has_input FROM usage WHERE request_id = '{id}'"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = String::new();
    while Instant::now() < deadline {
        found = sql(&t.data_dir, &query);
        if found.contains("acme") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(found.contains("acme,completed,true"), "{found}");

    // HTTP SQL API with the dev admin token; refused without a token.
    let http = reqwest::blocking::Client::new();
    let body =
        format!("{{\"sql\": \"SELECT count(*) AS n FROM usage WHERE request_id = '{id}'\"}}");
    let r = http
        .post(format!("{}/v1/sql", t.admin))
        .bearer_auth("dev-admin")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["rows"][0]["n"], 1, "{v}");
    let r = http
        .post(format!("{}/v1/sql", t.admin))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The ledger commits to Delta in the background: wait for the row to be in the table.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tally(&t.data_dir)
            .args(["ledger", "status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["tables"][0]["lag_events"] == 0
            && status["tables"][0]["committed_position"].is_object()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger did not catch up: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // psql through the Postgres wire protocol, if psql is installed.
    if let (Some(pg), Ok(_)) = (&t.postgres, Command::new("psql").arg("--version").output()) {
        let (host, port) = pg.rsplit_once(':').unwrap();
        let out = Command::new("psql")
            .args([
                "-h", host, "-p", port, "-U", "admin", "-d", "tally", "-At", "-c",
            ])
            .arg(format!(
                "SELECT tenant FROM usage WHERE request_id = '{id}'"
            ))
            .env("PGPASSWORD", "dev-admin")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "acme");
    } else {
        eprintln!("psql not installed: Postgres wire check skipped");
    }

    // After a restart everything is still there, exactly once, read from Delta.
    let data_dir = t.stop();
    let t = Tally::start(&data_dir, &[]);
    let n = sql(
        &t.data_dir,
        &format!("SELECT count(*) AS n FROM usage WHERE request_id IN ('{id}', '{denied_id}')"),
    );
    assert_eq!(n.lines().nth(1), Some("2"), "{n}");
    assert!(
        data_dir
            .join("tables/usage/_delta_log/00000000000000000000.json")
            .exists()
    );

    // Why was it blocked?
    let out = tally(&t.data_dir)
        .args(["why", &denied_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gateway-key") && text.contains("not known"),
        "{text}"
    );

    // Where did my tokens go?
    let out = tally(&t.data_dir)
        .args(["usage", "--by", "tenant", "--since", "1d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("acme"), "{text}");
    drop(t);
}
