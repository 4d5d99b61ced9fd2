#!/usr/bin/env python3
"""Offline license check of every crate in the build graph: each package's SPDX license
expression must be satisfiable with the licenses allowed in deny.toml ([licenses] allow),
the list `cargo deny check licenses` uses. Reads `cargo metadata --locked`; needs no
network. Prints the licenses seen and exits 1 naming any package that fails.

Usage: python3 scripts/check-licenses.py
"""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
allowed = set(tomllib.loads((ROOT / "deny.toml").read_text())["licenses"]["allow"])


def tokens(expr):
    # Old-style "MIT/Apache-2.0" means OR.
    expr = expr.replace("/", " OR ")
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+(?: WITH [A-Za-z0-9.+-]+)?", expr)


def satisfiable(toks):
    """Recursive descent over OR (lowest), AND, parentheses and WITH terms."""
    pos = 0

    def term():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t == "(":
            v = disjunction()
            pos += 1  # ")"
            return v
        return t in allowed

    def conjunction():
        nonlocal pos
        v = term()
        while pos < len(toks) and toks[pos] == "AND":
            pos += 1
            v = term() and v
        return v

    def disjunction():
        nonlocal pos
        v = conjunction()
        while pos < len(toks) and toks[pos] == "OR":
            pos += 1
            v = conjunction() or v
        return v

    return disjunction()


meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    cwd=ROOT, check=True, capture_output=True, text=True).stdout)
workspace = set(meta["workspace_members"])
failed = []
seen = 0
for p in meta["packages"]:
    if p["id"] in workspace:
        continue
    seen += 1
    lic = p.get("license")
    if not lic:
        failed.append(f"{p['name']} {p['version']}: no SPDX license field")
    elif not satisfiable(tokens(lic)):
        failed.append(f"{p['name']} {p['version']}: {lic}")
if failed:
    print("licenses not allowed by deny.toml:", *failed, sep="\n  ")
    sys.exit(1)
print(f"licenses: {seen} dependencies, all allowed by deny.toml")
