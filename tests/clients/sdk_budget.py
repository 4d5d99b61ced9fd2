"""Races N streaming chat completions, made with the official OpenAI Python SDK, against a
tally proxy that holds a dollar cap. Requests start at staggered moments within about a
second, so some arrive while others still stream and some after others settled. A few
ask the simulator for more output than their `max_tokens` (real usage above the
reservation). Prints one JSON line per request: the request id tally returned, the HTTP
status, and either the usage the SDK reported or the error (message, `x-tally-rule`,
`retry-after`).

Usage: python sdk_budget.py <proxy base url> <gateway key> <requests>
"""

import asyncio
import json
import random
import sys

import openai

BASE, KEY, N = sys.argv[1].rstrip("/"), sys.argv[2], int(sys.argv[3])


async def one(client, i, rng):
    await asyncio.sleep(rng.uniform(0, 1.0))
    max_tokens = rng.choice([400, 800, 1600])
    # One request in eight streams more than it asked for.
    output = max_tokens + 300 if i % 8 == 0 else rng.randint(max_tokens // 4, max_tokens)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"Request {i}: summarise the plan."}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-output-tokens": str(output), "x-sim-chunk-delay-ms": "3"},
        )
        request_id = raw.headers.get("x-tally-request-id")
        usage = None
        async for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage
        return {
            "i": i,
            "status": raw.status_code,
            "request_id": request_id,
            "max_tokens": max_tokens,
            "input_tokens": usage.prompt_tokens if usage else None,
            "output_tokens": usage.completion_tokens if usage else None,
        }
    except openai.APIStatusError as e:
        return {
            "i": i,
            "status": e.status_code,
            "request_id": e.response.headers.get("x-tally-request-id"),
            "rule": e.response.headers.get("x-tally-rule"),
            "retry_after": e.response.headers.get("retry-after"),
            "message": e.message,
        }


async def main():
    # No SDK retries: every 429 must reach the caller as tally sent it.
    client = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=60)
    rng = random.Random(20261130)
    results = await asyncio.gather(*(one(client, i, random.Random(rng.random())) for i in range(N)))
    for r in results:
        print(json.dumps(r), flush=True)
    await client.close()


asyncio.run(main())
