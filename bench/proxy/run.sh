#!/usr/bin/env bash
# The proxy benchmark: added latency and maximum throughput of tally beside nginx and the
# LiteLLM proxy, all in front of the same provider simulator, in one run on loopback.
#
#   bash bench/proxy/run.sh            # everything (installs nginx, PostgreSQL, LiteLLM)
#   SETUPS="direct tally" bash bench/proxy/run.sh   # a subset (direct is always measured)
#   SETUPS=streams bash bench/proxy/run.sh          # only tally's memory with open streams
#   SETUPS=faults bash bench/proxy/run.sh           # tally's memory under upstream faults
#
# Setups, each measured with the same request (OpenAI chat completion, non-streaming,
# 16 output tokens) against one `tally simulate` with zero configured latency:
#   direct   client → simulator
#   nginx    client → nginx (Debian package, plain reverse proxy, upstream keep-alive) → simulator
#   tally    client → `tally up` (event log, ledger and query engine running) → simulator
#   litellm  client → LiteLLM proxy (spend tracking into PostgreSQL when LiteLLM can
#            start with its database, else without one: see start_litellm) → simulator
# Per setup: a closed-loop run at CONCURRENCY (maximum throughput), then an open-loop run
# at RATE req/s (latency from each request's scheduled send time). Then tally's memory
# with STREAMS streaming responses held open. Results: a Markdown table on stdout and in
# $OUT/table.md, raw JSON beside it. Wrap it in `flock FILE` to keep other benchmarks on
# the machine from overlapping it.
#
# Knobs (environment): RATE (2000), DURATION (15 s measured per rate run), WARMUP (3 s),
# CONCURRENCY (64), TPUT_DURATION (10 s), STREAMS (10000), STREAM_HOLD (20 s), SETUPS,
# LITELLM_WORKERS (1), BASE_PORT (19100), OUT (a new directory under the target dir),
# SKIP_SETUP=1, SKIP_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RATE=${RATE:-2000}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
CONCURRENCY=${CONCURRENCY:-64}
TPUT_DURATION=${TPUT_DURATION:-10}
STREAMS=${STREAMS:-10000}
STREAM_HOLD=${STREAM_HOLD:-20}
SETUPS=${SETUPS:-"direct nginx tally litellm"}
BASE_PORT=${BASE_PORT:-19100}
LITELLM_VENV=${TALLY_BENCH_LITELLM_VENV:-$HOME/.cache/tally/litellm-venv}
LITELLM_WORKERS=${LITELLM_WORKERS:-1}
OUT=${OUT:-$TARGET/tmp/proxy-bench/$(date -u +%Y%m%dT%H%M%SZ)}

