#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (crates.io) that tests/e2e_tansu.rs runs tally
# against, idempotently and outside the clone: the binary goes to $TALLY_TOOLS/bin/tansu
# (default ~/.cache/tally/tools), built in a directory of its own
# (~/.cache/tally/tansu-build, removed after a successful install), never the project's
# target directory. Skips the build when the binary is there, answers `--version` and has
# both storage engines the tests use. Prints the binary's path on its last line.
#
# A cold build took 15 minutes on the project's 2-core machine (shared with other
# builds); a cached install takes no time.
set -euo pipefail

TOOLS="${TALLY_TOOLS:-$HOME/.cache/tally/tools}"
BIN="$TOOLS/bin/tansu"
# The tansu release the tests were written against; override to try another.
VERSION="${TALLY_TANSU_VERSION:-0.6.0}"
BUILD_DIR="$HOME/.cache/tally/tansu-build"

usable() {
  [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1 \
    && "$BIN" --help 2>/dev/null | grep -q '^Storage engines:.*dynostore.*libsql'
}

if usable; then
  echo "tansu already installed: $("$BIN" --version 2>&1 | head -n1)" >&2
  echo "$BIN"
  exit 0
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo is needed to install tansu" >&2; exit 1; }
mkdir -p "$TOOLS"
start=$(date +%s)
echo "installing tansu $VERSION from crates.io into $TOOLS (a cold build takes several minutes)" >&2
# Its default feature set has no storage engine at all: `dynostore` brings the in-memory
# store (memory://), `libsql` the SQLite file store (sqlite://) that survives a restart.
# --force replaces a binary built without them.
CARGO_TARGET_DIR="$BUILD_DIR" cargo install tansu --locked --force \
  --version "$VERSION" --features dynostore,libsql --root "$TOOLS" >&2
usable || { echo "the installed tansu lacks the dynostore or libsql storage engine" >&2; exit 1; }
rm -rf "$BUILD_DIR"
echo "tansu installed in $(( $(date +%s) - start )) s: $("$BIN" --version 2>&1 | head -n1)" >&2
echo "$BIN"
