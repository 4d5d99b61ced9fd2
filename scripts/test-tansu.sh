#!/usr/bin/env bash
# Runs tests/e2e_tansu.rs: tally's split mode against a real Kafka-protocol broker
# (tansu, listening on 127.0.0.1 only). Installs the broker first if it is not cached
# (scripts/install-tansu.sh; a cold build takes several minutes, later runs none).
# Extra arguments go to the test binary (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
TALLY_TANSU="$(bash scripts/install-tansu.sh | tail -n1)"
export TALLY_TANSU
cargo test --workspace --test e2e_tansu -- --ignored "$@"
