//! Operations, driven like a platform team would: `/healthz` and `/readyz` answer probes
//! without a token and name every check; `/metrics` (admin token) moves by exactly the
//! traffic sent, its token counters equal the sums `tally sql` reads from the tables, and
//! every metric it exposes is documented in docs/operations.md (and the other way round);
//! JSON logs carry the request's id, tenant and key id; SIGTERM during a slow stream lets
//! the stream finish, exits 0, and the request's usage row is there exactly once after a
//! restart; background work (ledger, SQL) runs on threads at a lower CPU priority than
//! the proxy's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Tally;

const ADMIN: &str = "Bearer dev-admin";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn sql(data_dir: &Path, query: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "warn")
        .arg("--data-dir")
        .arg(data_dir)
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

/// The value of `SELECT <one number>` from `tally sql --format csv`.
fn sql_number(data_dir: &Path, query: &str) -> f64 {
    let out = sql(data_dir, query);
    let value = out.lines().nth(1).unwrap_or("").trim();
    if value.is_empty() {
        0.0
    } else {
        value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {out}"))
    }
}

fn scrape(admin: &str) -> String {
    let resp = http()
        .get(format!("{admin}/metrics"))
        .header("authorization", ADMIN)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    resp.text().unwrap()
}

/// Samples: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// The sum of every sample of `name` whose labels contain each of `with`.
fn sum(s: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            k.split_once('{').map_or(k.as_str(), |(n, _)| n).eq(name)
                && with.iter().all(|w| k.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Metric names as one queries them: counters with `_total`, others as declared.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

/// Metric names in docs/operations.md's tables: backticked `tally_…` in a row's first cell.
fn documented_names() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `tally_"))
        .filter_map(|l| l.split_once('`'))
        .map(|(rest, _)| format!("tally_{rest}"))
        .collect()
}

fn chat(proxy: &str, key: &str, stream: bool) -> reqwest::blocking::Response {
    let body = format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"count my tokens"}}]}}"#
    );
    http()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap()
}

