//! Tests of the provider API against real-shaped fixtures (`enforcer/fixtures/providers`):
//! exact normalized figures per provider, stream handling, rewrites and error shapes.

use http::Method;
use serde_json::Value;
use tally_events::{Provider, Route, TokenCounts, UsageSource};

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/providers/",
            $name
        ))
    };
}

fn ep(method: Method, path: &str) -> Endpoint {
    classify(&method, path).unwrap()
}

fn chat() -> Endpoint {
    ep(Method::POST, "/v1/chat/completions")
}

/// Feeds `body` to a parser in `chunk`-byte pieces and every event to a tracker; returns
/// the bytes forwarded to the client and the tracker.
fn run_stream(
    endpoint: &Endpoint,
    body: &[u8],
    strip: bool,
    chunk: usize,
) -> (Vec<u8>, StreamTracker) {
    let mut parser = SseParser::default();
    let mut tracker = StreamTracker::new(endpoint, strip);
    let mut forwarded = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        for ev in parser.push(piece).unwrap() {
            if tracker.on_event(&ev) == EventAction::Forward {
                forwarded.extend_from_slice(ev.raw());
            }
        }
    }
    for ev in parser.finish_event() {
        if tracker.on_event(&ev) == EventAction::Forward {
            forwarded.extend_from_slice(ev.raw());
        }
    }
    (forwarded, tracker)
}

fn tokens(
    input: u64,
    cached: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
    audio_in: u64,
    audio_out: u64,
) -> TokenCounts {
    TokenCounts {
        input_tokens: input,
        cached_input_tokens: cached,
        cache_write_tokens: cache_write,
        output_tokens: output,
        reasoning_tokens: reasoning,
        audio_input_tokens: audio_in,
        audio_output_tokens: audio_out,
    }
}

// ---- classify ----

#[test]
fn classify_known_paths() {
    let c = |m: Method, p: &str| {
        classify(&m, p).map(|e| (e.provider, e.route, e.model_in_path, e.streaming_by_path))
    };
    assert_eq!(
        c(Method::POST, "/v1/chat/completions"),
        Some((Provider::Openai, Route::Chat, None, false))
    );
    assert_eq!(
        c(Method::POST, "/v1/responses"),
        Some((Provider::Openai, Route::Responses, None, false))
    );
    assert_eq!(
        c(Method::POST, "/v1/completions"),
        Some((Provider::Openai, Route::Completions, None, false))
    );
    assert_eq!(
        c(Method::POST, "/v1/embeddings"),
        Some((Provider::Openai, Route::Embeddings, None, false))
    );
    assert_eq!(
        c(Method::GET, "/v1/models"),
        Some((Provider::Openai, Route::Models, None, false))
    );
    assert_eq!(
        c(Method::GET, "/v1/models/ft:gpt-4o-mini:acme::9xYz"),
        Some((
            Provider::Openai,
            Route::Models,
            Some("ft:gpt-4o-mini:acme::9xYz".into()),
            false
        ))
    );
    assert_eq!(
        c(Method::POST, "/v1/messages"),
        Some((Provider::Anthropic, Route::Messages, None, false))
    );
    assert_eq!(
        c(Method::POST, "/v1/messages/count_tokens"),
        Some((Provider::Anthropic, Route::CountTokens, None, false))
    );
    assert_eq!(
        c(
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ),
        Some((
            Provider::Gemini,
            Route::GenerateContent,
            Some("gemini-2.5-flash".into()),
            false
        ))
    );
    assert_eq!(
        c(
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        ),
        Some((
            Provider::Gemini,
            Route::GenerateContent,
            Some("gemini-2.5-pro".into()),
            true
        ))
    );
    assert_eq!(
        c(
            Method::POST,
            "/v1/models/gemini-2.0-flash-001:generateContent"
        ),
        Some((
            Provider::Gemini,
            Route::GenerateContent,
            Some("gemini-2.0-flash-001".into()),
            false
        ))
    );
    assert_eq!(
        c(Method::POST, "/v1beta/models/gemini-2.5-flash:countTokens"),
        Some((
            Provider::Gemini,
            Route::CountTokens,
            Some("gemini-2.5-flash".into()),
            false
        ))
    );
    assert_eq!(
        c(Method::GET, "/v1beta/models"),
        Some((Provider::Gemini, Route::Models, None, false))
    );
    assert_eq!(
        c(Method::POST, "/v1/chat/completions?foo=bar"),
        Some((Provider::Openai, Route::Chat, None, false))
    );
}

