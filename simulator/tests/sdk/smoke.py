"""Smoke test of the provider simulator with the official Python SDKs (manual, not run by cargo).

Owns only SDK-compatibility checks; must not be relied on by CI (the SDKs are not installed there).

    pip install openai anthropic google-genai
    cargo run -p tally-simulator --example serve -- 127.0.0.1:9090 &
    python simulator/tests/sdk/smoke.py http://127.0.0.1:9090
"""
import sys
import warnings

import anthropic
import openai
from google import genai
from google.genai import types

warnings.simplefilter("ignore")
base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9090"

oc = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
r = oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=30)
assert r.model == "gpt-4o-mini-2024-07-18" and r.usage.completion_tokens == 30
text, usage = "", None
for ch in oc.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                                     stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    usage = ch.usage or usage
assert text and usage.completion_tokens_details.reasoning_tokens > 0
with oc.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]) as st:
    for _ in st:
        pass
    assert st.get_final_completion().choices[0].finish_reason == "stop"
r = oc.responses.create(model="gpt-5", input="hello")
assert r.status == "completed" and r.output_text and r.usage.output_tokens_details.reasoning_tokens > 0
with oc.responses.stream(model="gpt-4.1", input=[{"role": "user", "content": "hello"}], instructions="be brief") as st:
    for _ in st:
        pass
    assert st.get_final_response().usage.output_tokens > 0
assert oc.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this").usage.completion_tokens == 16
e = oc.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
assert len(e.data) == 2 and len(e.data[0].embedding) == 1536
assert any(m.id == "gpt-4o-mini" for m in oc.models.list())
try:
    oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-sim-status": "429"})
    raise AssertionError("expected 429")
except openai.RateLimitError as ex:
    assert ex.body["code"] == "rate_limit_exceeded"

ac = anthropic.Anthropic(base_url=base, api_key="ak-test", max_retries=0)
m = ac.messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
assert m.model == "claude-sonnet-4-5-20250929" and m.usage.output_tokens > 0
with ac.messages.stream(model="claude-sonnet-4-5", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
                        messages=[{"role": "user", "content": "hi"}]) as st:
    for _ in st:
        pass
    fm = st.get_final_message()
assert [b.type for b in fm.content] == ["thinking", "text"]
assert ac.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello world"}]).input_tokens == 2
big = "lorem ipsum " * 1200
seen = []
for _ in range(2):
    m = ac.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "q"}],
                           system=[{"type": "text", "text": big, "cache_control": {"type": "ephemeral"}}])
    seen.append((m.usage.cache_creation_input_tokens, m.usage.cache_read_input_tokens))
assert seen[0][0] > 0 and seen[1][1] == seen[0][0]
try:
    ac.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                       extra_headers={"x-sim-status": "529"})
    raise AssertionError("expected 529")
except anthropic.APIStatusError as ex:
    assert ex.status_code == 529 and ex.body["error"]["type"] == "overloaded_error"

gc = genai.Client(api_key="gk-test", http_options=types.HttpOptions(base_url=base))
r = gc.models.generate_content(model="gemini-2.5-flash", contents="hello there")
assert r.text and r.usage_metadata.thoughts_token_count > 0
assert r.usage_metadata.total_token_count == (r.usage_metadata.prompt_token_count + r.usage_metadata.candidates_token_count
                                              + r.usage_metadata.thoughts_token_count)
last, text = None, ""
for ch in gc.models.generate_content_stream(model="gemini-2.0-flash", contents="hello",
                                            config=types.GenerateContentConfig(max_output_tokens=50)):
    text += ch.text or ""
    last = ch
assert last.usage_metadata.candidates_token_count == 50 and text
assert gc.models.count_tokens(model="gemini-2.5-flash", contents="hello there").total_tokens == 2
print("sdk smoke: all checks passed")
