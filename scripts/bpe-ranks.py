#!/usr/bin/env python3
"""Write the compact rank file the enforcer's token counter embeds
(enforcer/src/providers/bpe/*.ranks) from a tiktoken `.tiktoken` file.

Format: for each rank from 0 up, one byte with the token's length (1-255), then its
bytes. Ranks must run from 0 without gaps (true of o200k_base and cl100k_base).

    python3 scripts/bpe-ranks.py ~/.cargo/registry/src/*/tiktoken-rs-0.12.1/assets/o200k_base.tiktoken \
        enforcer/src/providers/bpe/o200k_base.ranks

The enforcer's tests compare every rank with tiktoken-rs, so a stale file fails them.
"""
import base64
import sys


def main(src: str, dst: str) -> None:
    tokens = {}
    with open(src, encoding="ascii") as f:
        for line in f:
            token, rank = line.split()
            tokens[int(rank)] = base64.b64decode(token)
    out = bytearray()
    for rank in range(len(tokens)):
        if rank not in tokens:
            sys.exit(f"{src}: rank {rank} is missing; ranks must run from 0 without gaps")
        token = tokens[rank]
        if not 1 <= len(token) <= 255:
            sys.exit(f"{src}: rank {rank} has {len(token)} bytes; the format holds 1-255")
        out.append(len(token))
        out += token
    with open(dst, "wb") as f:
        f.write(out)
    print(f"{dst}: {len(tokens)} tokens, {len(out)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bpe-ranks.py SOURCE.tiktoken OUT.ranks")
    main(sys.argv[1], sys.argv[2])
