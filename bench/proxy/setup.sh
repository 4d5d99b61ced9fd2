#!/usr/bin/env bash
# Installs what the proxy benchmark compares tally with, idempotently: Debian's nginx
# (used as a plain reverse proxy, started by run.sh with its own config, never as the
# system service) and Debian's PostgreSQL server (LiteLLM's spend database), and the
# LiteLLM proxy from PyPI (`litellm[proxy]`) in its own virtualenv outside the clone.
set -euo pipefail

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: install the packages without starting their system services
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

VENV="${TALLY_BENCH_LITELLM_VENV:-$HOME/.cache/tally/litellm-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import litellm.proxy.proxy_server' >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'litellm[proxy]' prisma
fi
echo "proxy benchmark dependencies ready (litellm in $VENV)"
