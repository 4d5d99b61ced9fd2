//! Proof that the tables are readable by other engines: pyarrow reads the files the Delta
//! log references (replaying `add`/`remove` itself) and must find the same rows. Must
//! skip — saying so — only when the Python environment lacks pyarrow.

use std::path::PathBuf;
use std::process::Command;

use tally_events::Event;

use super::support::*;

/// A tool in the test virtualenv (`TALLY_TEST_VENV`, default `~/.cache/tally/venv`).
pub(crate) fn venv_bin(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("TALLY_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tally/venv")))?;
    let bin = venv.join("bin").join(name);
    bin.is_file().then_some(bin)
}

const READ_WITH_PYARROW: &str = r#"
import glob, json, os, sys, urllib.parse
import pyarrow.parquet as pq
root = sys.argv[1]
out = {}
for table in ["usage", "decisions", "corrections"]:
    d = os.path.join(root, table)
    live = {}
    for f in sorted(glob.glob(os.path.join(d, "_delta_log", "*.json"))):
        for line in open(f):
            a = json.loads(line)
            if "add" in a:
                live[a["add"]["path"]] = a["add"]["partitionValues"]
            if "remove" in a:
                live.pop(a["remove"]["path"], None)
    rows, ids, tokens, labels = 0, set(), 0, 0
    for path in live:
        t = pq.read_table(os.path.join(d, urllib.parse.unquote(path)))
        rows += t.num_rows
        ids.update(t.column("event_id").to_pylist())
        if table == "usage":
            tokens += sum(t.column("input_tokens").to_pylist())
            labels += sum(1 for m in t.column("labels").to_pylist() if m and ("team", "ml") in m)
    out[table] = {"rows": rows, "ids": len(ids), "input_tokens": tokens, "labels": labels,
                  "days": sorted({pv["day"] for pv in live.values()})}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_the_same_rows() -> TestResult {
    let Some(python) = venv_bin("python") else {
        println!(
            "SKIPPED pyarrow_reads_the_same_rows: no Python virtualenv at ~/.cache/tally/venv (run scripts/setup-test-deps.sh)"
        );
        return Ok(());
    };
    let probe = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()?;
    if !probe.status.success() {
        println!(
            "SKIPPED pyarrow_reads_the_same_rows: pyarrow is not installed (pip install 'pyarrow>=15' into the test venv)"
        );
        return Ok(());
    }

    let env = Env::new()?;
    let day = tally_events::Timestamp::parse("2026-03-10T10:00:00Z")?.as_micros();
    let mut events: Vec<Event> = (0..30).map(|i| usage_at("acme", day + i)).collect();
    events.push(usage_at("acme", day - 5 * 86_400_000_000));
    events.extend((0..4).map(|_| decision("acme")));
    events.push(correction("acme", events[0].header().event_id));
    let mut ledger = env.ledger(config()).await?;
    env.append(&events[..20])?;
    ledger.step().await?;
    env.append(&events[20..])?;
    ledger.step().await?;
    ledger.optimize().await?;

    let out = Command::new(&python)
        .args(["-c", READ_WITH_PYARROW])
        .arg(env.tables())
        .output()?;
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(got["usage"]["rows"], 31);
    assert_eq!(got["usage"]["ids"], 31);
    assert_eq!(got["usage"]["input_tokens"], 31 * 1200);
    assert_eq!(got["usage"]["labels"], 31);
    assert_eq!(
        got["usage"]["days"],
        serde_json::json!(["2026-03-05", "2026-03-10"])
    );
    assert_eq!(got["decisions"]["rows"], 4);
    assert_eq!(got["corrections"]["rows"], 1);
    Ok(())
}
