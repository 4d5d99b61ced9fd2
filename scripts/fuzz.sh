#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/) and runs each one for SECONDS_PER_TARGET seconds
# (default 15: the short form CI runs; see docs/reliability.md, "Fuzzing", for long runs).
# Fails if any target crashes, panics, times out or runs out of memory, and prints one
# summary line per target. Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Stable toolchain: built with `--sanitizer none` (AddressSanitizer needs nightly), with
# optimizations plus debug assertions and overflow checks (cargo-fuzz's default).
# Environment: TALLY_FUZZ_TARGET_DIR (build artefacts, default
# ~/.cache/tally/fuzz-target; the inherited CARGO_TARGET_DIR is not used, the fuzz
# workspace builds with other flags), TALLY_FUZZ_WORK_DIR (the corpus grown by the runs,
# kept between runs, and crash artefacts; default ~/.cache/tally/fuzz-work).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-15}"
shift || true
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR="${TALLY_FUZZ_TARGET_DIR:-$HOME/.cache/tally/fuzz-target}"
export CARGO_TERM_COLOR=never
WORK="${TALLY_FUZZ_WORK_DIR:-$HOME/.cache/tally/fuzz-work}"
export PATH="$HOME/.cache/tally/tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: run bash scripts/setup-test-deps.sh" >&2
  exit 1
fi

BUILD_FLAGS=(--sanitizer none --codegen-units 16)
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && cargo fuzz list)
fi

start=$(date +%s)
if [ "${#TARGETS[@]}" -eq 1 ]; then
  (cd fuzz && cargo fuzz build "${BUILD_FLAGS[@]}" "${TARGETS[0]}")
else
  (cd fuzz && cargo fuzz build "${BUILD_FLAGS[@]}")
fi
echo "fuzz: built ${#TARGETS[@]} targets in $(( $(date +%s) - start )) s"

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t" "$WORK/logs"
  log="$WORK/logs/$t.log"
  # The first corpus directory receives new inputs; the committed seeds stay untouched.
  status=0
  (cd fuzz && cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "$WORK/corpus/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$t/") >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(find "$WORK/corpus/$t" "fuzz/corpus/$t" -type f | wc -l)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  if [ "$status" -eq 0 ]; then
    echo "fuzz $t: ok, ${runs:-?} runs in ${SECONDS_PER_TARGET} s, corpus $corpus inputs, coverage ${cov:-?} edges"
  else
    failed+=("$t")
    echo "fuzz $t: FAILED (exit $status) after ${runs:-?} runs; log $log; artefacts in $WORK/artifacts/$t/"
    if grep -qE 'panicked at|ERROR: libFuzzer' "$log"; then
      grep -E -A 30 'panicked at|ERROR: libFuzzer' "$log" | head -60 || true
    else
      tail -40 "$log" || true
    fi
  fi
done

echo "fuzz: ${#TARGETS[@]} targets, $(( $(date +%s) - start )) s in all"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; reproduce with: cd fuzz && cargo fuzz run --sanitizer none TARGET ARTEFACT" >&2
  exit 1
fi