#[test]
fn classify_refuses_odd_paths() {
    for (m, p) in [
        (Method::GET, "/v1/chat/completions"),
        (Method::POST, "/v1/models"),
        (Method::POST, "/v1/chat/completions/"),
        (Method::POST, "//v1/chat/completions"),
        (Method::POST, "/v1//chat/completions"),
        (Method::POST, "/v1/chat/../chat/completions"),
        (Method::POST, "/v1/chat/./completions"),
        (Method::POST, "/v1/chat/%2e%2e/completions"),
        (Method::POST, "/v1/chat/%2Fcompletions"),
        (Method::POST, "/v1/chat%2Fcompletions"),
        (Method::POST, "/v1\\chat\\completions"),
        (Method::POST, "/v1/chat/completions#x"),
        (Method::POST, "/v1/chat/completions\n"),
        (Method::POST, "v1/chat/completions"),
        (Method::POST, ""),
        (Method::POST, "/"),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:deleteEverything",
        ),
        (Method::POST, "/v1beta/models/..:generateContent"),
        (Method::POST, "/v1beta/models/:generateContent"),
        (Method::POST, "/v1beta/models/a:b:generateContent"),
        (Method::POST, "/v1beta/models/gemini-2.5-flash"),
        (Method::POST, "/v2/chat/completions"),
        (Method::POST, "/v1/messages/batches"),
    ] {
        assert_eq!(classify(&m, p), None, "{m} {p:?}");
    }
}

// ---- inspect_request ----

#[test]
fn inspect_openai_chat_fixture() {
    let info = inspect_request(&chat(), fixture!("openai_chat_request.json")).unwrap();
    assert_eq!(info.model.as_deref(), Some("gpt-4o"));
    assert!(info.stream);
    assert!(!info.include_usage_requested);
    assert_eq!(info.max_output_tokens, Some(1000)); // 500 × n=2
    // 4 messages of framing + reply priming + one image, plus the text.
    let floor =
        4 * estimate::PER_MESSAGE_OVERHEAD + estimate::REPLY_OVERHEAD + estimate::MEDIA_PART_TOKENS;
    assert!(
        info.estimated_input_tokens > floor + 30,
        "{}",
        info.estimated_input_tokens
    );
    assert!(
        info.estimated_input_tokens < floor + 120,
        "{}",
        info.estimated_input_tokens
    );
}

#[test]
fn inspect_exact_small_requests() {
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#;
    let info = inspect_request(&chat(), body).unwrap();
    assert_eq!(info.estimated_input_tokens, 2 + 4 + 3);
    assert!(!info.stream);
    assert_eq!(info.max_output_tokens, None);

    let body = br#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"abcdefg"}]}"#;
    let info = inspect_request(&ep(Method::POST, "/v1/messages"), body).unwrap();
    assert_eq!(info.estimated_input_tokens, 2 + 4 + 3); // ceil(7 / 3.5) = 2
    assert_eq!(info.max_output_tokens, Some(64));

    let body = br#"{"contents":[{"parts":[{"text":"abcdefg"}]}]}"#;
    let gem = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    );
    let info = inspect_request(&gem, body).unwrap();
    assert_eq!(info.estimated_input_tokens, 2 + 4 + 3);
    assert_eq!(info.model.as_deref(), Some("gemini-2.5-flash"));
    assert!(info.stream);

    let body = br#"{"model":"text-embedding-3-small","input":["hello world",[1,2,3]]}"#;
    let info = inspect_request(&ep(Method::POST, "/v1/embeddings"), body).unwrap();
    assert_eq!(info.estimated_input_tokens, 2 + 3);

    let body = br#"{"model":"gpt-4.1","input":"hello world","stream":true,"max_output_tokens":99}"#;
    let info = inspect_request(&ep(Method::POST, "/v1/responses"), body).unwrap();
    assert_eq!(info.estimated_input_tokens, 2 + 4 + 3);
    assert!(info.stream);
    assert_eq!(info.max_output_tokens, Some(99));
}

