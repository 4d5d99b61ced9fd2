"""Load for the crash suite: worker threads send requests with the official OpenAI and
Anthropic Python SDKs (streaming and not) to a tally proxy that is being killed and
restarted, until a stop file appears (or at most a given number of seconds). Prints one JSON line per request: the kind, the
HTTP status and x-tally-request-id of the response if one arrived complete, and the usage
the SDK reported; or `"status": null` with the error when no complete response arrived
(connection refused or broken while tally was down).

Usage: python crash_load.py <proxy base url> <gateway key> <max seconds> <workers> <stop file>
"""

import json
import os
import random
import sys
import threading
import time

import anthropic
import openai

BASE, KEY = sys.argv[1].rstrip("/"), sys.argv[2]
SECONDS, WORKERS, STOP = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()


def emit(line):
    with lock:
        print(json.dumps(line), flush=True)


def sim_headers(rng):
    # Streams of 10-150 tokens at 4 ms a chunk: many are in flight when a kill lands.
    return {"x-sim-output-tokens": str(rng.randint(10, 150)), "x-sim-chunk-delay-ms": "4"}


def openai_call(client, rng, stream):
    msgs = [{"role": "user", "content": f"crash test {rng.random()}"}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=msgs, max_tokens=200, stream=True,
            stream_options={"include_usage": True}, extra_headers=sim_headers(rng))
        usage = None
        for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=msgs, max_tokens=200, extra_headers=sim_headers(rng))
        usage = raw.parse().usage
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)
    return raw.status_code, raw.headers.get("x-tally-request-id"), tokens


def anthropic_call(client, rng, stream):
    msgs = [{"role": "user", "content": f"crash test {rng.random()}"}]
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=200, messages=msgs, stream=stream,
        extra_headers=sim_headers(rng))
    if stream:
        start, out = None, None
        for ev in raw.parse():
            if ev.type == "message_start":
                start = ev.message.usage
            elif ev.type == "message_delta":
                out = ev.usage.output_tokens
    else:
        m = raw.parse()
        start, out = m.usage, m.usage.output_tokens
    inp = None
    if start is not None:
        inp = (start.input_tokens + (getattr(start, "cache_read_input_tokens", 0) or 0)
               + (getattr(start, "cache_creation_input_tokens", 0) or 0))
    return raw.status_code, raw.headers.get("x-tally-request-id"), (inp, out)


def worker(n, deadline):
    rng = random.Random(n)
    oa = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=15)
    an = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=15)
    i = 0
    while time.monotonic() < deadline and not os.path.exists(STOP):
        i += 1
        kind = rng.choice(["openai", "openai_stream", "anthropic", "anthropic_stream"])
        line = {"worker": n, "i": i, "kind": kind}
        try:
            if kind.startswith("openai"):
                status, rid, (inp, out) = openai_call(oa, rng, kind.endswith("stream"))
            else:
                status, rid, (inp, out) = anthropic_call(an, rng, kind.endswith("stream"))
            line.update(status=status, request_id=rid, input_tokens=inp, output_tokens=out)
        except (openai.APIStatusError, anthropic.APIStatusError) as e:
            # An error response is a response: it must have its row too.
            line.update(status=e.status_code, request_id=e.response.headers.get("x-tally-request-id"))
        except Exception as e:  # connection refused, reset or cut mid-body: no response
            line.update(status=None, error=f"{type(e).__name__}: {e}"[:200])
            time.sleep(0.05)
        emit(line)


deadline = time.monotonic() + SECONDS
threads = [threading.Thread(target=worker, args=(n, deadline)) for n in range(WORKERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
