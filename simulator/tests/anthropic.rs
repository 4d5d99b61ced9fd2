//! Anthropic Messages wire format over real HTTP: usage semantics, streaming events and
//! cumulative `message_delta` usage, thinking, `cache_control`, count_tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use tally_simulator::{Provider, count_tokens};

const MODEL: &str = "claude-sonnet-4-5";

#[tokio::test]
async fn messages_non_stream_usage() {
    let sim = start().await;
    let c = client();
    let system = "You are Claude, be concise.";
    let user = "How many tokens is this?";
    let resp = anthropic(
        &c,
        &sim,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 300, "system": system,
                "messages": [{"role": "user", "content": user}]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let id = header(&resp, "request-id");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["content"][0]["type"], "text");
    let text = body["content"][0]["text"].as_str().unwrap();
    let u = &body["usage"];
    let input = count_tokens(MODEL, system) + count_tokens(MODEL, user);
    assert_eq!(u["input_tokens"], input);
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["output_tokens"], count_tokens(MODEL, text));

    let rec = record(&sim, &id).await;
    assert_eq!(rec.provider, Provider::Anthropic);
    assert_eq!(rec.route, "/v1/messages");
    assert_eq!(rec.input_tokens, input);
    assert_eq!(rec.output_tokens, count_tokens(MODEL, text));
}

#[tokio::test]
async fn messages_stream_events_and_cumulative_usage() {
    let sim = start().await;
    let c = client();
    let user = "Tell me a story.";
    let resp = anthropic(
        &c,
        &sim,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 1000, "stream": true,
                "messages": [{"role": "user", "content": user}]}),
    )
    .send()
    .await
    .unwrap();
    let id = header(&resp, "request-id");
    let events = parse_sse(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    let n = names.len();
    assert_eq!(
        &names[..3],
        ["message_start", "content_block_start", "ping"]
    );
    assert!(names[3..n - 3].iter().all(|e| *e == "content_block_delta"));
    assert!(n - 6 >= 2, "several deltas");
    assert_eq!(
        &names[n - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for e in &events {
        assert_eq!(e.json()["type"], e.event.as_deref().unwrap());
    }
    let start = events[0].json();
    let su = &start["message"]["usage"];
    let input = count_tokens(MODEL, user);
    assert_eq!(su["input_tokens"], input);
    assert_eq!(su["cache_read_input_tokens"], 0);
    assert!(su["output_tokens"].as_u64().unwrap() <= 1);
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["stop_reason"], Value::Null);
    let text: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            let d = e.json();
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    let delta = events[n - 2].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let du = &delta["usage"];
    assert_eq!(du["output_tokens"], count_tokens(MODEL, &text));
    assert_eq!(du["input_tokens"], input);
    assert_eq!(du["cache_creation_input_tokens"], 0);
    assert_eq!(du["cache_read_input_tokens"], 0);
    let rec = record(&sim, &id).await;
    assert!(rec.streamed && rec.completed);
    assert_eq!(rec.output_tokens, count_tokens(MODEL, &text));
}

#[tokio::test]
async fn thinking_block_counts_in_output_tokens() {
    let sim = start().await;
    let c = client();
    let resp = anthropic(
        &c,
        &sim,
        "/v1/messages",
        &json!({"model": "claude-opus-4-1", "max_tokens": 4000, "stream": true,
                "thinking": {"type": "enabled", "budget_tokens": 2000},
                "messages": [{"role": "user", "content": "think first"}]}),
    )
    .send()
    .await
    .unwrap();
    let id = header(&resp, "request-id");
    let events = parse_sse(&resp.text().await.unwrap());
    let mut thinking = String::new();
    let mut text = String::new();
    let mut signature = false;
    for e in &events {
        let d = e.json();
        match d["delta"]["type"].as_str() {
            Some("thinking_delta") => thinking.push_str(d["delta"]["thinking"].as_str().unwrap()),
            Some("text_delta") => {
                assert_eq!(d["index"], 1);
                text.push_str(d["delta"]["text"].as_str().unwrap())
            }
            Some("signature_delta") => signature = true,
            _ => {}
        }
    }
    assert!(signature);
    assert!(!thinking.is_empty());
    let starts: Vec<Value> = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_start"))
        .map(|e| e.json()["content_block"]["type"].clone())
        .collect();
    assert_eq!(starts, [json!("thinking"), json!("text")]);
    let delta = events
        .iter()
        .find(|e| e.event.as_deref() == Some("message_delta"))
        .unwrap()
        .json();
    let m = "claude-opus-4-1";
    let reasoning = count_tokens(m, &thinking);
    assert_eq!(
        delta["usage"]["output_tokens"],
        reasoning + count_tokens(m, &text)
    );
    let rec = record(&sim, &id).await;
    assert_eq!(rec.reasoning_tokens, reasoning);
    assert_eq!(rec.model_served, "claude-opus-4-1-20250805");
}

#[tokio::test]
async fn cache_control_writes_then_reads() {
    let sim = start().await;
    let c = client();
    let big = "Policy clause: every request is accounted exactly. ".repeat(150);
    let req = |question: &str, cache: bool| {
        let mut block = json!({"type": "text", "text": big});
        if cache {
            block["cache_control"] = json!({"type": "ephemeral"});
        }
        json!({"model": "claude-haiku-4-5", "max_tokens": 50, "system": [block],
               "messages": [{"role": "user", "content": question}]})
    };
    let usage = |b: &Value| {
        let u = &b["usage"];
        (
            u["input_tokens"].as_u64().unwrap(),
            u["cache_creation_input_tokens"].as_u64().unwrap(),
            u["cache_read_input_tokens"].as_u64().unwrap(),
        )
    };
    let big_tokens = count_tokens("claude-haiku-4-5", &big);
    assert!(big_tokens >= 1024);
    // Without cache_control nothing is cached, however often it repeats.
    for _ in 0..2 {
        let b: Value = anthropic(&c, &sim, "/v1/messages", &req("q1", false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            usage(&b),
            (big_tokens + count_tokens("claude-haiku-4-5", "q1"), 0, 0)
        );
    }
    let q = count_tokens("claude-haiku-4-5", "second question");
    let first: Value = anthropic(&c, &sim, "/v1/messages", &req("second question", true))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage(&first), (q, big_tokens, 0));
    let resp = anthropic(&c, &sim, "/v1/messages", &req("second question", true))
        .send()
        .await
        .unwrap();
    let id = header(&resp, "request-id");
    let second: Value = resp.json().await.unwrap();
    assert_eq!(usage(&second), (q, 0, big_tokens));
    let rec = record(&sim, &id).await;
    assert_eq!(rec.input_tokens, q + big_tokens);
    assert_eq!(rec.cached_input_tokens, big_tokens);
    assert_eq!(rec.cache_write_tokens, 0);
}

#[tokio::test]
async fn count_tokens_and_validation() {
    let sim = start().await;
    let c = client();
    let body: Value = anthropic(
        &c,
        &sim,
        "/v1/messages/count_tokens",
        &json!({"model": MODEL, "system": "sys prompt", "messages": [{"role": "user", "content": "hello world"}]}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        body,
        json!({"input_tokens": count_tokens(MODEL, "sys prompt") + count_tokens(MODEL, "hello world")})
    );

    let resp = anthropic(
        &c,
        &sim,
        "/v1/messages",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "no max_tokens"}]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let models: Value = c
        .get(format!("{}/v1/models", sim.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["has_more"], false);
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "claude-sonnet-4-5-20250929")
    );
}
