//! `tally reconcile` end to end, with real processes on loopback: `tally simulate` serves
//! an OpenAI-format provider whose usage and cost reports carry injected discrepancies
//! (aborted streams billed in full, a credit, a price change, model alias names); `tally
//! up` (not --dev) proxies to it with a provider key the gateway holds; clients send
//! traffic through the proxy (including a stream they abort), and a script sends traffic
//! straight to the provider with a key the gateway never saw. Then `tally reconcile
//! --pull` must attribute every difference to the injected cause, exit 0, print JSON
//! that parses and store a run that reads back equal to the report; `--from-file` with
//! the same reports saved gives the same result; and with rules that do not know the
//! gateway's key, the run has unexplained differences over tolerance and exits 3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_events::Timestamp;
use tally_reconcile::{ReconStore, runs};
use tally_simulator::Provider;

/// The provider key the gateway holds for its `openai` upstream.
const GATEWAY_PROVIDER_KEY: &str = "sk-e2e-gateway-held";
/// A script's own provider key: its traffic never passes the gateway.
const BYPASS_KEY: &str = "sk-e2e-someone-elses-script";
/// The gateway key clients use.
const CLIENT_KEY: &str = "tk-e2e-acme-client";
/// Longest any one CLI command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn tally() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_remove("TALLY_CONFIG")
        .env_remove("OPENAI_ADMIN_KEY")
        .env("TALLY_LOG_FILTER", "error");
    c
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run a command to completion within [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A long-running `tally` process whose stdout lines are collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The rest of the first stdout line starting with `prefix`.
    fn line_after(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{prefix}` line within 30 s"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "tally exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "tally did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn day_of(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d").to_string()
}

/// Traffic must not straddle an hour boundary (each side stamps a request at a slightly
/// different instant): wait for the next hour when less than a minute is left.
fn away_from_hour_boundary() {
    let into_hour = (Timestamp::now().as_micros() / 1_000_000) % 3600;
    if into_hour > 3600 - 60 {
        std::thread::sleep(Duration::from_secs((3600 - into_hour + 2) as u64));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn chat(proxy: &str, model: &str, content: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]}))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Start a long stream, read a few chunks, and go away.
fn aborted_stream(proxy: &str) {
    let mut resp = reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-sim-output-tokens", "400")
        .header("x-sim-chunk-delay-ms", "20")
        .json(&serde_json::json!({
            "model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "tell me a long story"}]
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while seen.windows(5).filter(|w| w == b"data:").count() < 4 {
        let n = resp.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before it could be aborted");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(resp);
}

fn sql(config: &Path, data: &Path, query: &str) -> String {
    let mut c = tally();
    c.arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["sql", "--format", "csv", query]);
    let r = run(c);
    assert!(r.status.success(), "tally sql: {}", r.stderr);
    r.stdout
}

fn ledger_status(config: &Path, data: &Path) -> Value {
    let mut c = tally();
    c.arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["ledger", "status", "--json"]);
    let r = run(c);
    assert!(r.status.success(), "tally ledger status: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

fn reconcile(config: &Path, data: &Path, args: &[&str]) -> Run {
    let mut c = tally();
    c.arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("reconcile")
        .args(args)
        .env("OPENAI_ADMIN_KEY", "sk-admin-e2e");
    run(c)
}

fn findings<'a>(report: &'a Value, cause: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["cause"] == cause)
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// `stored run rec_… (N finding(s))` on stderr.
fn stored_run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("stored run "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no stored run in: {stderr}"))
        .to_owned()
}

/// Fetch one report page from the simulator as the pull does and save it.
fn save_report(sim: &str, path_and_query: &str, to: &Path) -> PathBuf {
    let resp = reqwest::blocking::Client::new()
        .get(format!("{sim}{path_and_query}"))
        .bearer_auth("sk-admin-e2e")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "{path_and_query}");
    let body = resp.text().unwrap();
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["has_more"], false, "one page holds the period: {body}");
    std::fs::write(to, body).unwrap();
    to.to_path_buf()
}

#[test]
fn reconcile_against_the_simulator_attributes_every_injected_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    away_from_hour_boundary();
    let first_day = day_of(Timestamp::now());

    // The provider, with its report injections.
    let sim_cfg = dir.join("sim.yaml");
    std::fs::write(
        &sim_cfg,
        format!(
            "simulator:
  reports:
    bill_aborted_in_full: true
    report_model: requested
    price_changes:
      - {{ model: gpt-4o-mini, effective_from: \"2020-01-01T00:00:00Z\", input: 0.20, output: 0.80 }}
    credits:
      - {{ provider: openai, date: \"{first_day}\", amount_usd: 1.5, description: \"Outage credit\" }}
"
        ),
    )
    .unwrap();
    let mut c = tally();
    c.arg("--config")
        .arg(&sim_cfg)
        .args(["simulate", "--listen", "127.0.0.1:0"]);
    let sim_proc = Proc::spawn(c);
    let sim = sim_proc.line_after("tally provider simulator listening on ");

    // The gateway: holds the provider key, cancels upstream streams its clients abandon.
    let hash = run({
        let mut c = tally();
        c.args(["keys", "hash", CLIENT_KEY]);
        c
    });
    assert!(hash.status.success());
    let gateway_key_id = tally_simulator::api_key_id(Provider::Openai, GATEWAY_PROVIDER_KEY);
    let cfg = dir.join("tally.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:
  on_client_abort: cancel
  upstreams:
    openai: {{ base_url: \"{sim}\", provider: openai, credentials: {{ api_key_env: E2E_OPENAI_KEY }} }}
  keys:
    - {{ id: acme-client, tenant: acme, hash: \"{}\" }}
postgres:
  enabled: false
reconcile:
  accounts:
    - {{ provider: openai, upstream: openai, api_key_ids: [{gateway_key_id}] }}
",
            hash.stdout.trim()
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let mut c = tally();
    c.arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-seconds",
            "5",
        ])
        .env("E2E_OPENAI_KEY", GATEWAY_PROVIDER_KEY);
    let up = Proc::spawn(c);
    let proxy = up.line_after("tally proxy listening on ");

    // Traffic through the gateway: 3 + 1 answered chats, an embedding, a completed
    // stream and an aborted one.
    for i in 0..3 {
        assert_eq!(chat(&proxy, "gpt-4o-mini", &format!("question {i}")), 200);
    }
    assert_eq!(chat(&proxy, "gpt-4o", "what is a ledger?"), 200);
    let http = reqwest::blocking::Client::new();
    let embed = http
        .post(format!("{proxy}/v1/embeddings"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": "text-embedding-3-small", "input": "reconcile me"}))
        .send()
        .unwrap();
    assert_eq!(embed.status(), 200);
    let streamed = http
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({
            "model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "stream a short answer"}]
        }))
        .send()
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert!(streamed.text().unwrap().contains("[DONE]"));
    aborted_stream(&proxy);
    // Bypass: a script calling the provider directly with its own key.
    for i in 0..2 {
        let r = http
            .post(format!("{sim}/v1/chat/completions"))
            .bearer_auth(BYPASS_KEY)
            .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("direct {i}")}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Both sides have everything: the simulator served 9 requests (the aborted stream
    // recorded as incomplete), the ledger committed the gateway's 7 usage events (so no
    // query reads them from the log tail any more).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served: Vec<Value> = http
            .get(format!("{sim}/_sim/served"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let status = ledger_status(&cfg, &data);
        let usage = status["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "usage")
            .cloned()
            .unwrap_or_default();
        if served.len() == 9
            && served.iter().any(|r| r["completed"] == false)
            && usage["rows"] == 7
            && usage["lag_events"] == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all traffic recorded: served {} usage {usage}",
            served.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sql(&cfg, &data, "SELECT count(*) AS n FROM usage"),
        "n\n7\n"
    );
    let aborted = sql(
        &cfg,
        &data,
        "SELECT finish_state, usage_source FROM usage WHERE finish_state = 'client_aborted'",
    );
    assert_eq!(
        aborted,
        "finish_state,usage_source\nclient_aborted,estimated\n",
        "{}",
        sql(
            &cfg,
            &data,
            "SELECT route, model_requested, finish_state, usage_source, status_code, input_tokens, output_tokens FROM usage"
        )
    );

    let last_day = day_of(Timestamp::now());
    let period = if first_day == last_day {
        first_day.clone()
    } else {
        format!("{first_day}..{last_day}")
    };

    // 1. Pull and reconcile: every difference has its injected cause; exit 0.
    let json_path = dir.join("reconcile.json");
    let r = reconcile(
        &cfg,
        &data,
        &[
            "--provider",
            "openai",
            "--period",
            &period,
            "--pull",
            "--base-url",
            &sim,
            "--format",
            "json",
            "--out",
            json_path.to_str().unwrap(),
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("OK: every difference explained"),
        "{}",
        r.stderr
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap())
        .expect("the JSON report parses");
    let causes: std::collections::BTreeSet<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cause"].as_str().unwrap())
        .collect();
    let expected = [
        "aborted_stream_billed",
        "bypass_traffic",
        "model_alias",
        "provider_credit",
        "stale_price_table",
    ];
    for c in expected {
        assert!(causes.contains(c), "{c} not found in {causes:?}");
    }
    for c in &causes {
        assert!(
            expected.contains(c) || *c == "unexplained",
            "unexpected cause {c}: {report:#}"
        );
    }
    // What is left unexplained is per-line rounding of the cost report, within tolerance.
    for f in findings(&report, "unexplained") {
        assert_eq!(f["within_tolerance"], true, "{f}");
        assert!(int(&f["money_micros"]).abs() <= 2, "{f}");
        assert!(
            f["difference"]
                .as_object()
                .unwrap()
                .values()
                .all(|v| v == 0),
            "{f}"
        );
    }
    assert_eq!(report["unexplained_over_tolerance"], 0);
    // Gateway side: the 7 answered attempts through the proxy.
    assert_eq!(report["gateway"]["figures"]["requests"], 7);
    // Provider side: those plus the 2 bypass requests.
    assert_eq!(report["provider_totals"]["figures"]["requests"], 9);
    let bypass = findings(&report, "bypass_traffic");
    assert_eq!(
        bypass
            .iter()
            .map(|f| int(&f["difference"]["requests"]))
            .sum::<i64>(),
        2
    );
    assert!(bypass.iter().all(|f| {
        f["account"] == "(bypass)"
            && f["evidence"]
                .as_str()
                .unwrap()
                .contains(&tally_simulator::api_key_id(Provider::Openai, BYPASS_KEY))
    }));
    let credit = findings(&report, "provider_credit");
    assert_eq!(credit.len(), 1);
    assert_eq!(int(&credit[0]["money_micros"]), -1_500_000);
    let aborted = findings(&report, "aborted_stream_billed");
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0]["account"], "openai");
    assert!(
        aborted[0]["model"]
            .as_str()
            .unwrap()
            .starts_with("gpt-4o-2")
    );
    assert!(int(&aborted[0]["difference"]["output"]) > 0);
    assert_eq!(aborted[0]["difference"]["requests"], 0);
    let stale = findings(&report, "stale_price_table");
    assert!(!stale.is_empty());
    assert!(stale.iter().all(|f| {
        f["model"].as_str().unwrap().starts_with("gpt-4o-mini") && int(&f["money_micros"]) > 0
    }));
    // The price change is +33.3% on every kind; the provider rounds each cost line.
    let evidence = stale[0]["evidence"].as_str().unwrap();
    let ratio: f64 = evidence
        .split("the provider charged ")
        .nth(1)
        .and_then(|r| r.split('×').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no price ratio in {evidence}"));
    assert!((1.32..1.35).contains(&ratio), "{evidence}");
    let aliases: Vec<&str> = findings(&report, "model_alias")
        .iter()
        .map(|f| f["evidence"].as_str().unwrap())
        .collect();
    assert!(
        aliases
            .iter()
            .any(|e| e.contains("`gpt-4o-mini` for gateway model `gpt-4o-mini-2024-07-18`")),
        "{aliases:?}"
    );
    // The attribution adds up to the money difference, to the µ$.
    let attributed: i64 = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| int(&f["money_micros"]))
        .sum();
    assert_eq!(attributed, int(&report["money_difference_micros"]));

    // The stored run reads back as the report said.
    let run_id = stored_run_id(&r.stderr);
    let store = ReconStore::open(&data.join("tables").to_string_lossy(), []).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored = rt
        .block_on(runs::load(&store, &run_id))
        .unwrap()
        .expect("the run is stored");
    assert!(stored.passed);
    assert_eq!(stored.provider, "openai");
    assert_eq!(stored.gateway_requests, 7);
    assert_eq!(stored.provider_requests, 9);
    assert_eq!(
        stored.provider_money_micros,
        int(&report["provider_totals"]["money_micros"])
    );
    assert_eq!(
        stored.gateway_money_micros,
        int(&report["gateway"]["money_micros"])
    );
    let printed = report["findings"].as_array().unwrap();
    assert_eq!(stored.findings, printed.len() as i64);
    assert_eq!(stored.discrepancies.len(), printed.len());
    for (s, p) in stored.discrepancies.iter().zip(printed) {
        assert_eq!(s.cause, p["cause"].as_str().unwrap());
        assert_eq!(s.account, p["account"].as_str().unwrap());
        assert_eq!(s.model.as_deref(), p["model"].as_str());
        assert_eq!(s.money_micros, int(&p["money_micros"]));
        assert_eq!(s.requests, int(&p["difference"]["requests"]));
        assert_eq!(s.input_tokens, int(&p["difference"]["input"]));
        assert_eq!(s.output_tokens, int(&p["difference"]["output"]));
        assert_eq!(s.evidence, p["evidence"].as_str().unwrap());
        assert_eq!(
            serde_json::to_value(s.bucket_start).unwrap(),
            p["bucket_start"]
        );
    }

    // The same through `tally sql`: the run row, and the findings by cause.
    let run_row = sql(
        &cfg,
        &data,
        &format!(
            "SELECT passed, findings, gateway_requests, provider_requests, unexplained_over_tolerance \
             FROM reconciliation_runs WHERE run_id = '{run_id}'"
        ),
    );
    assert_eq!(
        run_row,
        format!(
            "passed,findings,gateway_requests,provider_requests,unexplained_over_tolerance\ntrue,{},7,9,0\n",
            printed.len()
        )
    );
    let mut by_cause: std::collections::BTreeMap<String, (usize, i64)> = Default::default();
    for f in printed {
        let e = by_cause
            .entry(f["cause"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += 1;
        e.1 += int(&f["money_micros"]);
    }
    let expected_csv: String = std::iter::once("cause,n,money\n".to_owned())
        .chain(by_cause.iter().map(|(c, (n, m))| format!("{c},{n},{m}\n")))
        .collect();
    assert_eq!(
        sql(
            &cfg,
            &data,
            &format!(
                "SELECT cause, count(*) AS n, sum(money_micros) AS money FROM discrepancies \
                 WHERE run_id = '{run_id}' GROUP BY cause ORDER BY cause"
            ),
        ),
        expected_csv
    );

    // Pulling again adds nothing; the Markdown report says the same.
    let r = reconcile(
        &cfg,
        &data,
        &[
            "--provider",
            "openai",
            "--period",
            &period,
            "--pull",
            "--base-url",
            &sim,
            "--no-store",
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("usage 0 new, 0 replaced; costs 0 new, 0 replaced"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.starts_with("# Reconciliation: openai"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("| bypass_traffic | 1 | 2 |"),
        "{}",
        r.stdout
    );
    assert!(!r.stderr.contains("stored run"));

    // 2. The same reports saved as files, imported into a copy of the gateway's data
    //    without any provider rows, give the same reconciliation.
    let (start_s, end_s) = {
        let p = tally_reconcile::export::Period::parse(&period).unwrap();
        (p.start_micros() / 1_000_000, p.end_micros() / 1_000_000)
    };
    let range = format!("start_time={start_s}&end_time={end_s}");
    let files = [
        save_report(
            &sim,
            &format!(
                "/v1/organization/usage/completions?{range}&bucket_width=1h&group_by=project_id&group_by=api_key_id&group_by=model&group_by=batch&group_by=service_tier&limit=168"
            ),
            &dir.join("completions.json"),
        ),
        save_report(
            &sim,
            &format!(
                "/v1/organization/usage/embeddings?{range}&bucket_width=1h&group_by=project_id&group_by=api_key_id&group_by=model&limit=168"
            ),
            &dir.join("embeddings.json"),
        ),
        save_report(
            &sim,
            &format!(
                "/v1/organization/costs?{range}&bucket_width=1d&group_by=project_id&group_by=line_item&limit=180"
            ),
            &dir.join("costs.json"),
        ),
    ];
    up.stop();
    drop(sim_proc);
    let data2 = dir.join("data2");
    copy_dir(&data.join("log"), &data2.join("log"));
    for t in ["usage", "decisions", "corrections"] {
        if data.join("tables").join(t).exists() {
            copy_dir(&data.join("tables").join(t), &data2.join("tables").join(t));
        }
    }
    let json2 = dir.join("reconcile-from-file.json");
    let mut args = vec![
        "--provider",
        "openai",
        "--period",
        &period,
        "--format",
        "json",
        "--out",
        json2.to_str().unwrap(),
    ];
    for f in &files {
        args.extend(["--from-file", f.to_str().unwrap()]);
    }
    let r = reconcile(&cfg, &data2, &args);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    let from_file: Value = serde_json::from_str(&std::fs::read_to_string(&json2).unwrap()).unwrap();
    assert_eq!(from_file, report, "--from-file and --pull disagree");

    // 3. Rules that do not know the gateway's provider key: its traffic has no provider
    //    counterpart, a real unexplained difference over tolerance, and the exit status
    //    is 3. The failed run is stored as such.
    let wrong = dir.join("wrong-rules.yaml");
    std::fs::write(
        &wrong,
        "accounts:\n  - { provider: openai, upstream: openai, api_key_ids: [key_000000000000] }\n",
    )
    .unwrap();
    let r = reconcile(
        &cfg,
        &data2,
        &[
            "--provider",
            "openai",
            "--period",
            &period,
            "--rules",
            wrong.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(r.status.code(), Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("FAIL:"), "{}", r.stderr);
    let failed: Value = serde_json::from_str(&r.stdout).unwrap();
    let over = int(&failed["unexplained_over_tolerance"]);
    assert!(over > 0);
    let unexplained = findings(&failed, "unexplained");
    assert!(
        unexplained
            .iter()
            .any(|f| f["within_tolerance"] == false && int(&f["difference"]["requests"]) < 0),
        "{failed:#}"
    );
    let store2 = ReconStore::open(&data2.join("tables").to_string_lossy(), []).unwrap();
    let all = rt.block_on(runs::load_all(&store2)).unwrap();
    assert_eq!(all.len(), 2);
    let last = all
        .iter()
        .find(|s| s.run_id == stored_run_id(&r.stderr))
        .unwrap();
    assert!(!last.passed);
    assert_eq!(last.unexplained_over_tolerance, over);

    // A bad period is a clear error, not a panic (exit 1).
    let r = reconcile(
        &cfg,
        &data2,
        &["--provider", "openai", "--period", "2026-13"],
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stderr.contains("reconcile.period"), "{}", r.stderr);
}