#[test]
fn inspect_other_fixtures() {
    let info = inspect_request(
        &ep(Method::POST, "/v1/messages"),
        fixture!("anthropic_request.json"),
    )
    .unwrap();
    assert_eq!(info.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert!(info.stream);
    assert_eq!(info.max_output_tokens, Some(1024));
    assert!(
        info.estimated_input_tokens
            > estimate::MEDIA_PART_TOKENS + 3 * estimate::PER_MESSAGE_OVERHEAD
    );

    let gem = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:generateContent",
    );
    let info = inspect_request(&gem, fixture!("gemini_request.json")).unwrap();
    assert!(!info.stream);
    assert_eq!(info.max_output_tokens, Some(1600)); // 800 × candidateCount 2
    assert!(info.estimated_input_tokens > estimate::MEDIA_PART_TOKENS);

    let info = inspect_request(
        &ep(Method::POST, "/v1/responses"),
        fixture!("openai_responses_request.json"),
    )
    .unwrap();
    assert_eq!(info.model.as_deref(), Some("o3"));
    assert_eq!(info.max_output_tokens, Some(2048));
    assert!(info.estimated_input_tokens > 2 * estimate::PER_MESSAGE_OVERHEAD + 10);
}

#[test]
fn inspect_free_and_get_endpoints() {
    let ct = ep(Method::POST, "/v1/messages/count_tokens");
    let info = inspect_request(&ct, fixture!("anthropic_request.json")).unwrap();
    assert_eq!(info.estimated_input_tokens, 0);
    assert!(!info.stream);
    let models = ep(Method::GET, "/v1beta/models/gemini-2.5-pro");
    let info = inspect_request(&models, b"").unwrap();
    assert_eq!(info.model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!(info.estimated_input_tokens, 0);
}

#[test]
fn inspect_rejects_bad_bodies_with_stable_codes() {
    let code = |body: &[u8]| inspect_request(&chat(), body).unwrap_err().code();
    assert_eq!(code(b""), "request.invalid_json");
    assert_eq!(code(b"{\"model\":"), "request.invalid_json");
    assert_eq!(code(b"{\"model\":\"\xff\"}"), "request.invalid_json");
    assert_eq!(code(b"[1,2]"), "request.not_object");
    assert_eq!(code(br#"{"stream":"yes"}"#), "request.invalid_field");
    assert_eq!(code(br#"{"model":7}"#), "request.invalid_field");
    assert_eq!(code(br#"{"max_tokens":-1}"#), "request.invalid_field");
    let err = inspect_request(&chat(), b"nope").unwrap_err();
    assert_eq!(err.status(), 400);
}

// ---- prepare_upstream_body ----

#[test]
fn rewrite_only_openai_streams_without_usage() {
    let body = fixture!("openai_chat_request.json");
    let info = inspect_request(&chat(), body).unwrap();
    let out = prepare_upstream_body(&chat(), body, &info)
        .unwrap()
        .unwrap();
    let mut original: Value = serde_json::from_slice(body).unwrap();
    let rewritten: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        rewritten["stream_options"]["include_usage"],
        Value::Bool(true)
    );
    original["stream_options"] = serde_json::json!({"include_usage": true});
    assert_eq!(rewritten, original);
    // After the rewrite the request asks for usage: no second rewrite.
    let info2 = inspect_request(&chat(), &out).unwrap();
    assert!(info2.include_usage_requested);
    assert_eq!(prepare_upstream_body(&chat(), &out, &info2).unwrap(), None);

    let legacy = ep(Method::POST, "/v1/completions");
    let body = br#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","stream":true,"stream_options":{"include_usage":false}}"#;
    let info = inspect_request(&legacy, body).unwrap();
    let out = prepare_upstream_body(&legacy, body, &info)
        .unwrap()
        .unwrap();
    assert_eq!(
        out,
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","stream":true,"stream_options":{"include_usage":true}}"#
    );

    for (endpoint, body) in [
        (chat(), &br#"{"model":"gpt-4o","messages":[]}"#[..]),
        (
            chat(),
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            ep(Method::POST, "/v1/responses"),
            br#"{"model":"gpt-4o","stream":true}"#,
        ),
        (
            ep(Method::POST, "/v1/messages"),
            br#"{"model":"claude","stream":true}"#,
        ),
    ] {
        let info = inspect_request(&endpoint, body).unwrap();
        assert_eq!(
            prepare_upstream_body(&endpoint, body, &info).unwrap(),
            None,
            "{body:?}"
        );
    }
}

// ---- usage_from_body ----

#[test]
fn openai_bodies() {
    let r = usage_from_body(&chat(), fixture!("openai_chat.json")).unwrap();
    assert_eq!(r.tokens, tokens(2006, 1920, 0, 300, 256, 0, 0));
    assert!(r.complete);
    assert_eq!(r.model_served.as_deref(), Some("o4-mini-2025-04-16"));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("chatcmpl-BpZ3m4Yq8kFh2vXJtW1rG7aLcN9dE")
    );

    let r = usage_from_body(&chat(), fixture!("openai_chat_audio.json")).unwrap();
    assert_eq!(r.tokens, tokens(88, 0, 0, 164, 0, 62, 140));

    let r = usage_from_body(
        &ep(Method::POST, "/v1/responses"),
        fixture!("openai_responses.json"),
    )
    .unwrap();
    assert_eq!(r.tokens, tokens(2214, 1920, 0, 1180, 1024, 0, 0));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("resp_686b3c2a9f5c81a2b3e4d5c6f7a8b9c00d1e2f3a4b5c6d7e")
    );

    let r = usage_from_body(
        &ep(Method::POST, "/v1/embeddings"),
        fixture!("openai_embeddings.json"),
    )
    .unwrap();
    assert_eq!(r.tokens, tokens(8, 0, 0, 0, 0, 0, 0));
    assert!(r.complete);

    let r = usage_from_body(
        &ep(Method::POST, "/v1/completions"),
        fixture!("openai_completions.json"),
    )
    .unwrap();
    assert_eq!(r.tokens, tokens(5, 0, 0, 7, 0, 0, 0));
}

#[test]
fn anthropic_body_adds_cache_reads_and_writes_to_input() {
    let r = usage_from_body(
        &ep(Method::POST, "/v1/messages"),
        fixture!("anthropic_message.json"),
    )
    .unwrap();
    assert_eq!(r.tokens, tokens(50 + 3400 + 1200, 3400, 1200, 503, 0, 0, 0));
    assert!(r.complete);
    assert_eq!(
        r.model_served.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("msg_01XFDUDYJgAACzvnptvVoYEL")
    );
    // Cache writes given only by TTL are summed.
    let body = br#"{"usage":{"input_tokens":10,"cache_creation":{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":4},"output_tokens":1}}"#;
    let r = usage_from_body(&ep(Method::POST, "/v1/messages"), body).unwrap();
    assert_eq!(r.tokens, tokens(17, 0, 7, 1, 0, 0, 0));
}

#[test]
fn gemini_body_adds_thoughts_and_tool_prompt() {
    let gem = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:generateContent",
    );
    let r = usage_from_body(&gem, fixture!("gemini_generate.json")).unwrap();
    assert_eq!(
        r.tokens,
        tokens(12050 + 240, 8192, 0, 420 + 1200, 1200, 200, 0)
    );
    assert_eq!(r.tokens.total(), 13910); // equals the provider's totalTokenCount
    assert!(r.complete);
    assert_eq!(r.model_served.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("mAitaLmkHPPlz7IPvtfUqQ4")
    );

    // A JSON-array stream (no alt=sse): the latest snapshot, not the sum.
    let stream = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    );
    let r = usage_from_body(&stream, fixture!("gemini_stream_array.json")).unwrap();
    assert_eq!(r.tokens, tokens(9, 0, 0, 11 + 40, 40, 0, 0));
    assert!(r.complete);
}

#[test]
fn reported_zero_is_not_missing() {
    let zero = br#"{"id":"chatcmpl-0","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#;
    let r = usage_from_body(&chat(), zero).unwrap();
    assert_eq!(r.tokens, TokenCounts::default());
    assert!(r.complete);
    let missing = br#"{"id":"chatcmpl-1","choices":[]}"#;
    let r = usage_from_body(&chat(), missing).unwrap();
    assert!(!r.complete);
    assert!(!r.input_reported);
    let null = br#"{"id":"chatcmpl-2","usage":null}"#;
    assert!(!usage_from_body(&chat(), null).unwrap().complete);

    let messages = ep(Method::POST, "/v1/messages");
    let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert!(!usage_from_body(&messages, err).unwrap().complete);
    let zero = br#"{"usage":{"input_tokens":0,"output_tokens":0}}"#;
    assert!(usage_from_body(&messages, zero).unwrap().complete);

    // proto3 JSON drops zero counts: an empty usageMetadata is a reported zero.
    let gem = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:generateContent",
    );
    let r = usage_from_body(&gem, br#"{"usageMetadata":{}}"#).unwrap();
    assert!(r.complete);
    assert_eq!(r.tokens, TokenCounts::default());
    assert!(
        !usage_from_body(&gem, br#"{"candidates":[]}"#)
            .unwrap()
            .complete
    );
}

#[test]
fn unreadable_response_bodies() {
    assert_eq!(
        usage_from_body(&chat(), b"<html>").unwrap_err().code(),
        "response.invalid_json"
    );
    assert_eq!(
        usage_from_body(&chat(), b"[]").unwrap_err().code(),
        "response.not_object"
    );
    let gem = ep(Method::POST, "/v1beta/models/g:generateContent");
    assert_eq!(
        usage_from_body(&gem, b"3").unwrap_err().code(),
        "response.not_object"
    );
    // Free endpoints consume nothing.
    let ct = ep(Method::POST, "/v1/messages/count_tokens");
    let r = usage_from_body(&ct, br#"{"input_tokens":2095}"#).unwrap();
    assert!(r.complete);
    assert_eq!(r.tokens, TokenCounts::default());
}

// ---- streams ----

#[test]
fn openai_chat_stream_forwarded_whole_without_strip() {
    let body = fixture!("openai_chat_stream.sse");
    for chunk in [1, 7, 64, body.len()] {
        let (fwd, t) = run_stream(&chat(), body, false, chunk);
        assert_eq!(fwd, body, "chunk {chunk}");
        let r = t.report();
        assert!(r.complete);
        assert_eq!(r.tokens, tokens(1250, 1152, 0, 9, 0, 0, 0));
        assert_eq!(r.model_served.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(r.upstream_request_id.as_deref(), Some("chatcmpl-BpZ9sWq3"));
        assert_eq!(t.streamed_text(), "Hello world, nice to meet you.");
        assert_eq!(t.settle(), (r.tokens, UsageSource::ProviderReported));
    }
}

#[test]
fn openai_usage_chunk_dropped_only_when_strip_is_on() {
    let body = fixture!("openai_chat_stream.sse");
    let text = std::str::from_utf8(body).unwrap();
    let usage_chunk = text
        .split("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .unwrap();
    let expected = text.replace(&format!("{usage_chunk}\n\n"), "");
    assert!(expected.ends_with("data: [DONE]\n\n"));
    let (fwd, t) = run_stream(&chat(), body, true, 5);
    assert_eq!(std::str::from_utf8(&fwd).unwrap(), expected);
    assert!(t.report().complete);
    assert_eq!(t.report().tokens.input_tokens, 1250);

    // Usage on a chunk that also carries choices is never dropped.
    let mixed = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    let (fwd, t) = run_stream(&chat(), mixed, true, 100);
    assert_eq!(fwd, mixed);
    assert!(t.report().complete);
    assert_eq!(t.report().tokens, tokens(3, 0, 0, 2, 0, 0, 0));
}

#[test]
fn openai_stream_cut_before_usage_is_estimated() {
    let body = fixture!("openai_chat_stream.sse");
    let text = std::str::from_utf8(body).unwrap();
    let cut = text.find("\"choices\":[]").unwrap();
    let cut = text[..cut].rfind("data:").unwrap();
    let req = inspect_request(
        &chat(),
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello world"}]}"#,
    )
    .unwrap();
    let mut parser = SseParser::default();
    let mut t = StreamTracker::new(&chat(), true).with_request(&req);
    for ev in parser.push(&body[..cut]).unwrap() {
        assert_eq!(t.on_event(&ev), EventAction::Forward);
    }
    let r = t.report();
    assert!(!r.complete);
    assert!(!r.input_reported);
    assert_eq!(r.tokens, TokenCounts::default());
    // "Hello world, nice to meet you." is 8 tokens in o200k_base.
    assert_eq!(t.estimated_output_tokens(), 8);
    let (settled, source) = t.settle();
    assert_eq!(source, UsageSource::Estimated);
    assert_eq!(settled.output_tokens, 8);
    assert_eq!(settled.input_tokens, req.estimated_input_tokens);
}

#[test]
fn responses_stream() {
    let endpoint = ep(Method::POST, "/v1/responses");
    let body = fixture!("openai_responses_stream.sse");
    let (fwd, t) = run_stream(&endpoint, body, false, 13);
    assert_eq!(fwd, body);
    let r = t.report();
    assert!(r.complete);
    assert_eq!(r.tokens, tokens(37, 0, 0, 11, 0, 0, 0));
    assert_eq!(r.model_served.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(r.upstream_request_id.as_deref(), Some("resp_686b3d10"));
    assert_eq!(t.streamed_text(), "Hi there, how can I help?");
}

#[test]
fn responses_incomplete_and_failed() {
    let endpoint = ep(Method::POST, "/v1/responses");
    let incomplete = b"event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"resp_1\",\"status\":\"incomplete\",\"usage\":{\"input_tokens\":5,\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":16}}}}\n\n";
    let (_, t) = run_stream(&endpoint, incomplete, false, 9);
    assert!(t.report().complete);
    assert_eq!(t.report().tokens, tokens(5, 0, 0, 16, 16, 0, 0));
    let failed = b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"resp_2\",\"status\":\"failed\",\"usage\":null}}\n\n";
    let (_, t) = run_stream(&endpoint, failed, false, 9);
    assert!(!t.report().complete);
    assert_eq!(t.report().upstream_request_id.as_deref(), Some("resp_2"));
}

#[test]
fn anthropic_stream_takes_latest_cumulative_delta() {
    let endpoint = ep(Method::POST, "/v1/messages");
    let body = fixture!("anthropic_stream.sse");
    for chunk in [1, 3, 50, body.len()] {
        let (fwd, t) = run_stream(&endpoint, body, false, chunk);
        assert_eq!(fwd, body);
        let r = t.report();
        assert!(r.complete);
        // Deltas report output 40 then 95: the latest (95), never 40 + 95 or 2 + 95.
        assert_eq!(r.tokens, tokens(472 + 2048, 2048, 0, 95, 0, 0, 0));
        assert_eq!(
            r.upstream_request_id.as_deref(),
            Some("msg_01Aq9w938a90dw8q")
        );
        assert_eq!(
            t.streamed_text(),
            "The user greets me; answer briefly.Hello! How can I help you today?"
        );
    }
}

#[test]
fn anthropic_stream_cut_keeps_reported_input() {
    let endpoint = ep(Method::POST, "/v1/messages");
    let body = fixture!("anthropic_stream.sse");
    let text = std::str::from_utf8(body).unwrap();
    // Cut right after the first message_delta.
    let first_delta = text.find("event: message_delta").unwrap();
    let cut = first_delta + text[first_delta..].find("\n\n").unwrap() + 2;
    let (_, t) = run_stream(&endpoint, &body[..cut], false, 11);
    let r = t.report();
    assert!(!r.complete);
    assert!(r.input_reported);
    assert_eq!(r.tokens, tokens(2520, 2048, 0, 40, 0, 0, 0));
    let (settled, source) = t.settle();
    assert_eq!(source, UsageSource::Mixed);
    assert_eq!(settled.input_tokens, 2520);
    assert_eq!(settled.output_tokens, 40.max(t.estimated_output_tokens()));

    // Only message_start seen.
    let start = text.find("event: content_block_start").unwrap();
    let (_, t) = run_stream(&endpoint, &body[..start], false, 64);
    assert!(!t.report().complete);
    assert!(t.report().input_reported);
    assert_eq!(t.report().tokens.input_tokens, 2520);
}

#[test]
fn anthropic_error_event_is_not_usage() {
    let endpoint = ep(Method::POST, "/v1/messages");
    let body = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (fwd, t) = run_stream(&endpoint, body, false, 4);
    assert_eq!(fwd, body);
    assert!(!t.report().complete);
}

#[test]
fn gemini_stream_takes_latest_snapshot() {
    let endpoint = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    );
    let body = fixture!("gemini_stream.sse");
    for chunk in [1, 2, 17, body.len()] {
        let (fwd, t) = run_stream(&endpoint, body, false, chunk);
        assert_eq!(fwd, body);
        let r = t.report();
        assert!(r.complete);
        assert_eq!(r.tokens, tokens(9, 0, 0, 11 + 40, 40, 0, 0));
        assert_eq!(r.model_served.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            r.upstream_request_id.as_deref(),
            Some("Q2utaNnFLJ2Kz7IP1o2pkQU")
        );
        assert_eq!(
            t.streamed_text(),
            "The quick brown fox jumps over the lazy dog."
        );
    }
    // Cut before the chunk with finishReason: snapshot so far, not final.
    let text = std::str::from_utf8(body).unwrap();
    let cut = text.find("jumps").unwrap();
    let cut = text[..cut].rfind("data:").unwrap();
    let (_, t) = run_stream(&endpoint, &body[..cut], false, 64);
    let r = t.report();
    assert!(!r.complete);
    assert!(r.input_reported);
    assert_eq!(r.tokens, tokens(9, 0, 0, 4 + 40, 40, 0, 0));
}

#[test]
fn gemini_blocked_prompt_is_final() {
    let endpoint = ep(
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    );
    let body = b"data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":12,\"totalTokenCount\":12}}\r\n\r\n";
    let (_, t) = run_stream(&endpoint, body, false, 10);
    assert!(t.report().complete);
    assert_eq!(t.report().tokens, tokens(12, 0, 0, 0, 0, 0, 0));
}

#[test]
fn non_json_events_are_forwarded_and_ignored() {
    for endpoint in [
        chat(),
        ep(Method::POST, "/v1/responses"),
        ep(Method::POST, "/v1/messages"),
        ep(Method::POST, "/v1beta/models/g:streamGenerateContent"),
    ] {
        let body = b": comment\n\ndata: not json\n\nevent: x\n\ndata: [1,2]\n\ndata: {\"usage\":7,\"type\":3}\n\n";
        let (fwd, t) = run_stream(&endpoint, body, true, 3);
        assert_eq!(fwd, body);
        assert!(!t.report().complete);
    }
}

// ---- errors ----

#[test]
fn error_bodies_in_provider_formats() {
    let v: Value = serde_json::from_slice(&error_body(
        Provider::Openai,
        429,
        "budget_exceeded",
        "Budget spent",
    ))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"error":{"message":"Budget spent","type":"insufficient_quota","param":null,"code":"budget_exceeded"}})
    );
    let v: Value = serde_json::from_slice(&error_body(
        Provider::Anthropic,
        401,
        "auth.unknown_key",
        "Bad key",
    ))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":"error","error":{"type":"authentication_error","message":"Bad key"}})
    );
    let v: Value =
        serde_json::from_slice(&error_body(Provider::Gemini, 403, "access.denied", "No")).unwrap();
    assert_eq!(v["error"]["code"], 403);
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(v["error"]["message"], "No");
    assert_eq!(v["error"]["details"][0]["reason"], "access.denied");
    let v: Value = serde_json::from_slice(&error_body(
        Provider::Gemini,
        400,
        "request.invalid_json",
        "x",
    ))
    .unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
}

