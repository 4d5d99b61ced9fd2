//! Crash suite: `tally up` under load from the official OpenAI and Anthropic Python SDKs
//! is killed with SIGKILL at random moments (20 times; `TALLY_CRASH_KILLS` sets more for
//! the long form) and restarted on the same port and data directory each time. At the
//! end, from the client side: every request that got a response has exactly one usage
//! row, with the tokens the SDK reported; no event is stored twice; and the counters the
//! restarted process rebuilt equal the events (the `x-ratelimit-*` headers of a last
//! request against SQL over the rows). The kill schedule's seed is printed
//! (`TALLY_CRASH_SEED` replays it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::run_ok;
use common::{Rng, Tally, away_from_midnight, python};

const LIMIT_REQUESTS: i64 = 1_000_000;
const LIMIT_OUTPUT_TOKENS: i64 = 1_000_000_000;
const KEY: &str = "dev-crash-load";
const WORKERS: usize = 6;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// A free loopback port for the proxy, kept across restarts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Config and policy: a request limit and an output-token cap far above what the test
/// sends, so nothing is refused but both counters are reported on every response.
fn config(dir: &Path) -> Vec<String> {
    let policy = dir.join("policies.yaml");
    std::fs::write(
        &policy,
        format!(
            "rules:
  - name: crash-requests
    action: rate-limit
    limit: {LIMIT_REQUESTS}
    unit: requests
    window: 1h
  - name: crash-output
    action: usage-cap
    limit_tokens: {LIMIT_OUTPUT_TOKENS}
    unit: output_tokens
    period: day
"
        ),
    )
    .unwrap();
    let config = dir.join("tally.yaml");
    // Group commits every 100 ms hold appended events in memory that long: a kill then
    // loses them, and only responses that waited for their event are safe.
    std::fs::write(
        &config,
        format!(
            "proxy:\n  policy_file: {}\nlog:\n  fsync_interval_ms: 100\n",
            policy.display()
        ),
    )
    .unwrap();
    vec!["--config".into(), config.to_str().unwrap().into()]
}

/// One request the load client made.
#[derive(Debug, serde::Deserialize)]
struct Sent {
    kind: String,
    status: Option<u16>,
    request_id: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    error: Option<String>,
}

/// A last non-streaming request: its `x-ratelimit-remaining-*` headers (requests,
/// tokens) and request id.
fn probe(proxy: &str, max_tokens: u64) -> (i64, i64, String) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "probe"}]}),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| -> i64 {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let out = (
        header("x-ratelimit-remaining-requests"),
        header("x-ratelimit-remaining-tokens"),
        resp.headers()["x-tally-request-id"]
            .to_str()
            .unwrap()
            .to_owned(),
    );
    let _ = resp.bytes();
    out
}