SIM_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
TALLY_PORT=$((BASE_PORT + 2))
TALLY_ADMIN_PORT=$((BASE_PORT + 3))
LITELLM_PORT=$((BASE_PORT + 4))
PG_PORT=$((BASE_PORT + 5))
STREAM_SIM_PORT=$((BASE_PORT + 6))

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-proxy-bench.XXXXXX")
PIDS=()
PG_DATA=""
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Wait until something accepts connections on 127.0.0.1:$1 (up to $2 seconds).
wait_port() {
  local port=$1 deadline=$((SECONDS + ${2:-60}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      log "nothing listening on port $port after ${2:-60} s"
      return 1
    fi
    sleep 0.2
  done
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

if [ -z "${SKIP_SETUP:-}" ]; then
  bash "$ROOT/bench/proxy/setup.sh" >&2
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin tally --bin tally-loadgen >&2)
fi
TALLY="$TARGET/release/tally"
LOADGEN="$TARGET/release/tally-loadgen"
for bin in "$TALLY" "$LOADGEN"; do
  [ -x "$bin" ] || { log "$bin not found (build it, or set CARGO_TARGET_DIR)"; exit 1; }
done

# Every process gets the whole (hard) open-file limit: 10,000 streams need 10,000
# upstream sockets in tally and as many in the simulator.
ulimit -n "$(ulimit -Hn)"

BODY="$WORK/body.json"
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one short sentence about the sea."}],"max_tokens":16}' >"$BODY"
STREAM_BODY="$WORK/stream.json"
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write a long story about the sea."}],"stream":true}' >"$STREAM_BODY"

# --- the provider simulator (zero latency) ------------------------------------------
echo '{}' >"$WORK/empty.yaml"
TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/empty.yaml" simulate --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=($SIM_PID)
wait_port "$SIM_PORT"

# settle PID: wait (at most 120 s) until the process has used under 5% of a CPU for a
# second, i.e. until work queued by the previous run is done (tally's ledger
# materializing the closed loop's events), so the latency run starts from a steady state.
settle() {
  local pid=$1 deadline=$((SECONDS + 120)) before after
  while [ $SECONDS -lt $deadline ]; do
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || return 0
    sleep 1
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || return 0
    [ $((after - before)) -lt $(($(getconf CLK_TCK) / 20)) ] && return 0
  done
}

# measure NAME URL PID [loadgen request args...]: a closed-loop run (maximum throughput),
# then, once PID (the setup's process) is idle again, an open-loop run at RATE. A setup
# whose maximum is below RATE cannot be measured at RATE (its queue grows for as long as
# the run lasts); it is measured at half its maximum instead, and the table says so.
measure() {
  local name=$1 url=$2 pid=$3
  shift 3
  local before rate
  before=$(load)
  log "$name: closed loop, concurrency $CONCURRENCY for 2+${TPUT_DURATION} s (load $before)"
  "$LOADGEN" closed --url "$url" --body "@$BODY" "$@" --concurrency "$CONCURRENCY" \
    --duration "$TPUT_DURATION" --warmup 2 >"$OUT/$name-closed.json"
  log "$name: $(cat "$OUT/$name-closed.json")"
  rate=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["req_per_s"]; r=float(sys.argv[2]); print(r if m >= r else max(1, int(m / 2)))' \
    "$OUT/$name-closed.json" "$RATE")
  local settle_start=$SECONDS
  sleep 2
  settle "$pid"
  log "$name: idle again after $((SECONDS - settle_start)) s"
  log "$name: open loop at $rate req/s for ${WARMUP}+${DURATION} s (load $(load))"
  "$LOADGEN" rate --url "$url" --body "@$BODY" "$@" --rate "$rate" --duration "$DURATION" \
    --warmup "$WARMUP" >"$OUT/$name-rate.json"
  log "$name: $(cat "$OUT/$name-rate.json")"
  printf '{"load_before": "%s", "load_after": "%s"}\n' "$before" "$(load)" >"$OUT/$name-load.json"
}

# rss_of PID: its resident memory (VmRSS: RssAnon, the heap and stacks, plus RssFile,
# mostly pages of the executable) and peak (VmHWM), as JSON fields (kB).
rss_of() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {printf "{\"rss_kb\": %d, \"hwm_kb\": %d, \"anon_kb\": %d, \"file_kb\": %d}", r, h, a, f}' "/proc/$1/status"; }

# --- tally ---------------------------------------------------------------------------
PROVIDER_KEY=sk-provider-bench
GATEWAY_KEY=tally-bench-key
start_tally() { # start_tally PORT ADMIN_PORT UPSTREAM_PORT DIR [HTTP2 (true|false)] [COMMAND (up|enforcer)]
  local port=$1 admin=$2 upstream=$3 dir=$4 h2="" command=${6:-up}
  [ "${5:-false}" = true ] && h2=", http2: true"
  mkdir -p "$dir"
  cat >"$dir/tally.yaml" <<EOF
data_dir: $dir/data
admin: { listen: "127.0.0.1:$admin" }
postgres: { enabled: false }
proxy:
  listen: "127.0.0.1:$port"
  on_client_abort: cancel
  upstreams:
    openai: { base_url: "http://127.0.0.1:$upstream", provider: openai$h2, credentials: { api_key_env: TALLY_BENCH_PROVIDER_KEY } }
  keys:
    - { id: bench, tenant: bench, hash: "$("$TALLY" keys hash "$GATEWAY_KEY")" }
EOF
  TALLY_BENCH_PROVIDER_KEY=$PROVIDER_KEY "$TALLY" --config "$dir/tally.yaml" "$command" --drain-seconds 2 >"$dir/tally.log" 2>&1 &
  TALLY_PID=$!
  PIDS+=($TALLY_PID)
  wait_port "$port"
}

# --- nginx ---------------------------------------------------------------------------
start_nginx() {
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream simulator { server 127.0.0.1:$SIM_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://simulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  /usr/sbin/nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
  NGINX_PID=$!
  PIDS+=($NGINX_PID)
  wait_port "$NGINX_PORT"
}

# --- LiteLLM with spend tracking in PostgreSQL ----------------------------------------
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
start_postgres() {
  PG_DATA="$WORK/pg"
  mkdir -p "$PG_DATA"
  chown postgres: "$PG_DATA" "$WORK"
  chmod 755 "$WORK"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >"$WORK/pg-init.log" 2>&1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DATA" start >&2
  runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres litellm
}
# LiteLLM keeps spend in PostgreSQL through Prisma, whose engine binaries it downloads at
# start-up; where that download is impossible it refuses to start with a database, and
# the run falls back to LiteLLM without one (cost still computed per request and
# returned in `x-litellm-response-cost`, but not stored). $OUT/litellm-mode.txt says which.
litellm_up() { # litellm_up WITH_DB
  {
    cat <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$SIM_PORT/v1
      api_key: $PROVIDER_KEY
general_settings:
  master_key: sk-litellm-bench
EOF
    if [ "$1" = 1 ]; then
      echo "  database_url: postgresql://postgres@127.0.0.1:$PG_PORT/litellm"
    fi
  } >"$WORK/litellm.yaml"
  (cd "$WORK" && LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
    exec "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 \
    --port "$LITELLM_PORT" --num_workers "$LITELLM_WORKERS" >"$WORK/litellm-$1.log" 2>&1) &
  LITELLM_PID=$!
  PIDS+=($LITELLM_PID)
  local deadline=$((SECONDS + 300))
  until (exec 3<>"/dev/tcp/127.0.0.1/$LITELLM_PORT") 2>/dev/null; do
    if ! kill -0 "$LITELLM_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      stop_pid "$LITELLM_PID"
      tail -5 "$WORK/litellm-$1.log" >&2
      return 1
    fi
    sleep 0.5
  done
}
start_litellm() {
  if start_postgres && litellm_up 1; then
    echo "litellm: spend tracking in PostgreSQL (database_url)" >"$OUT/litellm-mode.txt"
  else
    log "litellm did not start with its database; starting it without one"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
    litellm_up 0 || return 1
    echo "litellm: no database (Prisma engines unavailable); cost computed per request, not stored" >"$OUT/litellm-mode.txt"
  fi
  # Probe: one request, and the cost LiteLLM computed for it.
  curl -s -D - -o /dev/null "http://127.0.0.1:$LITELLM_PORT/v1/chat/completions" \
    -H "authorization: Bearer sk-litellm-bench" -H 'content-type: application/json' \
    --data-binary "@$BODY" | grep -i -E '^(HTTP|x-litellm-response-cost)' >>"$OUT/litellm-mode.txt" || true
  log "$(cat "$OUT/litellm-mode.txt")"
}

# --- the runs ------------------------------------------------------------------------
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(load)"
measure direct "http://127.0.0.1:$SIM_PORT/v1/chat/completions" "$SIM_PID" -H "authorization: Bearer $PROVIDER_KEY"

for setup in $SETUPS; do
  case $setup in
    direct) ;;
    nginx)
      start_nginx
      measure nginx "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$NGINX_PID" -H "authorization: Bearer $PROVIDER_KEY"
      stop_pid "$NGINX_PID"
      ;;
    tally)
      start_tally "$TALLY_PORT" "$TALLY_ADMIN_PORT" "$SIM_PORT" "$WORK/tally"
      measure tally "http://127.0.0.1:$TALLY_PORT/v1/chat/completions" "$TALLY_PID" -H "authorization: Bearer $GATEWAY_KEY"
      rss_of "$TALLY_PID" >"$OUT/tally-rss-after-load.json"
      stop_pid "$TALLY_PID"
      ;;
    litellm)
      if start_litellm; then
        measure litellm "http://127.0.0.1:$LITELLM_PORT/v1/chat/completions" "$LITELLM_PID" -H "authorization: Bearer sk-litellm-bench"
        if grep -q PostgreSQL "$OUT/litellm-mode.txt"; then
          sleep 5 # let the spend-log writer flush, then count what it recorded
          runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d litellm -tAc \
            'select count(*), coalesce(sum(spend),0) from "LiteLLM_SpendLogs"' >"$OUT/litellm-spendlogs.txt" 2>&1 || true
          log "litellm spend logs (rows, spend): $(cat "$OUT/litellm-spendlogs.txt")"
        fi
        stop_pid "$LITELLM_PID"
      else
        log "litellm did not start; see above"
      fi
      ;;
    *) log "unknown setup $setup" ;;
  esac