#[test]
fn sse_error_events_parse_as_provider_errors() {
    let parse = |bytes: Vec<u8>| {
        let mut p = SseParser::default();
        let mut evs = p.push(&bytes).unwrap();
        assert_eq!(evs.len(), 1, "{:?}", String::from_utf8_lossy(&bytes));
        assert!(p.finish().is_empty());
        evs.remove(0)
    };
    let msg = "Budget cap reached\nmid-stream";
    let ev = parse(sse_error_event(
        Provider::Anthropic,
        "usage_cap.exceeded",
        msg,
    ));
    assert_eq!(ev.event.as_deref(), Some("error"));
    let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["message"], msg);

    let ev = parse(sse_error_event(Provider::Openai, "usage_cap.exceeded", msg));
    assert_eq!(ev.event, None);
    let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["error"]["message"], msg);
    assert_eq!(v["error"]["code"], "usage_cap.exceeded");

    let ev = parse(sse_error_event(Provider::Gemini, "usage_cap.exceeded", msg));
    let data = ev.data.unwrap();
    assert!(data.starts_with("{\"error\":"), "{data}");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");

    // A tracker reading tally's own error event does not mistake it for usage.
    let (_, t) = run_stream(
        &chat(),
        &sse_error_event(Provider::Openai, "x", "y"),
        false,
        3,
    );
    assert!(!t.report().complete);
}

