#!/usr/bin/env bash
# The Kafka benchmark: events per second from `tally enforcer` processes through a real
# Kafka-protocol broker (tansu, on loopback) into the Delta tables of `tally ledger run`,
# with each process's CPU time, to find what limits the rate. Three phases on one broker
# and one provider simulator:
#   fill         REQUESTS chat completions (closed loop) through ENFORCERS enforcers into
#                topic `fill`, no ledger running: request rate and Kafka acks alone;
#   ledger-once  `tally ledger run --once` materializes the pre-filled topic `fill` into
#                fresh tables: the ledger's throughput alone;
#   e2e          a long-running `tally ledger run` (consumer group) on topic `e2e` while
#                the same load goes through the enforcers: request rate, acks, commits,
#                and the lag from the brokers' acknowledgement to the committed table.
# The load is TENANTS `tally-loadgen closed --requests` processes, one tenant each (the
# tenant is the record key, so tenants spread over partitions), round-robin over the
# enforcers. Results: a Markdown table on stdout and in $OUT/table.md, raw JSON beside it.
#
#   flock /work/bench.lock bash bench/kafka/run.sh
#
# Knobs (environment): REQUESTS (60000), CONCURRENCY (128, total), ENFORCERS (2),
# TENANTS (4), PARTITIONS (4), STORAGE (memory://tansu/; sqlite://tansu.db for SQLite),
# BASE_PORT (19300), OUT (a new directory under the target dir), SKIP_BUILD=1, TIMEOUT
# (120 s per phase), TALLY_TANSU (the broker binary; default: scripts/install-tansu.sh's).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REQUESTS=${REQUESTS:-60000}
CONCURRENCY=${CONCURRENCY:-128}
ENFORCERS=${ENFORCERS:-2}
TENANTS=${TENANTS:-4}
PARTITIONS=${PARTITIONS:-4}
STORAGE=${STORAGE:-memory://tansu/}
BASE_PORT=${BASE_PORT:-19300}
TIMEOUT=${TIMEOUT:-120}
TANSU=${TALLY_TANSU:-$HOME/.cache/tally/tools/bin/tansu}
OUT=${OUT:-$TARGET/tmp/kafka-bench/$(date -u +%Y%m%dT%H%M%SZ)}
MEASURE="python3 $ROOT/bench/kafka/measure.py"

BROKER_PORT=$BASE_PORT
SIM_PORT=$((BASE_PORT + 1))
LEDGER_ADMIN_PORT=$((BASE_PORT + 2))
# enforcer i: proxy on BASE_PORT + 10 + 2i, admin on BASE_PORT + 11 + 2i

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-kafka-bench.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Wait until something accepts connections on 127.0.0.1:$1 (up to $2 seconds; fail
# early when process $3, if given, has exited).
wait_port() {
  local port=$1 deadline=$((SECONDS + ${2:-60}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      log "process $3 exited before listening on port $port"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "nothing listening on port $port after ${2:-60} s"
      return 1
    fi
    sleep 0.2
  done
}

# SIGTERM, then wait for the exit.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

[ -x "$TANSU" ] || { log "no tansu broker at $TANSU: run scripts/install-tansu.sh"; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin tally --bin tally-loadgen >&2)
fi
TALLY="$TARGET/release/tally"
LOADGEN="$TARGET/release/tally-loadgen"
for bin in "$TALLY" "$LOADGEN"; do
  [ -x "$bin" ] || { log "$bin not found (build it, or set CARGO_TARGET_DIR)"; exit 1; }
done

ADMIN_TOKEN=tally-kafka-bench
export TALLY_BENCH_ADMIN_TOKEN=$ADMIN_TOKEN
ADMIN_HASH=$("$TALLY" keys hash "$ADMIN_TOKEN")
BODY="$WORK/body.json"
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one short sentence about the sea."}],"max_tokens":16}' >"$BODY"
LOAD_BEFORE=$(load)
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $LOAD_BEFORE"

# --- the broker, its topics, the simulator --------------------------------------------
mkdir -p "$WORK/broker"
(cd "$WORK/broker" && RUST_LOG=warn exec "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$BROKER_PORT" --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
  --storage-engine "$STORAGE" --cluster-id tally-bench >"$WORK/broker/broker.log" 2>&1) &
BROKER_PID=$!
PIDS+=($BROKER_PID)
wait_port "$BROKER_PORT" 20
for topic in fill e2e; do
  "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$BROKER_PORT" --partitions "$PARTITIONS" >&2
done

echo '{}' >"$WORK/empty.yaml"
TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/empty.yaml" simulate --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=($SIM_PID)
wait_port "$SIM_PORT"

# config DIR TOPIC: the config of every tally process of a phase (dev keys, the
# simulator as the upstream, the admin token, the topic, tables under DIR/tables).
config() {
  cat >"$1/tally.yaml" <<EOF
proxy:
  dev_keys: true
  upstreams:
    openai: { base_url: "http://127.0.0.1:$SIM_PORT", provider: openai }
queries:
  admin_tokens: ["$ADMIN_HASH"]
ledger:
  tables_uri: "$1/tables"
kafka:
  brokers: "127.0.0.1:$BROKER_PORT"
  topic: $2
  group: bench-$2
  partitions: $PARTITIONS
  produce_timeout_ms: 30000
EOF
}

# start_enforcers DIR: ENFORCERS enforcers on DIR's config; fills ENF_PIDS and ADMINS.
start_enforcers() {
  ENF_PIDS=()
  ADMINS=()
  for i in $(seq 0 $((ENFORCERS - 1))); do
    local port=$((BASE_PORT + 10 + 2 * i)) admin=$((BASE_PORT + 11 + 2 * i))
    TALLY_LOG_FILTER=warn "$TALLY" --config "$1/tally.yaml" --data-dir "$1/enforcer$i" enforcer \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --drain-seconds 2 \
      >"$1/enforcer$i.log" 2>&1 &
    ENF_PIDS+=($!)
    PIDS+=($!)
    ADMINS+=("http://127.0.0.1:$admin")
  done
  for i in $(seq 0 $((ENFORCERS - 1))); do
    wait_port $((BASE_PORT + 10 + 2 * i)) 60 "${ENF_PIDS[$i]}" || { tail -5 "$1/enforcer$i.log" >&2; return 1; }
  done
}

# start_load PHASE: the TENANTS load generators (background); fills LOAD_PIDS.
start_load() {
  LOAD_PIDS=()
  local per=$((REQUESTS / TENANTS)) conc=$(((CONCURRENCY + TENANTS - 1) / TENANTS))
  for t in $(seq 0 $((TENANTS - 1))); do
    local n=$per
    [ "$t" -eq $((TENANTS - 1)) ] && n=$((REQUESTS - per * (TENANTS - 1)))
    local port=$((BASE_PORT + 10 + 2 * (t % ENFORCERS)))
    "$LOADGEN" closed --url "http://127.0.0.1:$port/v1/chat/completions" --body "@$BODY" \
      -H "authorization: Bearer dev-tenant$t-bench" --concurrency "$conc" --requests "$n" \
      >"$OUT/$1-lg$t.json" &
    LOAD_PIDS+=($!)
  done
}

# watch PHASE [--tables DIR]: measure.py watch over the running phase.
watch_phase() {
  local phase=$1
  shift
  local args=(--expect "$REQUESTS" --timeout "$TIMEOUT" --proc "broker=$BROKER_PID" --proc "simulator=$SIM_PID")
  for i in "${!ENF_PIDS[@]}"; do
    args+=(--proc "enforcer$i=${ENF_PIDS[$i]}" --admin "${ADMINS[$i]}")
  done
  [ -n "${LEDGER_PID:-}" ] && args+=(--proc "ledger=$LEDGER_PID")
  for p in "${LOAD_PIDS[@]}"; do
    args+=(--load "$p")
  done
  $MEASURE watch "${args[@]}" "$@" >"$OUT/$phase.json"
  for p in "${LOAD_PIDS[@]}"; do
    wait "$p" || log "$phase: a load generator failed"
  done
  python3 -c 'import json,sys; print(json.dumps([json.load(open(f)) for f in sys.argv[1:]]))' \
    "$OUT/$phase"-lg*.json >"$OUT/$phase-load.json"
  rm -f "$OUT/$phase"-lg*.json
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("samples"); d.pop("ack_to_commit_lag_s"); print(json.dumps(d))' "$OUT/$phase.json" >&2
}

# --- phase 1: enforcers → Kafka, no ledger ---------------------------------------------
mkdir -p "$WORK/fill"
config "$WORK/fill" fill
start_enforcers "$WORK/fill"
log "fill: $REQUESTS requests through $ENFORCERS enforcer(s) into topic fill (load $(load))"
LEDGER_PID=""
start_load fill
watch_phase fill
for p in "${ENF_PIDS[@]}"; do stop_pid "$p"; done

# --- phase 2: the ledger alone on the pre-filled topic -----------------------------------
log "ledger-once: materializing topic fill (load $(load))"
$MEASURE run --proc "broker=$BROKER_PID" --proc "simulator=$SIM_PID" -- \
  env TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/fill/tally.yaml" --data-dir "$WORK/fill/ledger" \
  ledger run --once >"$OUT/ledger-once.json"
log "ledger-once: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ("exit","wall_s","cpu_s","max_rss_kb","cpu_others","stdout_tail")})' "$OUT/ledger-once.json")"
FILL_ROWS=$("$TALLY" --config "$WORK/fill/tally.yaml" --data-dir "$WORK/fill/ledger" sql --format csv \
  "SELECT count(*), count(DISTINCT event_id) FROM usage" | tail -1)
log "ledger-once: usage rows, distinct event ids: $FILL_ROWS"
# A second catch-up: what the first left behind (it should commit nothing), and its time,
# the fixed cost of a `--once` run (connecting, reading each partition's end).
$MEASURE run -- env TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/fill/tally.yaml" \
  --data-dir "$WORK/fill/ledger" ledger run --once >"$OUT/ledger-again.json"
AGAIN=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["stdout_tail"][-1], "in", d["wall_s"], "s")' "$OUT/ledger-again.json")
log "ledger-once, run again: $AGAIN"

# --- phase 3: end to end --------------------------------------------------------------
mkdir -p "$WORK/e2e"
config "$WORK/e2e" e2e
TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/e2e/tally.yaml" --data-dir "$WORK/e2e/ledger" \
  ledger run --admin-listen "127.0.0.1:$LEDGER_ADMIN_PORT" >"$WORK/e2e/ledger.log" 2>&1 &
LEDGER_PID=$!
PIDS+=($LEDGER_PID)
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$LEDGER_ADMIN_PORT/readyz" >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$LEDGER_PID" 2>/dev/null; then
    log "the ledger is not ready: $(tail -5 "$WORK/e2e/ledger.log")"
    exit 1
  fi
  sleep 0.5
done
start_enforcers "$WORK/e2e"
log "e2e: $REQUESTS requests through $ENFORCERS enforcer(s), topic e2e, ledger running (load $(load))"
start_load e2e
watch_phase e2e --tables "$WORK/e2e/tables"
E2E_ROWS=$("$TALLY" --config "$WORK/e2e/tally.yaml" --data-dir "$WORK/e2e/ledger" sql --format csv \
  "SELECT count(*), count(DISTINCT event_id) FROM usage" | tail -1)
log "e2e: usage rows, distinct event ids: $E2E_ROWS"
for p in "${ENF_PIDS[@]}"; do stop_pid "$p"; done
stop_pid "$LEDGER_PID"

cat >"$OUT/meta.json" <<EOF
{"when": "$(date -u +%Y-%m-%dT%H:%MZ)", "requests": $REQUESTS, "enforcers": $ENFORCERS,
 "partitions": $PARTITIONS, "tenants": $TENANTS, "concurrency": $CONCURRENCY,
 "storage": "$STORAGE", "load_before": "$LOAD_BEFORE", "load_after": "$(load)",
 "fill_rows_distinct": "$FILL_ROWS", "fill_again": "$AGAIN", "e2e_rows_distinct": "$E2E_ROWS"}
EOF
$MEASURE table "$OUT" | tee "$OUT/table.md"
log "results in $OUT"
