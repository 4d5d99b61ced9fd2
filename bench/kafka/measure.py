#!/usr/bin/env python3
"""Measuring side of the Kafka benchmark (bench/kafka/run.sh): samples, every 0.2 s, the
events the brokers acknowledged (the enforcers' /metrics), the rows committed to the
`usage` Delta table (read from the table's `_delta_log`, no tally code), and the CPU time
of each process of the run (/proc/<pid>/stat); writes one JSON object. Also times one
command (`run`: wall clock and its own CPU, from wait4) and prints the results table.

  measure.py watch --expect N --admin URL... [--tables DIR] --proc NAME=PID... \
      --load PID... [--timeout S] > phase.json
  measure.py run --proc NAME=PID... -- CMD ARGS... > phase.json
  measure.py table OUT_DIR
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu():
    """(busy, total) jiffies of all cores together, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def metric(text, name):
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def acked(admins, token):
    """Records the brokers acknowledged: direct acks plus drained spool records."""
    total = 0
    spooled = 0
    for url in admins:
        req = urllib.request.Request(f"{url}/metrics", headers={"authorization": f"Bearer {token}"})
        try:
            text = urllib.request.urlopen(req, timeout=2).read().decode()
        except OSError:
            return None, None
        total += metric(text, "tally_kafka_acked_records_total")
        total += metric(text, "tally_spool_drained_records_total")
        spooled += metric(text, "tally_spool_records")
    return int(total), int(spooled)


class DeltaRows:
    """Rows of a Delta table from its log: the `numRecords` of the files added, minus
    those of the files removed (compaction), reading each new commit file once."""

    def __init__(self, table_dir):
        self.log = os.path.join(table_dir, "_delta_log")
        self.next = 0
        self.files = {}
        self.commits = 0

    def rows(self):
        while True:
            path = os.path.join(self.log, f"{self.next:020d}.json")
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except OSError:
                break
            for line in lines:
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    stats = json.loads(action["add"].get("stats") or "{}")
                    self.files[action["add"]["path"]] = stats.get("numRecords", 0)
                elif "remove" in action:
                    self.files.pop(action["remove"]["path"], None)
            self.next += 1
            self.commits += 1
        return sum(self.files.values())


def watch(a):
    procs = dict(p.split("=", 1) for p in a.proc)
    token = os.environ.get("TALLY_BENCH_ADMIN_TOKEN", "")
    table = DeltaRows(os.path.join(a.tables, "usage")) if a.tables else None
    start = time.monotonic()
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    machine0 = machine_cpu()
    cpu_at_load_done = None
    samples = []
    t_load_done = t_acked = t_committed = None
    first_acked_at = []  # (acked count, time it was first reached)
    while True:
        t = time.monotonic() - start
        n_acked, n_spooled = acked(a.admin, token)
        n_committed = table.rows() if table else None
        samples.append({"t": round(t, 2), "acked": n_acked, "spooled": n_spooled, "committed": n_committed})
        if n_acked is not None and (not first_acked_at or n_acked > first_acked_at[-1][0]):
            first_acked_at.append((n_acked, t))
        if t_load_done is None and not any(alive(p) for p in a.load):
            t_load_done = t
            cpu_at_load_done = {n: cpu_seconds(p) for n, p in procs.items()}
        if t_acked is None and n_acked is not None and n_acked >= a.expect:
            t_acked = t
        if table and t_committed is None and n_committed >= a.expect:
            t_committed = t
        done = t_load_done is not None and t_acked is not None and (t_committed is not None or not table)
        if done or t > a.timeout:
            break
        time.sleep(0.2)
    end = time.monotonic() - start
    cpu_end = {n: cpu_seconds(p) for n, p in procs.items()}
    machine1 = machine_cpu()

    def delta(x, y):
        return {n: (round(y[n] - x[n], 2) if x.get(n) is not None and y.get(n) is not None else None) for n in procs}

    # Lag, acknowledged → committed: at each sample with c rows committed, how long ago
    # the brokers had acknowledged c events (the age of the newest committed event's ack
    # is a lower bound of the lag of every uncommitted one; the samples where commits
    # trail acks give its distribution).
    lags = []
    if table:
        for s in samples:
            c = s["committed"]
            if not c or s["acked"] is None or c >= a.expect and s["t"] > (t_committed or end):
                continue
            later = [t for n, t in first_acked_at if n >= c]
            if later:
                lags.append(round(s["t"] - later[0], 2))
    out = {
        "expect": a.expect,
        "timed_out": not (t_load_done is not None and t_acked is not None and (t_committed is not None or not table)),
        "t_load_done": t_load_done,
        "t_acked_all": t_acked,
        "t_committed_all": t_committed,
        "end": round(end, 2),
        "final": samples[-1],
        "delta_commits": table.commits if table else None,
        "cpu_load_window": delta(cpu0, cpu_at_load_done) if cpu_at_load_done else None,
        "cpu_after_load": delta(cpu_at_load_done, cpu_end) if cpu_at_load_done else None,
        "cpu_total": delta(cpu0, cpu_end),
        "machine_busy_cores": round((machine1[0] - machine0[0]) / (machine1[1] - machine0[1]) * os.cpu_count(), 2),
        "ack_to_commit_lag_s": lags,
        "samples": samples,
    }
    json.dump(out, sys.stdout)
    print()