#[test]
fn status_guess_from_code() {
    assert_eq!(status_for_code("request.invalid_json"), 400);
    assert_eq!(status_for_code("rate_limit.exceeded"), 429);
    assert_eq!(status_for_code("budget_exceeded"), 429);
    assert_eq!(status_for_code("auth.unknown_key"), 401);
    assert_eq!(status_for_code("access.denied"), 403);
    assert_eq!(status_for_code("upstream.timeout"), 504);
    assert_eq!(status_for_code("whatever"), 500);
}

#[test]
fn running_output_count_tracks_the_full_count_chunk_by_chunk() {
    // A long answer streamed a few characters at a time, cut mid-word: the running count
    // (checked after every event) ends where a full recount of the text ends.
    let words = [
        "tally",
        "counts",
        "every",
        "token,",
        "reservation",
        "and",
        "dollar;",
        "the",
        "ledger",
        "keeps",
        "them",
        "exactly",
        "once.",
        "Unbelievably",
        "long-winded",
        "answers",
        "stream",
        "slowly:",
        "😀",
        "naïve",
        "café",
        "123456789",
    ];
    let mut text = String::new();
    for i in 0..600 {
        text.push_str(words[i * 7 % words.len()]);
        text.push(if i % 13 == 0 { '\n' } else { ' ' });
    }
    let mut sse = String::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(5) {
        let content: String = piece.iter().collect();
        let chunk = serde_json::json!({"model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": content}}]});
        sse.push_str(&format!("data: {chunk}\n\n"));
    }
    let mut parser = SseParser::default();
    let mut t = StreamTracker::new(&chat(), false);
    let mut last = 0;
    for ev in parser.push(sse.as_bytes()).unwrap() {
        t.on_event(&ev);
        last = t.running_output_tokens();
    }
    // The text was folded as it came: the tracker holds only its tail.
    assert!(t.streamed_text().len() < text.len());
    assert!(text.ends_with(t.streamed_text()));
    let full = estimate::count_text(estimate::Tokenizer::O200kBase, &text);
    assert!(full > 500, "{full}");
    for (what, counted) in [("running", last), ("final", t.estimated_output_tokens())] {
        assert!(
            counted.abs_diff(full) <= full / 100,
            "{what} {counted} vs a count of the whole text {full}"
        );
    }
}