done

# --- tally's memory with STREAMS open streams ----------------------------------------
# A second simulator whose streams trickle: first token after 2 s, then 4 tokens every
# 5 s (x-sim-* headers pass through tally). Client → tally over HTTP/2 (500 streams per
# connection). tally → simulator once over HTTP/1.1 (one upstream socket per stream, as
# with a cleartext upstream) and once over HTTP/2 (`http2: true`; what an https provider
# negotiates by ALPN): STREAM_UPSTREAMS (default "http1 http2"). Each in `tally up` (the
# whole embedded stack) and in `tally enforcer` (the proxy alone, as in split mode; its
# events go to the local log): STREAM_PROCESSES (default "up enforcer"). SETUPS="streams"
# runs only this part.
if [[ " $SETUPS " == *" tally "* || " $SETUPS " == *" streams "* ]] && [ "$STREAMS" -gt 0 ]; then
  TALLY_LOG_FILTER=warn "$TALLY" --config "$WORK/empty.yaml" simulate --listen "127.0.0.1:$STREAM_SIM_PORT" >"$WORK/sim2.log" 2>&1 &
  PIDS+=($!)
  wait_port "$STREAM_SIM_PORT"
  for process in ${STREAM_PROCESSES:-up enforcer}; do
  for mode in ${STREAM_UPSTREAMS:-http1 http2}; do
    http2=false
    [ "$mode" = http2 ] && http2=true
    name=$mode
    [ "$process" = up ] || name=$process-$mode
    start_tally "$TALLY_PORT" "$TALLY_ADMIN_PORT" "$STREAM_SIM_PORT" "$WORK/tally-streams-$name" "$http2" "$process"
    sleep 1
    IDLE_RSS=$(rss_of "$TALLY_PID")
    log "tally $process idle ($mode upstream): $IDLE_RSS; opening $STREAMS streams"
    "$LOADGEN" streams --url "http://127.0.0.1:$TALLY_PORT/v1/chat/completions" --body "@$STREAM_BODY" \
      -H "authorization: Bearer $GATEWAY_KEY" -H "x-sim-ttft-ms: 2000" -H "x-sim-chunk-delay-ms: 5000" \
      -H "x-sim-output-tokens: 400" --count "$STREAMS" --hold-secs "$STREAM_HOLD" >"$WORK/streams.out" &
    LG=$!
    until [ -s "$WORK/streams.out" ] || ! kill -0 "$LG" 2>/dev/null; do sleep 0.5; done
    OPENED=$(head -1 "$WORK/streams.out")
    log "streams: $OPENED"
    # Sample while held (the streams deliver a chunk every 5 s meanwhile).
    MAX_RSS=0
    for _ in $(seq 1 $((STREAM_HOLD / 2 > 1 ? STREAM_HOLD / 2 - 1 : 1))); do
      R=$(awk '/^VmRSS/ {print $2}' "/proc/$TALLY_PID/status")
      [ "$R" -gt "$MAX_RSS" ] && MAX_RSS=$R
      sleep 2
    done
    HELD_RSS=$(rss_of "$TALLY_PID")
    FDS=$(ls "/proc/$TALLY_PID/fd" | wc -l)
    log "tally $process with streams open ($mode upstream): $HELD_RSS (max sampled VmRSS $MAX_RSS kB, $FDS fds)"
    wait "$LG" || true
    rm -f "$WORK/streams.out"
    cat >"$OUT/tally-streams-$name.json" <<EOF
{"process": "$process", "upstream": "$mode", "opened": $OPENED, "idle": $IDLE_RSS, "held": $HELD_RSS, "max_sampled_rss_kb": $MAX_RSS, "fds": $FDS, "load": "$(load)"}
EOF
    stop_pid "$TALLY_PID"
  done
  done
