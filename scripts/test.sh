#!/usr/bin/env bash
# The whole test suite (README quick start, second command). Installs test dependencies
# first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
bash scripts/setup-test-deps.sh >/dev/null
export TALLY_TEST_PYTHON="${TALLY_TEST_VENV:-$HOME/.cache/tally/venv}/bin/python"
cargo test --workspace --all-targets --no-fail-fast