#[test]
fn long_streams_hold_a_bounded_tail_and_count_within_one_percent() {
    // 200 KB of prose and 200 KB of text without spaces (CJK), streamed in small
    // chunks with no checks in between: the tracker folds as it goes, holds a few KiB at
    // most, and its estimate matches a count of the whole text.
    let prose: String = (0..40_000)
        .map(|i| {
            [
                "tally ",
                "counts ",
                "every ",
                "token, ",
                "exactly\n",
                "once. ",
            ][i % 6]
        })
        .collect();
    let cjk: String = "統計はすべてのトークンを一度だけ数える。".repeat(4_000);
    for text in [prose, cjk] {
        let mut parser = SseParser::default();
        let mut t = StreamTracker::new(&chat(), false);
        let mut held_max = 0;
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(40) {
            let content: String = piece.iter().collect();
            let chunk = serde_json::json!({"model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": content}}]});
            for ev in parser
                .push(format!("data: {chunk}\n\n").as_bytes())
                .unwrap()
            {
                t.on_event(&ev);
            }
            held_max = held_max.max(t.streamed_text().len());
        }
        assert!(
            held_max <= super::FORCE_FOLD_TEXT_BYTES + 200,
            "held {held_max} bytes of {}",
            text.len()
        );
        let full = estimate::count_text(estimate::Tokenizer::O200kBase, &text);
        let counted = t.estimated_output_tokens();
        assert!(full > 10_000, "{full}");
        assert!(
            counted.abs_diff(full) <= full / 100,
            "estimated {counted} vs a count of the whole text {full}"
        );
    }
}
