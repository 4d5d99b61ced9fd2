//! The tables are Delta Lake tables other engines read: delta-rs (the `deltalake` Python
//! package), DuckDB (its Parquet reader over the files of the current table version,
//! which delta-rs lists) and pyarrow (through delta-rs) must count the same rows, ids
//! and sums as `tally sql`, across late events (days in the past), a compaction that
//! removed files, and a second batch appended after it. The Python packages come from
//! scripts/setup-test-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::cli::{run_ok as tally, sql_numbers as sql};
use common::synth::write_events_at;
use tally_events::Timestamp;

const READ: &str = r#"
import json, sys
import duckdb
from deltalake import DeltaTable
root = sys.argv[1]
out = {}
for table in ["usage", "decisions", "corrections"]:
    dt = DeltaTable(f"{root}/{table}")
    t = dt.to_pyarrow_table()
    r = {"rows": t.num_rows, "ids": len(set(t.column("event_id").to_pylist())),
         "days": sorted({str(d) for d in t.column("day").to_pylist()}),
         "version": dt.version()}
    files = dt.file_uris()
    con = duckdb.connect()
    q = lambda cols: con.execute(f"SELECT {cols} FROM read_parquet(?)", [files]).fetchone()
    r["duckdb_rows"], r["duckdb_ids"] = q("count(*), count(DISTINCT event_id)")
    if table == "usage":
        r["input"] = sum(t.column("input_tokens").to_pylist())
        r["output"] = sum(t.column("output_tokens").to_pylist())
        r["cost"] = sum(t.column("cost_micros").to_pylist())
        r["duckdb_sums"] = list(q(
            "sum(input_tokens)::BIGINT, sum(output_tokens)::BIGINT, sum(cost_micros)::BIGINT"))
    out[table] = r
print(json.dumps(out))
"#;

#[test]
fn delta_rs_duckdb_and_pyarrow_read_what_tally_sql_reads() {
    let python = common::python();
    let probe = Command::new(&python)
        .args(["-c", "import deltalake, duckdb, pyarrow"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the test virtualenv lacks deltalake/duckdb/pyarrow: run scripts/setup-test-deps.sh ({})",
        String::from_utf8_lossy(&probe.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = data.join("log");
    // Every fifth event happened days ago (late events land in their own day).
    let now = Timestamp::now().as_micros();
    let late = |i: u64| {
        i.is_multiple_of(5)
            .then(|| Timestamp::from_micros(now - (1 + i as i64 % 4) * 86_400_000_000))
    };
    let first = write_events_at(&log, 3_000, Duration::ZERO, 0, late);
    tally(&data, &["ledger", "run", "--once"]);
    tally(&data, &["ledger", "optimize"]);
    let second = write_events_at(&log, 2_000, Duration::ZERO, 3_000, late);
    tally(&data, &["ledger", "run", "--once"]);
    let written = first.plus(&second);

    let out = Command::new(&python)
        .args(["-c", READ])
        .arg(data.join("tables"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading with delta-rs/duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let usage = sql(
        &data,
        "SELECT count(*), count(DISTINCT event_id), sum(input_tokens), sum(output_tokens), sum(cost_micros) FROM usage",
    );
    assert_eq!(
        usage,
        [
            written.usage,
            written.usage,
            written.input,
            written.output,
            written.cost
        ]
    );
    let u = &got["usage"];
    assert_eq!(u["rows"], usage[0], "{u}");
    assert_eq!(u["ids"], usage[1], "{u}");
    assert_eq!(
        [&u["input"], &u["output"], &u["cost"]],
        [usage[2], usage[3], usage[4]],
        "{u}"
    );
    assert_eq!(u["duckdb_rows"], usage[0], "{u}");
    assert_eq!(u["duckdb_ids"], usage[1], "{u}");
    assert_eq!(u["duckdb_sums"], serde_json::json!(&usage[2..]), "{u}");
    assert!(
        u["days"].as_array().unwrap().len() >= 4,
        "late events land in their days: {u}"
    );

    for (table, n) in [
        ("decisions", written.decisions),
        ("corrections", written.corrections),
    ] {
        let counted = sql(
            &data,
            &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}"),
        );
        assert_eq!(counted, [n, n]);
        let t = &got[table];
        assert_eq!(
            [&t["rows"], &t["ids"], &t["duckdb_rows"], &t["duckdb_ids"]],
            [n, n, n, n],
            "{t}"
        );
    }
    // The days tally groups by are the days delta-rs sees as partitions.
    let days = tally(
        &data,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT DISTINCT day FROM usage ORDER BY day",
        ],
    );
    let days: Vec<&str> = days.lines().skip(1).collect();
    let theirs: Vec<&str> = u["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(days, theirs);
}
