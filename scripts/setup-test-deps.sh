#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: rustfmt/clippy components, cargo-fuzz,
# and the Python clients (official `openai` and `anthropic` SDKs) used as real external
# clients in end-to-end tests, into a virtualenv outside the clone.
set -euo pipefail

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

VENV="${TALLY_TEST_VENV:-$HOME/.cache/tally/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import openai, anthropic' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.50,<3' 'anthropic>=0.40,<1'
fi
# A real S3-compatible server (moto) and an independent Delta/Parquet reader (pyarrow)
# for the ledger's storage tests.
if ! "$VENV/bin/python" -c 'import moto, pyarrow' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'pyarrow>=15'
fi
# Helm's own chart engine (the Go SDK as a native library, no helm binary) to render and
# lint deploy/helm/tally in tests/deploy.rs (through deploy/helm/render.py).
if ! "$VENV/bin/python" -c 'import helm_python' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'helm-python-sdk>=0.2.2,<0.3'
fi
# Independent engines that must read the Delta tables (tests/interop.rs): delta-rs's
# Python package and DuckDB.
if ! "$VENV/bin/python" -c 'import deltalake, duckdb' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'deltalake>=1,<2' 'duckdb>=1.1,<3'
fi
# psycopg: a real Python Postgres client for the wire-protocol tests (tests/e2e_clients.rs).
if ! "$VENV/bin/python" -c 'import psycopg' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'psycopg[binary]>=3.1,<4'
fi
# psql (Debian's postgresql-client) for the same tests.
if ! command -v psql >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq postgresql-client >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq postgresql-client >/dev/null; }
fi
# Debian's Chromium, headless, for the screenshot test of the HTML report
# (tests/e2e_report.rs).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq chromium >/dev/null; }
fi
# openssl (a test certificate) and curl (an HTTPS client) for tests/e2e_tls.rs.
for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -qq "$tool" >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "$tool" >/dev/null; }
  fi
done
# cargo-fuzz, for the fuzz targets of scripts/fuzz.sh (a short run is part of CI), in a
# tools directory outside the clone.
TOOLS="$HOME/.cache/tally/tools"
if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  # Built in a temporary directory, not in the inherited CARGO_TARGET_DIR.
  env -u CARGO_TARGET_DIR cargo install --quiet cargo-fuzz --locked --root "$TOOLS"
fi
echo "test dependencies ready (python clients in $VENV, cargo-fuzz in $TOOLS/bin)"
