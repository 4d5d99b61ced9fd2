"""Renders the proxy benchmark's results (the JSON files bench/proxy/run.sh wrote into
one directory) as a Markdown table: per setup, latency added over the direct run at the
fixed rate (p50, p99), maximum throughput, and tally's memory with many open streams."""

import json
import os
import sys


def read(path):
    try:
        with open(path) as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def ms(us):
    return f"{us / 1000:.2f} ms"


def main(out):
    direct = read(os.path.join(out, "direct-rate.json"))
    rows = []
    names = {
        "direct": "client → simulator (direct)",
        "nginx": "client → nginx → simulator",
        "tally": "client → tally → simulator",
        "litellm": "client → LiteLLM → simulator",
    }
    nginx_tput = (read(os.path.join(out, "nginx-closed.json")) or {}).get("req_per_s")
    streams = [
        s
        for s in (
            read(os.path.join(out, f"tally-streams-{name}.json"))
            for name in ("http1", "http2", "enforcer-http1", "enforcer-http2")
        )
        if s
    ]
    for setup, title in names.items():
        rate = read(os.path.join(out, f"{setup}-rate.json"))
        closed = read(os.path.join(out, f"{setup}-closed.json"))
        load = read(os.path.join(out, f"{setup}-load.json")) or {}
        if rate is None and closed is None:
            continue
        if rate and direct and rate["rate"] == direct["rate"]:
            p50 = ms(rate["p50_us"] - direct["p50_us"])
            p99 = ms(rate["p99_us"] - direct["p99_us"])
            lat = f"{ms(rate['p50_us'])} / {ms(rate['p99_us'])}"
            errors = rate["errors"]
        elif rate and direct:
            # The setup's maximum is below the fixed rate: measured at half its maximum,
            # compared with the direct run at the fixed rate.
            p50 = f"cannot sustain {int(direct['rate']):,} req/s"
            p99 = "—"
            lat = (
                f"at {int(rate['rate']):,} req/s: {ms(rate['p50_us'])} / {ms(rate['p99_us'])}"
            )
            errors = rate["errors"]
        else:
            p50 = p99 = lat = "—"
            errors = "—"
        if setup == "direct":
            p50 = p99 = "(baseline)"
        tput = f"{closed['req_per_s']:,.0f}" if closed else "—"
        if closed and nginx_tput and setup not in ("direct", "nginx"):
            tput += f" ({100 * closed['req_per_s'] / nginx_tput:.0f}% of nginx)"
        if closed and closed.get("errors"):
            tput += f", {closed['errors']} errors"
        rss = "—"
        if setup == "tally" and streams:
            rss = "; ".join(
                f"{'`tally enforcer` alone: ' if s.get('process') == 'enforcer' else ''}"
                f"{s['held']['rss_kb'] / 1024:.0f} MiB ({s['held']['anon_kb'] / 1024:.0f} MiB "
                f"anonymous) with {s['opened']['open']:,} streams open over an "
                f"{'HTTP/2' if s['upstream'] == 'http2' else 'HTTP/1.1'} upstream, idle "
                f"{s['idle']['rss_kb'] / 1024:.0f} MiB ({s['idle']['anon_kb'] / 1024:.0f} MiB anonymous)"
                for s in streams
            )
        loads = f"{load.get('load_before', '?')} → {load.get('load_after', '?')}"
        rows.append((title, p50, p99, lat, errors, tput, rss, loads))
    print(
        "| setup | added p50 | added p99 | p50 / p99 at "
        f"{int(direct['rate']) if direct else '?':,} req/s | errors | max req/s (closed loop, "
        f"{(read(os.path.join(out, 'direct-closed.json')) or {}).get('concurrency', '?')} in flight) "
        "| RSS | load avg before → after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    tally_rate = read(os.path.join(out, "tally-rate.json"))
    if tally_rate and "proxy_overhead_p50_us" in tally_rate:
        print()
        print(
            "tally's own `x-tally-overhead-ms` (time inside tally, upstream excluded) in the "
            f"open-loop run: p50 {ms(tally_rate['proxy_overhead_p50_us'])}, "
            f"p99 {ms(tally_rate['proxy_overhead_p99_us'])}, "
            f"p99.9 {ms(tally_rate['proxy_overhead_p999_us'])}."
        )
    faults = [
        f
        for f in (
            read(os.path.join(out, f"faults-{n}.json"))
            for n in (
                "huge_bodies",
                "huge_streams",
                "slow_upstream",
                "invalid_json",
                "invalid_sse",
                "reset_mid_stream",
                "upstream_5xx",
            )
        )
        if f
    ]
    if faults:
        idle = read(os.path.join(out, "faults-idle.json")) or {}
        after = read(os.path.join(out, "faults-after.json")) or {}
        print()
        print(
            f"tally's memory under upstream faults ({faults[0]['concurrency']} requests in "
            f"flight; idle {idle.get('rss_kb', 0) / 1024:.0f} MiB, after all faults "
            f"{after.get('rss_kb', 0) / 1024:.0f} MiB):"
        )
        print()
        print("| fault (simulator headers) | answered 2xx | other outcomes | peak RSS |")
        print("|---|---|---|---|")
        for f in faults:
            print(
                f"| {f['fault']} (`{'`, `'.join(f['headers'][1::2])}`) | {f['ok']:,} | "
                f"{f['errors']:,} | {f['max_rss_kb'] / 1024:.0f} MiB |"
            )
        usage = os.path.join(out, "faults-usage.json")
        if os.path.exists(usage):
            print()
            print("Usage events by finish state: " + open(usage).read().strip())
    mode = os.path.join(out, "litellm-mode.txt")
    if os.path.exists(mode):
        print()
        print("LiteLLM: " + "; ".join(l.strip() for l in open(mode) if l.strip()) + ".")
    if direct:
        print()
        print(
            f"Direct send lag (scheduled → sent): p50 {ms(direct['send_lag_p50_us'])}, "
            f"p99 {ms(direct['send_lag_p99_us'])}; open-loop requests per setup: {direct['requests']}."
        )


if __name__ == "__main__":
    main(sys.argv[1])