/// `tally sql --format json` (one JSON object per row).
fn sql(data_dir: &Path, query: &str) -> Vec<serde_json::Value> {
    run_ok(data_dir, &["sql", "--format", "json", query])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn num(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn sigkill_under_sdk_load_loses_no_answered_request_and_duplicates_nothing() {
    // The output-token cap is daily: keep the run inside one UTC day.
    away_from_midnight(600);
    let kills = env_number("TALLY_CRASH_KILLS").unwrap_or(20) as usize;
    let seed = env_number("TALLY_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("kill schedule seed: {seed} (TALLY_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let args = config(tmp.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_dir = tmp.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut t = Tally::start_on(&data_dir, &listen, &args);

    let stop = tmp.path().join("stop-load");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/crash_load.py");
    let mut load = Command::new(python())
        .arg(script)
        .arg(&t.proxy)
        .arg(KEY)
        .arg("900")
        .arg(WORKERS.to_string())
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let stdout = load.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| serde_json::from_str::<Sent>(&l.unwrap()).expect("json line"))
            .collect::<Vec<_>>()
    });

    let started = Instant::now();
    let mut downtime = Duration::ZERO;
    // Requests the test itself sent to see the proxy answer after a restart; answered,
    // so they must have their rows too.
    let mut probes = Vec::new();
    for _ in 0..kills {
        // One kill in four lands while the process still warms up (tokenizer tables);
        // the others once it answers, within the next 0.3-1.5 s of load.
        if rng.between(0, 4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.between(50, 1_000)));
        } else {
            probes.push(probe(&t.proxy, 16).2);
            std::thread::sleep(Duration::from_millis(rng.between(300, 1_500)));
        }
        t.child.kill().unwrap(); // SIGKILL
        t.child.wait().unwrap();
        let down = Instant::now();
        drop(t);
        t = Tally::start_on(&data_dir, &listen, &args);
        downtime += down.elapsed();
    }
    // Traffic after the last restart, on counters rebuilt from the events.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, b"").unwrap();
    assert!(load.wait().unwrap().success(), "load client failed");
    let sent = reader.join().unwrap();
    let elapsed = started.elapsed();

    let probe_max_tokens = 64;
    let (remaining_requests, remaining_tokens, probe_id) = probe(&t.proxy, probe_max_tokens);
    let data_dir = t.stop();

    // Every answered request: exactly one usage row, with the SDK's tokens.
    let rows = sql(
        &data_dir,
        "SELECT request_id, input_tokens, output_tokens, finish_state, retry_attempt FROM usage",
    );
    let mut by_request: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for r in &rows {
        by_request
            .entry(r["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    let answered: Vec<&Sent> = sent.iter().filter(|s| s.status.is_some()).collect();
    let ok = answered.iter().filter(|s| s.status == Some(200)).count();
    let unanswered = sent.len() - answered.len();
    let mut lost: Vec<String> = probes
        .iter()
        .filter(|id| by_request.get(*id).map(Vec::len) != Some(1))
        .cloned()
        .collect();
    for s in &answered {
        let id = s
            .request_id
            .as_deref()
            .expect("a response carries its request id");
        match by_request.get(id).map(Vec::as_slice) {
            Some([row]) => {
                if s.status == Some(200) {
                    assert_eq!(
                        s.input_tokens,
                        Some(num(&row["input_tokens"]) as u64),
                        "{s:?} {row}"
                    );
                    assert_eq!(
                        s.output_tokens,
                        Some(num(&row["output_tokens"]) as u64),
                        "{s:?} {row}"
                    );
                }
            }
            Some(more) => panic!("{} rows for answered request {id}", more.len()),
            None => lost.push(id.to_owned()),
        }
    }
    let duplicates = num(&sql(
        &data_dir,
        "SELECT count(*) - count(DISTINCT event_id) AS d FROM usage",
    )[0]["d"]);
    let decision_duplicates = num(&sql(
        &data_dir,
        "SELECT count(*) - count(DISTINCT event_id) AS d FROM decisions",
    )[0]["d"]);

    // Counters after the restarts equal the events: requests count attempt 0 of every
    // request that was not refused; the cap counts output tokens of every attempt. The
    // probe's remaining figures include its own request and its reservation.
    let totals = &sql(
        &data_dir,
        "SELECT sum(CASE WHEN retry_attempt = 0 THEN 1 ELSE 0 END) AS requests, \
         sum(output_tokens) AS output FROM usage \
         WHERE tenant = 'crash' AND finish_state <> 'denied'",
    )[0];
    let probe_output = num(&sql(
        &data_dir,
        &format!("SELECT output_tokens FROM usage WHERE request_id = '{probe_id}'"),
    )[0]["output_tokens"]);
    let requests = num(&totals["requests"]);
    let output_before_probe = num(&totals["output"]) - probe_output;

    println!(
        "crash suite: {kills} kills over {elapsed:.1?} ({downtime:.1?} restarting); {} requests sent by {WORKERS} SDK workers: {} answered ({ok} with 200), {unanswered} without a response; {} probes answered; {} usage rows; lost {}; duplicate usage events {duplicates}, duplicate decision events {decision_duplicates}",
        sent.len(),
        answered.len(),
        probes.len(),
        rows.len(),
        lost.len(),
    );
    assert!(
        lost.is_empty(),
        "answered requests without a usage row: {lost:?}"
    );
    assert_eq!(duplicates, 0);
    assert_eq!(decision_duplicates, 0);
    let mut errors: HashMap<&str, usize> = HashMap::new();
    for e in sent.iter().filter_map(|s| s.error.as_deref()) {
        *errors.entry(e.get(..60).unwrap_or(e)).or_default() += 1;
    }
    println!("errors without a response: {errors:?}");
    assert!(
        ok >= kills,
        "too little load got through: {ok} answered with 200"
    );
    assert!(
        unanswered > 0 || kills == 0,
        "no kill interrupted a request: the kill schedule missed the load"
    );
    assert!(
        sent.iter()
            .any(|s| s.kind.ends_with("stream") && s.status == Some(200)),
        "streams answered"
    );
    assert_eq!(
        remaining_requests,
        LIMIT_REQUESTS - requests,
        "request counter after restarts"
    );
    assert_eq!(
        remaining_tokens,
        LIMIT_OUTPUT_TOKENS - output_before_probe - probe_max_tokens as i64,
        "output-token counter after restarts"
    );
}