def run(a):
    procs = dict(p.split("=", 1) for p in a.proc)
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        child = subprocess.Popen(a.cmd, stdout=out_f, stderr=err_f, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu1 = {n: cpu_seconds(p) for n, p in procs.items()}
    out = {
        "cmd": a.cmd,
        "exit": child.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "max_rss_kb": usage.ru_maxrss,
        "cpu_others": {n: (round(cpu1[n] - cpu0[n], 2) if cpu0[n] is not None and cpu1[n] is not None else None) for n in procs},
        "stdout_tail": stdout.strip().splitlines()[-3:],
        "stderr_tail": stderr.strip().splitlines()[-5:],
    }
    json.dump(out, sys.stdout)
    print()


def pct(cpu, secs):
    return f"{cpu:.1f} s ({100 * cpu / secs:.0f}%)" if cpu is not None and secs else "–"


def table(a):
    d = a.out
    runs = {}
    for name in ("fill", "fill-load", "ledger-once", "e2e", "e2e-load", "meta"):
        p = os.path.join(d, f"{name}.json")
        if os.path.exists(p):
            with open(p) as f:
                runs[name] = json.load(f)
    meta = runs.get("meta", {})
    n = meta.get("requests")
    lines = [f"Kafka benchmark, {meta.get('when', '?')}: {n} requests, {meta.get('enforcers')} enforcer(s), "
             f"{meta.get('partitions')} partitions, {meta.get('tenants')} tenants, concurrency {meta.get('concurrency')}, "
             f"tansu storage {meta.get('storage')}; load average before {meta.get('load_before')}, after {meta.get('load_after')}", ""]
    lines.append("| phase | requests/s at the enforcers | events/s acked by Kafka | events/s committed | load → all acked | load → all committed | ack→commit lag p50 / max |")
    lines.append("|---|---|---|---|---|---|---|")

    def rates(w, load):
        ok = sum(x.get("ok", 0) for x in load)
        el = max((x.get("elapsed_s", 0) for x in load), default=0)
        rq = f"{ok / el:,.0f}" if el else "–"
        ack = f"{n / w['t_acked_all']:,.0f}" if w.get("t_acked_all") else "–"
        com = f"{n / w['t_committed_all']:,.0f}" if w.get("t_committed_all") else "–"
        lags = sorted(w.get("ack_to_commit_lag_s") or [])
        lag = f"{lags[len(lags) // 2]:.1f} / {lags[-1]:.1f} s" if lags else "–"
        fa = f"{w['t_acked_all']:.1f} s" if w.get("t_acked_all") else "–"
        fc = f"{w['t_committed_all']:.1f} s" if w.get("t_committed_all") else "–"
        return rq, ack, com, fa, fc, lag

    if "fill" in runs:
        rq, ack, _, fa, _, _ = rates(runs["fill"], runs.get("fill-load", []))
        lines.append(f"| enforcers → Kafka (no ledger running) | {rq} | {ack} | – | {fa} | – | – |")
    if "ledger-once" in runs:
        lo = runs["ledger-once"]
        rows = int(str(meta.get("fill_rows_distinct", "0")).split(",")[0] or 0)
        rate = f"{rows / lo['wall_s']:,.0f}" if lo.get("exit") == 0 and lo["wall_s"] else "failed"
        note = "" if rows == n else f" ({rows:,} of {n:,} events committed)"
        lines.append(f"| ledger alone (`ledger run --once`, pre-filled topic){note} | – | – | {rate} | – | {lo['wall_s']:.1f} s | – |")
    if "e2e" in runs:
        rq, ack, com, fa, fc, lag = rates(runs["e2e"], runs.get("e2e-load", []))
        lines.append(f"| end to end (enforcers + Kafka + `ledger run`) | {rq} | {ack} | {com} | {fa} | {fc} | {lag} |")
    lines.append("")
    lines.append("CPU time per process (seconds, and % of one core over the phase):")
    lines.append("")
    names = []
    for r in ("fill", "e2e"):
        if r in runs:
            for k in runs[r]["cpu_total"]:
                if k not in names:
                    names.append(k)
    lines.append("| phase | " + " | ".join(names) + " | whole machine (cores busy, of %d) |" % os.cpu_count())
    lines.append("|---|" + "---|" * (len(names) + 1))
    for r, label in (("fill", "enforcers → Kafka"), ("e2e", "end to end")):
        if r in runs:
            w = runs[r]
            secs = w["end"]
            lines.append(f"| {label} ({secs:.1f} s) | " + " | ".join(pct(w["cpu_total"].get(k), secs) for k in names) + f" | {w.get('machine_busy_cores', '–')} |")
    if "ledger-once" in runs:
        lo = runs["ledger-once"]
        cells = []
        for k in names:
            if k == "ledger":
                cells.append(pct(lo["cpu_s"], lo["wall_s"]))
            else:
                cells.append(pct(lo["cpu_others"].get(k), lo["wall_s"]) if k in lo["cpu_others"] else "–")
        lines.append(f"| ledger alone ({lo['wall_s']:.1f} s) | " + " | ".join(cells) + " | – |")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd_name", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--expect", type=int, required=True)
    w.add_argument("--admin", action="append", default=[])
    w.add_argument("--tables")
    w.add_argument("--proc", action="append", default=[])
    w.add_argument("--load", action="append", default=[])
    w.add_argument("--timeout", type=float, default=180)
    r = sub.add_parser("run")
    r.add_argument("--proc", action="append", default=[])
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    t = sub.add_parser("table")
    t.add_argument("out")
    a = p.parse_args()
    if a.cmd_name == "watch":
        watch(a)
    elif a.cmd_name == "run":
        if a.cmd and a.cmd[0] == "--":
            a.cmd = a.cmd[1:]
        run(a)
    else:
        table(a)


if __name__ == "__main__":
    main()
