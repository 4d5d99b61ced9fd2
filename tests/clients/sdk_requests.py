"""Drives tally with the official OpenAI and Anthropic Python SDKs (and plain HTTP for
Gemini) and prints, per request, one JSON line with the request id tally returned and the
usage the SDK reported to the caller, normalized to tally's columns.

Usage: python sdk_requests.py <proxy base url> <gateway key>
"""

import json
import sys
import urllib.request

import anthropic
import openai

BASE, KEY = sys.argv[1].rstrip("/"), sys.argv[2]


def emit(sdk, kind, stream, request_id, inp, out, cached=0, cache_write=0, reasoning=0, extra=None):
    line = {
        "sdk": sdk,
        "kind": kind,
        "stream": stream,
        "request_id": request_id,
        "input_tokens": inp,
        "output_tokens": out,
        "cached_input_tokens": cached,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
    }
    line.update(extra or {})
    print(json.dumps(line), flush=True)


def openai_usage(u):
    cached = getattr(getattr(u, "prompt_tokens_details", None), "cached_tokens", 0) or 0
    reasoning = getattr(getattr(u, "completion_tokens_details", None), "reasoning_tokens", 0) or 0
    return u.prompt_tokens, u.completion_tokens, cached, reasoning


def run_openai():
    client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": "Explain event sourcing in two sentences."}]

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
    c = raw.parse()
    i, o, cached, r = openai_usage(c.usage)
    emit("openai", "chat", False, raw.headers.get("x-tally-request-id"), i, o, cached, 0, r)

    raw = client.chat.completions.with_raw_response.create(
        model="o4-mini", messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    usage = None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
    i, o, cached, r = openai_usage(usage)
    emit("openai", "chat", True, raw.headers.get("x-tally-request-id"), i, o, cached, 0, r)

    # Streaming without include_usage: the SDK must see no usage chunk at all.
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs, stream=True)
    saw_usage = False
    empty_choices = False
    for chunk in raw.parse():
        saw_usage = saw_usage or chunk.usage is not None
        empty_choices = empty_choices or len(chunk.choices) == 0
    emit("openai", "chat", True, raw.headers.get("x-tally-request-id"), None, None,
         extra={"client_saw_usage": saw_usage or empty_choices})

    raw = client.responses.with_raw_response.create(model="gpt-4.1-mini", input="Name three prime numbers.")
    resp = raw.parse()
    u = resp.usage
    emit("openai", "responses", False, raw.headers.get("x-tally-request-id"), u.input_tokens, u.output_tokens,
         u.input_tokens_details.cached_tokens, 0, u.output_tokens_details.reasoning_tokens)

    raw = client.responses.with_raw_response.create(model="gpt-4.1-mini", input="Name three primes.", stream=True)
    u = None
    for ev in raw.parse():
        if ev.type == "response.completed":
            u = ev.response.usage
    emit("openai", "responses", True, raw.headers.get("x-tally-request-id"), u.input_tokens, u.output_tokens,
         u.input_tokens_details.cached_tokens, 0, u.output_tokens_details.reasoning_tokens)

    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["tally", "ledger"])
    e = raw.parse()
    emit("openai", "embeddings", False, raw.headers.get("x-tally-request-id"), e.usage.prompt_tokens, 0)


def anthropic_norm(u):
    cr = getattr(u, "cache_read_input_tokens", 0) or 0
    cw = getattr(u, "cache_creation_input_tokens", 0) or 0
    return u.input_tokens + cr + cw, u.output_tokens, cr, cw


def run_anthropic():
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": "Write a haiku about ledgers."}]
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=200, messages=msgs)
    m = raw.parse()
    i, o, cr, cw = anthropic_norm(m.usage)
    emit("anthropic", "messages", False, raw.headers.get("x-tally-request-id"), i, o, cr, cw)

    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=300, messages=msgs, stream=True
    )
    start_usage = None
    out = None
    for ev in raw.parse():
        if ev.type == "message_start":
            start_usage = ev.message.usage
        elif ev.type == "message_delta":
            out = ev.usage.output_tokens
    i, _, cr, cw = anthropic_norm(start_usage)
    emit("anthropic", "messages", True, raw.headers.get("x-tally-request-id"), i, out, cr, cw)


def run_gemini():
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "Say hello in French."}]}]}).encode()
    for stream in (False, True):
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        req = urllib.request.Request(
            f"{BASE}/v1beta/models/gemini-2.5-flash:{method}",
            data=body,
            headers={"content-type": "application/json", "x-goog-api-key": KEY},
        )
        with urllib.request.urlopen(req) as resp:
            rid = resp.headers.get("x-tally-request-id")
            text = resp.read().decode()
        if stream:
            metas = [json.loads(l[5:]) for l in text.splitlines() if l.startswith("data:")]
            meta = [m["usageMetadata"] for m in metas if "usageMetadata" in m][-1]
        else:
            meta = json.loads(text)["usageMetadata"]
        thoughts = meta.get("thoughtsTokenCount", 0)
        emit("gemini", "generate_content", stream, rid, meta.get("promptTokenCount", 0),
             meta.get("candidatesTokenCount", 0) + thoughts, meta.get("cachedContentTokenCount", 0), 0, thoughts)


run_openai()
run_anthropic()
run_gemini()
