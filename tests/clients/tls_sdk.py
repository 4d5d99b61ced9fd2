"""Calls a tally proxy served over HTTPS with the official OpenAI Python SDK, trusting the
given CA file, once without and once with streaming. Prints one JSON line per call: the
request id tally returned, the HTTP version used and the usage the SDK reported.

Usage: python tls_sdk.py <https base url> <gateway key> <ca file>
"""

import json
import sys

import httpx
import openai

BASE, KEY, CA = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0,
                       http_client=httpx.Client(verify=CA))
msgs = [{"role": "user", "content": "Say hello over TLS."}]

raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
u = raw.parse().usage
print(json.dumps({"stream": False, "request_id": raw.headers.get("x-tally-request-id"),
                  "http_version": raw.http_response.http_version,
                  "input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}))

raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True})
usage = None
for chunk in raw.parse():
    if chunk.usage is not None:
        usage = chunk.usage
print(json.dumps({"stream": True, "request_id": raw.headers.get("x-tally-request-id"),
                  "http_version": raw.http_response.http_version,
                  "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}))