fn messages(proxy: &str, key: &str) -> reqwest::blocking::Response {
    http()
        .post(format!("{proxy}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}"#)
        .send()
        .unwrap()
}

fn readyz(admin: &str) -> (u16, serde_json::Value) {
    let resp = http().get(format!("{admin}/readyz")).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

fn wait_ready(admin: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readyz(admin);
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn probes_and_metrics_match_the_traffic_and_the_tables() {
    let t = Tally::up_dev(&[]);

    // Probes need no token; the body names every check.
    let health = http().get(format!("{}/healthz", t.admin)).send().unwrap();
    assert_eq!(health.status(), 200);
    let ready = wait_ready(&t.admin);
    assert_eq!(ready["ready"], true, "{ready}");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["ok"], true, "{c}");
            c["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["proxy", "event_log", "ledger", "tables"]);

    // Metrics need an admin token; tenants' tokens and none are refused.
    let anonymous = http().get(format!("{}/metrics", t.admin)).send().unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = http()
        .get(format!("{}/metrics", t.admin))
        .header("authorization", "Bearer not-a-token")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let before = samples(&scrape(&t.admin));
    for _ in 0..3 {
        assert_eq!(chat(&t.proxy, "dev-acme-k1", false).status(), 200);
    }
    let streamed = chat(&t.proxy, "dev-globex-k2", true);
    assert_eq!(streamed.status(), 200);
    assert!(streamed.text().unwrap().contains("[DONE]"));
    assert_eq!(messages(&t.proxy, "dev-acme-k3").status(), 200);
    assert_eq!(chat(&t.proxy, "not-a-dev-key", false).status(), 401);

    // Request counters and the latency histogram move by exactly what was sent.
    let after = samples(&scrape(&t.admin));
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta(r#"tally_requests_total{provider="openai",route="chat",status="200"}"#),
        4.0
    );
    assert_eq!(
        delta(r#"tally_requests_total{provider="openai",route="chat",status="401"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"tally_requests_total{provider="anthropic",route="messages",status="200"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"tally_request_duration_seconds_count{provider="openai"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"tally_request_duration_seconds_bucket{le="+Inf",provider="openai"}"#),
        5.0
    );
    assert!(
        !after.keys().any(|k| k.contains("req_")),
        "request ids as labels"
    );

    // Everything reaches the log and the tables: tokens and cost equal the SQL sums, the
    // denial is counted by rule, and the ledger catches up (no lag).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        let text = scrape(&t.admin);
        let m = samples(&text);
        let input = sql_number(&t.data_dir, "SELECT sum(input_tokens) FROM usage");
        let output = sql_number(&t.data_dir, "SELECT sum(output_tokens) FROM usage");
        let cost = sql_number(&t.data_dir, "SELECT sum(cost_micros) FROM usage");
        let rows = sql_number(&t.data_dir, "SELECT count(*) FROM usage");
        let ok = input > 0.0
            && sum(&m, "tally_tokens_total", &[r#"kind="input""#]) == input
            && sum(&m, "tally_tokens_total", &[r#"kind="output""#]) == output
            && sum(&m, "tally_cost_micros_total", &[]) == cost
            && get(&m, r#"tally_events_appended_total{type="usage"}"#) == rows
            && rows == 6.0
            && get(&m, r#"tally_ledger_lag_events{table="usage"}"#) == 0.0
            && get(&m, "tally_ledger_events_committed_total") >= rows;
        if ok {
            assert!(sum(&m, "tally_tokens_total", &[r#"provider="anthropic""#]) > 0.0);
            assert_eq!(
                get(
                    &m,
                    r#"tally_decisions_total{rule="gateway-key",rule_kind="auth",outcome="deny"}"#
                ),
                1.0,
                "{text}"
            );
            assert_eq!(get(&m, "tally_spool_records"), 0.0);
            assert_eq!(get(&m, "tally_events_dropped_total"), 0.0);
            assert_eq!(get(&m, "tally_event_append_failures_total"), 0.0);
            assert!(get(&m, "tally_log_appended_records_total") >= rows);
            assert!(get(&m, "tally_log_durable_position") > 0.0);
            assert!(
                get(&m, r#"tally_ledger_committed_position{table="usage"}"#)
                    <= get(&m, "tally_log_durable_position")
            );
            assert!(m.contains_key("tally_event_queue_depth"));
            assert!(m.contains_key("tally_requests_in_flight"));

            // Docs and registry agree, both ways.
            let exposed = exposed_names(&text);
            let documented = documented_names();
            let undocumented: Vec<_> = exposed.difference(&documented).collect();
            let missing: Vec<_> = documented.difference(&exposed).collect();
            assert!(
                undocumented.is_empty(),
                "not in docs/operations.md: {undocumented:?}"
            );
            assert!(
                missing.is_empty(),
                "documented but not exposed: {missing:?}"
            );
            break;
        }
        last = format!("sql input={input} output={output} cost={cost} rows={rows}\n{text}");
        assert!(
            Instant::now() < deadline,
            "metrics never matched the tables:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = last;
    t.stop();
}

#[test]
fn sigterm_lets_a_stream_finish_and_its_usage_lands_once() {
    let t = Tally::up_dev(&[]);
    wait_ready(&t.admin);
    let proxy = t.proxy.clone();
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut resp = http()
            .post(format!("{proxy}/v1/chat/completions"))
            .header("authorization", "Bearer dev-acme-drain")
            .header("content-type", "application/json")
            .header("x-sim-chunk-delay-ms", "100")
            .header("x-sim-output-tokens", "60")
            .body(r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"a long answer"}]}"#)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-tally-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut body = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        let mut after_signal = 0usize;
        loop {
            let n = resp.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
            if signalled {
                after_signal += n;
            } else if body.windows(5).any(|w| w == b"data:") {
                signalled = true;
                first_tx.send(()).unwrap();
            }
        }
        (id, String::from_utf8(body).unwrap(), after_signal)
    });

    // SIGTERM once the stream is flowing.
    first_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the stream started");
    let pid = t.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let signalled_at = Instant::now();

    // Readiness fails while draining (load balancers stop sending), health still answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readyz(&t.admin);
        if status == 503 {
            let proxy = body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "proxy")
                .cloned()
                .unwrap();
            assert_eq!(proxy["ok"], false, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {status} while draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (id, body, after_signal) = client.join().unwrap();
    assert!(body.contains("[DONE]"), "stream cut short: {body}");
    assert!(
        after_signal > 0 && signalled_at.elapsed() > Duration::from_millis(300),
        "the stream should still have been flowing after SIGTERM"
    );
    // Exit 0 within the drain budget (stop() asserts success).
    let dir = t.stop();

    let t = Tally::start(&dir, &[]);
    wait_ready(&t.admin);
    let q = format!(
        "SELECT count(*) AS n, min(finish_state) AS f, min(output_tokens) AS o FROM usage WHERE request_id = '{id}'"
    );
    let out = sql(&t.data_dir, &q);
    let row = out.lines().nth(1).unwrap_or("").to_owned();
    assert!(row.starts_with("1,completed,"), "{out}");
    let output: u64 = row.rsplit(',').next().unwrap().parse().unwrap();
    assert!(output >= 60, "{out}");
    // The row is in the table itself, not only in the log tail.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = samples(&scrape(&t.admin));
        if get(&m, r#"tally_ledger_lag_events{table="usage"}"#) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger never caught up after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sql(&t.data_dir, &q)
            .lines()
            .nth(1)
            .unwrap_or("")
            .starts_with("1,")
    );
    t.stop();
}

#[test]
fn json_logs_carry_request_id_tenant_and_key_id() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let log_path = tmp.path().join("stderr.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "up",
            "--dev",
            "--listen",
            "127.0.0.1:0",
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
        .arg(&data_dir)
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FORMAT", "json")
        .env("TALLY_LOG_FILTER", "info")
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut proxy = None;
    while proxy.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tally started");
        proxy = line
            .strip_prefix("tally proxy listening on ")
            .map(|a| a.trim().to_owned());
    }
    let proxy = proxy.unwrap();
    let resp = chat(&proxy, "dev-acme-k7", false);
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tally did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let mut usage_line = None;
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "usage" && v["span"]["request_id"] == id.as_str() {
            usage_line = Some(v);
        }
    }
    let v = usage_line.unwrap_or_else(|| panic!("no usage log line for {id}:\n{logs}"));
    assert_eq!(v["span"]["tenant"], "acme", "{v}");
    // Dev keys are logged by their derived id, never by the key itself.
    let key_id = v["span"]["key_id"].as_str().unwrap_or_default();
    assert!(key_id.starts_with("dev-acme-"), "{v}");
    assert!(
        !logs.contains("dev-acme-k7"),
        "the raw key reached the logs"
    );
}

/// `(thread name, nice value)` of every thread of process `pid`, from /proc.
fn threads(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the name's closing parenthesis start at field 3 (state); nice is 19.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let nice: i64 = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((comm.trim().to_string(), nice));
    }
    out
}

#[test]
fn background_work_runs_on_threads_scheduled_after_the_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tally::start_with(
        &tmp.path().join("data"),
        "127.0.0.1:0",
        &[],
        Stdio::inherit(),
        &[("TALLY_BACKGROUND__NICE", "3")],
    );
    wait_ready(&t.admin);
    assert_eq!(chat(&t.proxy, "dev-acme-k1", false).status(), 200);
    let threads = threads(t.child.id());
    let background: Vec<_> = threads.iter().filter(|(n, _)| n == "tally-bg").collect();
    assert!(!background.is_empty(), "no background threads: {threads:?}");
    assert!(background.iter().all(|(_, nice)| *nice == 3), "{threads:?}");
    // The proxy's runtime workers, the log writer and the rest keep the default.
    assert!(
        threads.iter().any(|(n, _)| n == "tokio-rt-worker"),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .all(|(n, nice)| n == "tally-bg" || *nice == 0),
        "{threads:?}"
    );
    t.stop();
}
