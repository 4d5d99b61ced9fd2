"""DuckDB side of bench/query_history.rs: the same statements over the same Parquet files.

Usage: query_history_duckdb.py SPEC.json OUT.json

SPEC: {"tables": dir, "views": [{name, sql}], "queries": [{name, sql, params}], "runs": n,
"threads": n}. The tables' Parquet files are read with hive partitioning (the `day`
partition column comes from the directory names, as in the Delta tables); tally's views
are created from the same definitions. Each statement runs once untimed ("first"), then
`runs` times. OUT gets, per statement: first, times, rows and the sum of its integer
columns (as a string: it may exceed 64 bits).
"""

import datetime
import decimal
import json
import sys
import time

import duckdb

spec = json.load(open(sys.argv[1]))
con = duckdb.connect()
con.execute(f"SET threads = {int(spec['threads'])}")
con.execute("SET enable_progress_bar = false")
con.execute("SET TimeZone = 'UTC'")
for table in ("usage", "decisions", "corrections"):
    # The day partitions' data files only (not the Delta log's checkpoint files).
    path = f"{spec['tables']}/{table}/day=*/*.parquet"
    con.execute(
        f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}', hive_partitioning = true)"
    )
for v in spec["views"]:
    con.execute(f"CREATE VIEW {v['name']} AS {v['sql']}")

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def param(p):
    if p["type"] == "timestamp_us":
        return EPOCH + datetime.timedelta(microseconds=p["value"])
    if p["type"] == "date_days":
        return datetime.date(1970, 1, 1) + datetime.timedelta(days=p["value"])
    return p["value"]


def int_sum(rows):
    total = 0
    for row in rows:
        for v in row:
            if isinstance(v, int) and not isinstance(v, bool):
                total += v
    return total


out = []
for q in spec["queries"]:
    params = [param(p) for p in q["params"]]
    t = time.perf_counter()
    rows = con.execute(q["sql"], params).fetchall()
    first = time.perf_counter() - t
    times = []
    for _ in range(int(spec["runs"])):
        t = time.perf_counter()
        con.execute(q["sql"], params).fetchall()
        times.append(time.perf_counter() - t)
    out.append(
        {
            "name": q["name"],
            "first": first,
            "times": times,
            "rows": len(rows),
            "int_sum": str(int_sum(rows)),
        }
    )
json.dump(out, open(sys.argv[2], "w"))