fi

# --- tally's memory under upstream faults ----------------------------------------------
# SETUPS containing "faults": `tally up` in front of the simulator, and per fault a closed
# loop of FAULT_CONCURRENCY (64) requests for FAULT_DURATION (8 s) whose x-sim-* headers
# make the simulator misbehave. tally's RSS is sampled every 0.5 s; the peak, the
# requests answered and tally's usage rows are recorded ($OUT/faults-*.json).
if [[ " $SETUPS " == *" faults "* ]]; then
  FAULT_CONCURRENCY=${FAULT_CONCURRENCY:-64}
  FAULT_DURATION=${FAULT_DURATION:-8}
  start_tally "$TALLY_PORT" "$TALLY_ADMIN_PORT" "$SIM_PORT" "$WORK/tally-faults"
  sleep 1
  rss_of "$TALLY_PID" >"$OUT/faults-idle.json"
  run_fault() { # run_fault NAME BODY HEADER...
    local name=$1 body=$2
    shift 2
    "$LOADGEN" closed --url "http://127.0.0.1:$TALLY_PORT/v1/chat/completions" --body "@$body" \
      -H "authorization: Bearer $GATEWAY_KEY" "$@" --concurrency "$FAULT_CONCURRENCY" \
      --duration "$FAULT_DURATION" --warmup 0 >"$WORK/fault.json" &
    local lg=$! max=0 r
    while kill -0 "$lg" 2>/dev/null; do
      r=$(awk '/^VmRSS/ {print $2}' "/proc/$TALLY_PID/status")
      [ "$r" -gt "$max" ] && max=$r
      sleep 0.5
    done
    wait "$lg" || true
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.update(fault=sys.argv[2], max_rss_kb=int(sys.argv[3]), headers=sys.argv[4:]); print(json.dumps(d))' \
      "$WORK/fault.json" "$name" "$max" "$@" >"$OUT/faults-$name.json"
    log "fault $name: peak RSS $((max / 1024)) MiB; $(cat "$WORK/fault.json")"
  }
  run_fault huge_bodies "$BODY" -H "x-sim-output-tokens: 200000"
  run_fault huge_streams "$STREAM_BODY" -H "x-sim-output-tokens: 200000"
  run_fault slow_upstream "$BODY" -H "x-sim-latency-ms: 2000"
  run_fault invalid_json "$BODY" -H "x-sim-invalid: json"
  run_fault invalid_sse "$STREAM_BODY" -H "x-sim-invalid: sse"
  run_fault reset_mid_stream "$STREAM_BODY" -H "x-sim-fail-after-chunks: 3" -H "x-sim-output-tokens: 400"
  run_fault upstream_5xx "$BODY" -H "x-sim-status: 503"
  sleep 2
  rss_of "$TALLY_PID" >"$OUT/faults-after.json"
  "$TALLY" --config "$WORK/tally-faults/tally.yaml" sql --format json \
    "SELECT finish_state, usage_source, count(*) AS events FROM usage GROUP BY 1, 2 ORDER BY 1, 2" \
    >"$OUT/faults-usage.json" 2>"$WORK/faults-sql.err" || cat "$WORK/faults-sql.err" >&2
  stop_pid "$TALLY_PID"
fi

python3 "$ROOT/bench/proxy/table.py" "$OUT" | tee "$OUT/table.md"
log "results in $OUT"
