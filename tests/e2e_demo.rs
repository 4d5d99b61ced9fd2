//! `tally demo --exit` end to end, as a new user runs it: the built binary on loopback
//! ports with a fresh data directory. What it printed must be what the tables hold:
//! the usage totals and denials equal SQL sums over `usage_corrected` and `decisions`,
//! the "why" trace names a request that `decisions` holds with the same rule, and the
//! reconciliation's causes are the injected ones and equal the stored `discrepancies`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo must finish well within this (it takes seconds).
const DEMO_LIMIT: Duration = Duration::from_secs(120);

fn tally() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.env_remove("TALLY_CONFIG")
        .env_remove("TALLY_DATA_DIR")
        .env_remove("TALLY_LOG_FILTER");
    cmd
}

/// Run `tally demo --exit` on free loopback ports; (stdout, stderr, wall time).
fn run_demo(cwd: &Path, data_dir: &Path) -> (String, String, Duration) {
    let started = Instant::now();
    let mut child = tally()
        .args([
            "demo",
            "--exit",
            "--proxy-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--postgres-listen",
            "127.0.0.1:0",
            "--simulator-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally demo");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEMO_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally demo did not finish within {DEMO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    assert!(
        status.success(),
        "tally demo failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    (stdout, stderr, elapsed)
}

/// `tally sql --format csv` rows (header dropped).
fn sql(cwd: &Path, data_dir: &Path, query: &str) -> Vec<Vec<String>> {
    let out = tally()
        .args(["sql", "--format", "csv"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg(query)
        .current_dir(cwd)
        .output()
        .expect("run tally sql");
    assert!(
        out.status.success(),
        "tally sql {query:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn int(s: &str) -> i64 {
    let t = s.trim();
    if t.is_empty() {
        return 0;
    }
    t.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// `$0.035992` / `-$0.010000` → micro-dollars.
fn micros(s: &str) -> i64 {
    let t = s.trim();
    let (sign, t) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t),
    };
    let t = t
        .strip_prefix('$')
        .unwrap_or_else(|| panic!("not dollars: {s:?}"));
    let (whole, frac) = t.split_once('.').unwrap();
    assert_eq!(frac.len(), 6, "six decimals in {s:?}");
    sign * (int(whole) * 1_000_000 + int(frac))
}

/// The lines of the section that starts with `== {title}`.
fn section<'a>(stdout: &'a str, title: &str) -> &'a str {
    let start = stdout
        .find(&format!("== {title}"))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{stdout}"));
    let rest = &stdout[start + 3..];
    let end = rest.find("\n== ").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// Findings of the stored reconciliation runs, per cause: (count, money µ$).
fn stored_discrepancies(data_dir: &Path) -> BTreeMap<String, (i64, i64)> {
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = data_dir.join("tables").display().to_string();
    let batches = rt.block_on(async {
        let store =
            tally_reconcile::ReconStore::open(&root, Vec::<(String, String)>::new()).unwrap();
        store.read("discrepancies").await.unwrap()
    });
    let mut out = BTreeMap::new();
    for b in &batches {
        let cause =
            arrow::compute::cast(b.column_by_name("cause").unwrap(), &DataType::Utf8).unwrap();
        let cause = cause.as_any().downcast_ref::<StringArray>().unwrap();
        let money =
            arrow::compute::cast(b.column_by_name("money_micros").unwrap(), &DataType::Int64)
                .unwrap();
        let money = money.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            let e = out.entry(cause.value(i).to_owned()).or_insert((0, 0));
            e.0 += 1;
            e.1 += money.value(i);
        }
    }
    out
}

#[test]
fn demo_prints_what_the_tables_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tally-demo");
    let (stdout, stderr, elapsed) = run_demo(tmp.path(), &data);
    eprintln!("tally demo took {elapsed:?}");
    assert!(
        data.join(".tally-demo").exists(),
        "the data dir is marked as the demo's"
    );
    // Progress lines went to stderr.
    assert!(stderr.contains("[1/6] starting the stack"), "{stderr}");
    assert!(stderr.contains("[6/6] done"), "{stderr}");

    // 1. Where did my tokens go: the TOTAL row equals the SQL sums.
    let usage = section(&stdout, "Where did my tokens go?");
    let total: Vec<&str> = usage
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .expect("TOTAL row")
        .split_whitespace()
        .collect();
    assert_eq!(total.len(), 8, "{total:?}");
    let printed = (
        int(total[1]),
        int(total[2]),
        int(total[3]),
        int(total[4]),
        int(total[5]),
        int(total[6]),
        micros(total[7]),
    );
    let row = &sql(
        tmp.path(),
        &data,
        "SELECT count(*), sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), \
         sum(output_tokens), sum(reasoning_tokens), sum(cost_micros) FROM usage_corrected",
    )[0];
    let tables = (
        int(&row[0]),
        int(&row[1]),
        int(&row[2]),
        int(&row[3]),
        int(&row[4]),
        int(&row[5]),
        int(&row[6]),
    );
    assert_eq!(
        printed, tables,
        "printed (requests, input, cached, cache_write, output, reasoning, cost) vs SQL"
    );
    assert!(printed.0 >= 80, "a realistic workload: {printed:?}");
    assert!(printed.2 > 0, "cached tokens from the long shared prompt");
    assert!(printed.5 > 0, "reasoning tokens from the thinking model");

    // Denials by rule equal the decisions table.
    let mut printed_denials = BTreeMap::new();
    for line in usage.lines() {
        let l = line.trim();
        if let Some((rule, rest)) = l.split_once(" (")
            && let Some(n) = rest
                .strip_suffix(" requests")
                .and_then(|r| r.split("): ").nth(1))
            && rest.contains(", deny)")
        {
            printed_denials.insert(rule.to_owned(), int(n));
        }
    }
    let table_denials: BTreeMap<String, i64> = sql(
        tmp.path(),
        &data,
        "SELECT rule, count(DISTINCT request_id) FROM decisions WHERE outcome = 'deny' GROUP BY rule",
    )
    .into_iter()
    .map(|r| (r[0].clone(), int(&r[1])))
    .collect();
    assert_eq!(printed_denials, table_denials);
    for rule in [
        "hobby-plan-models",
        "search-per-key-rpm",
        "labs-daily-budget",
    ] {
        assert!(
            table_denials.get(rule).is_some_and(|n| *n > 0),
            "denials by {rule}: {table_denials:?}"
        );
    }
    // Aborted streams, failures and retries are part of the workload.
    for (state, what) in [
        ("client_aborted", "aborted streams"),
        ("upstream_error", "upstream errors"),
    ] {
        let n = int(&sql(
            tmp.path(),
            &data,
            &format!("SELECT count(*) FROM usage WHERE finish_state = '{state}'"),
        )[0][0]);
        assert!(n > 0, "{what} in the usage table");
    }
    let retries = int(&sql(
        tmp.path(),
        &data,
        "SELECT count(*) FROM usage WHERE retry_attempt > 0",
    )[0][0]);
    assert!(retries > 0, "gateway retries in the usage table");
    let providers = sql(
        tmp.path(),
        &data,
        "SELECT DISTINCT provider FROM usage ORDER BY provider",
    );
    let providers: Vec<&str> = providers.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(providers, ["anthropic", "gemini", "openai"]);

    // 2. Why was this blocked: the request is in `decisions` with the printed rule.
    let why = section(&stdout, "Why was request ");
    let id = why
        .strip_prefix("Why was request ")
        .and_then(|r| r.split_whitespace().next())
        .expect("request id in the why heading");
    let printed_rule = why
        .lines()
        .find_map(|l| l.strip_prefix("Denied by rule "))
        .and_then(|r| r.split_whitespace().next())
        .expect("`Denied by rule` line");
    let decisions = sql(
        tmp.path(),
        &data,
        &format!("SELECT rule, outcome, rule_kind FROM decisions WHERE request_id = '{id}'"),
    );
    assert_eq!(decisions.len(), 1, "one decision for {id}: {decisions:?}");
    assert_eq!(decisions[0][0], printed_rule);
    assert_eq!(decisions[0][1], "deny");

    // 3. Reconciliation: every injected discrepancy found under its cause, nothing
    // unexplained over tolerance, and the printed causes are the stored ones.
    let rec = section(&stdout, "Does the bill line up?");
    assert!(
        rec.contains("OK: every difference explained or within tolerance"),
        "{rec}"
    );
    let mut printed_causes: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let by_cause = rec
        .split("## By cause")
        .nth(1)
        .expect("By cause table")
        .split("## Findings")
        .next()
        .unwrap();
    for line in by_cause
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| cause"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        printed_causes.insert(cells[0].to_owned(), (int(cells[1]), micros(cells[5])));
    }
    let stored = stored_discrepancies(&data);
    assert_eq!(
        printed_causes, stored,
        "printed by-cause table vs discrepancies"
    );
    for cause in [
        "bypass_traffic",
        "aborted_stream_billed",
        "cached_token_reporting",
        "stale_price_table",
        "provider_credit",
    ] {
        assert!(
            stored.contains_key(cause),
            "injected discrepancy {cause} found: {stored:?}"
        );
    }
    for cause in stored.keys() {
        assert!(
            [
                "bypass_traffic",
                "aborted_stream_billed",
                "cached_token_reporting",
                "stale_price_table",
                "provider_credit",
                "model_alias",
                "unexplained",
            ]
            .contains(&cause.as_str()),
            "a cause nobody injected: {cause}"
        );
    }
    let injected = stdout
        .split("Injected discrepancies")
        .nth(1)
        .expect("the injected discrepancies list");
    assert!(!injected.contains("NOT FOUND"), "{injected}");
    assert_eq!(injected.matches(": found: ").count(), 5, "{injected}");
    // The credit is the configured one.
    assert_eq!(stored["provider_credit"].1, -10_000);

    // 4. The commands to explore further.
    let next = section(&stdout, "Explore further");
    assert!(
        next.contains(&format!("tally sql --data-dir {}", data.display())),
        "{next}"
    );
    assert!(next.contains("psql \"host=127.0.0.1 port="), "{next}");
    assert!(next.contains("/v1/usage?by=tenant,model"), "{next}");
    assert!(next.contains(&format!("tally why --data-dir {} {id}", data.display())));
}

#[test]
fn demo_refuses_a_data_dir_it_did_not_create() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("precious");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "keep me").unwrap();
    let out = tally()
        .args(["demo", "--exit", "--proxy-listen", "127.0.0.1:0"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--postgres-listen",
            "127.0.0.1:0",
        ])
        .args(["--simulator-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("demo.data_dir"), "{err}");
    assert!(err.contains("was not created by `tally demo`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("notes.txt")).unwrap(),
        "keep me"
    );
}
