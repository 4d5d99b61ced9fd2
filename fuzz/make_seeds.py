#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the repository's
own fixtures: provider bodies and streams (enforcer/fixtures/providers), policy files
(enforcer/tests/policy_cookbook, deploy/examples), plus hand-written encoded events and
segment files framed as the segment log frames them. Deterministic; rerun after changing
a fixture: python3 fuzz/make_seeds.py. Files named crash-* are kept (they reproduce bugs
that were fixed) and are never written here."""

import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIXTURES = ROOT / "enforcer" / "fixtures" / "providers"


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the crc32c crate computes it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", crc32c(length)) + struct.pack("<I", crc32c(payload)) + payload


SEGMENT_HEADER = b"TALLYSEG" + bytes([1]) + bytes(7)

HEADER = {
    "event_id": "01a22ad4-afb6-71d2-b7a9-0d39505a88e8",
    "schema_version": 1,
    "occurred_at": "2026-11-01T10:00:00.123456Z",
    "gateway_instance": "gw-1",
    "request_id": "req-7f3a",
    "tenant": "acme",
    "api_key_id": "k1",
    "labels": {"team": "ml", "user": "ada"},
    "provider": "openai",
    "route": "chat",
    "model_requested": "gpt-4o-mini",
}

EVENTS = {
    "usage": {
        "event_type": "usage",
        **HEADER,
        "model_served": "gpt-4o-mini-2024-07-18",
        "upstream_request_id": "chatcmpl-123",
        "upstream": "openai",
        "status_code": 200,
        "streamed": True,
        "finish_state": "completed",
        "input_tokens": 1200,
        "cached_input_tokens": 1024,
        "cache_write_tokens": 0,
        "output_tokens": 310,
        "reasoning_tokens": 64,
        "audio_input_tokens": 0,
        "audio_output_tokens": 0,
        "usage_source": "provider_reported",
        "cost_micros": 2157,
        "price_version": "2026-10-01",
        "latency_ms": 812,
        "ttft_ms": 201,
        "retry_attempt": 1,
        "retry_of": "req-7f39",
    },
    "usage_minimal": {
        "event_type": "usage",
        **{k: HEADER[k] for k in ("event_id", "schema_version", "occurred_at", "gateway_instance", "request_id", "tenant")},
        "streamed": False,
        "finish_state": "client_aborted",
        "usage_source": "estimated",
        "cost_micros": 0,
        "latency_ms": 3,
    },
    "decision": {
        "event_type": "decision",
        **HEADER,
        "outcome": "deny",
        "rule": "team-daily-tokens",
        "rule_kind": "usage_cap",
        "counter_key": "team-daily-tokens:key=ml",
        "counter_value": 1999000,
        "counter_limit": 2000000,
        "counter_unit": "tokens",
        "window_start": "2026-10-31T23:00:00Z",
        "window_end": "2026-11-01T23:00:00Z",
        "reset_at": "2026-11-01T23:00:00Z",
        "reserved_tokens": 1700,
        "reserved_cost_micros": 900,
        "reason": "team ml used 1999000 of 2000000 tokens today",
    },
    "correction": {
        "event_type": "correction",
        **HEADER,
        "corrects_event_id": "01a22ad4-afb6-71d2-b7a9-0d39505a88e9",
        "reason": "provider report differs",
        "input_tokens": 1300,
        "output_tokens": 300,
        "cost_micros": 2200,
        "price_version": "2026-10-01",
        "usage_source": "provider_reported",
    },
    "unknown_type": {"event_type": "telemetry", "event_id": "x", "future": [1, {"a": None}]},
}
EVENTS["unknown_values"] = {
    **EVENTS["decision"],
    "outcome": "escalate",
    "rule_kind": "quota",
    "counter_unit": "gpu_seconds",
    "labels": {"b": "1", "a": "2"},
    "reason": "caf\u00e9 \u2603",
    "future_field": {"nested": [1, 2]},
}


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    for d in CORPUS.glob("*"):
        for f in d.glob("*"):
            if not f.name.startswith("crash-"):
                f.unlink()

    # Providers: every fixture of the provider, as it is (request, body or stream).
    for provider in ("openai", "anthropic", "gemini"):
        for f in sorted(FIXTURES.glob(provider + "_*")):
            write(provider, f.name, f.read_bytes())

    # SSE: byte 0 seeds the chunking, byte 1 the size bound (0: default; n: 4n bytes).
    streams = {f.stem: f.read_bytes() for f in sorted(FIXTURES.glob("*.sse"))}
    streams |= {
        "fields": b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\ndata:x\ndata: y\nid: 7\nretry: 100\n\n",
        "line_endings": b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\n",
        "bom": b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n",
        "tail": b"data: a\n\ndata: [DONE]",
        "non_utf8": b"data: \xff\xfe\nid: a\x00b\nretry: 99999999999999999999999\n\n",
    }
    for name, body in streams.items():
        write("sse", f"{name}-bytewise", bytes([0, 0]) + body)
        write("sse", f"{name}-chunked", bytes([7, 0]) + body)
    write("sse", "openai_chat_stream-bounded", bytes([13, 64]) + streams["openai_chat_stream"])
    write("sse", "fields-tiny-bound", bytes([3, 4]) + streams["fields"])

    # Events: the JSON wire form.
    payloads = {name: json.dumps(ev, ensure_ascii=False).encode() for name, ev in EVENTS.items()}
    for name, payload in payloads.items():
        write("event_decode", name + ".json", payload)

    # Segment files: byte 0 = 0 (one file numbered 0), then the file.
    records = [payloads[n] for n in ("usage", "decision", "correction", "usage_minimal")]
    valid = SEGMENT_HEADER + b"".join(frame(p) for p in records)
    write("segment_reader", "valid", bytes([0]) + valid)
    write("segment_reader", "torn_tail", bytes([0]) + valid + frame(payloads["usage"])[:20])
    write("segment_reader", "zero_tail", bytes([0]) + valid + bytes(24))
    write("segment_reader", "header_only", bytes([0]) + SEGMENT_HEADER)
    write("segment_reader", "torn_creation", bytes([0]) + SEGMENT_HEADER[:5])
    corrupt = bytearray(valid)
    corrupt[len(SEGMENT_HEADER) + 14] ^= 0xFF
    write("segment_reader", "corrupt_then_valid", bytes([0]) + bytes(corrupt))
    # Two segment files (byte 0 = 1: two files, numbered from 0), the first one u16-sized.
    first = SEGMENT_HEADER + frame(payloads["decision"])
    write("segment_reader", "two_segments", bytes([1]) + struct.pack("<H", len(first)) + first + valid)
    write("segment_reader", "two_segments_from_7", bytes([5]) + struct.pack("<H", len(first)) + first + valid)

    # Policies: the cookbook and the deployment example.
    for f in sorted((ROOT / "enforcer" / "tests" / "policy_cookbook").glob("*.yaml")):
        write("policy_parse", f.name, f.read_bytes())
    write("policy_parse", "deploy-example.yaml", (ROOT / "deploy" / "examples" / "policy.yaml").read_bytes())


if __name__ == "__main__":
    main()
