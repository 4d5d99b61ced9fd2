#!/usr/bin/env python3
"""Render (and lint) a Helm chart offline with Helm's own engine, without a helm binary.

    python deploy/helm/render.py deploy/helm/tally [-f VALUES.yaml]... [--set-json JSON]
        [--name RELEASE] [--namespace NS] [--lint]

Prints the rendered manifests like `helm template` (each document preceded by
`# Source: <template path>`; NOTES.txt and empty templates are left out). With --lint,
runs `helm lint --strict` first with the same values and exits 1 if it reports a warning
or an error. Uses the `helm-python-sdk` package (Helm's Go SDK as a native library),
which scripts/setup-test-deps.sh installs into the test virtualenv; tests/deploy.rs runs
this script. Where a `helm` binary is installed, `helm template` and `helm lint --strict`
with the same arguments are equivalent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge like repeated `-f` files (maps merge, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append", default=[], help="values file (YAML)")
    parser.add_argument("--set-json", action="append", default=[], help="values as a JSON object")
    parser.add_argument("--name", default="tally")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--lint", action="store_true", help="run `helm lint --strict` first")
    args = parser.parse_args()

    try:
        import helm_python as helm
    except ImportError:
        print(
            "render.py: the `helm-python-sdk` package is missing; run scripts/setup-test-deps.sh",
            file=sys.stderr,
        )
        return 2

    values: dict[str, Any] = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()) or {})
    for text in args.set_json:
        values = merge(values, json.loads(text))

    if args.lint:
        report = helm.lint(args.chart, values, strict=True, namespace=args.namespace)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        for m in report.get("messages", []):
            level = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m.get("severity"), "?")
            print(f"lint [{level}] {m.get('path')}: {m.get('error')}", file=sys.stderr)
        for e in report.get("errors") or []:
            print(f"lint [ERROR] {e}", file=sys.stderr)
        if problems or report.get("errors"):
            return 1

    try:
        with helm.Chart.load(args.chart) as chart:
            manifests = chart.render(
                values, name=args.name, namespace=args.namespace, is_install=True
            )
    except helm.HelmError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        print("---")
        print(f"# Source: {path}")
        print(text.strip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
