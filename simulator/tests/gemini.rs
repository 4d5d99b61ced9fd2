//! Gemini wire format over real HTTP: usageMetadata (thoughts separate from
//! candidates), streaming with per-chunk running usage, CRLF SSE framing, JSON-array
//! streaming, cachedContent, countTokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use tally_simulator::{Provider, count_tokens};

fn contents(text: &str) -> Value {
    json!([{"role": "user", "parts": [{"text": text}]}])
}

#[tokio::test]
async fn generate_content_usage_metadata() {
    let sim = start().await;
    let c = client();
    let sys = "Be helpful.";
    let user = "Explain tokens briefly.";
    let body: Value = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &json!({"contents": contents(user), "systemInstruction": {"parts": [{"text": sys}]}}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let m = "gemini-2.5-flash";
    let cand = &body["candidates"][0];
    assert_eq!(cand["finishReason"], "STOP");
    assert_eq!(cand["content"]["role"], "model");
    let text = cand["content"]["parts"][0]["text"].as_str().unwrap();
    let u = &body["usageMetadata"];
    let prompt = count_tokens(m, sys) + count_tokens(m, user);
    let candidates = count_tokens(m, text);
    let thoughts = u["thoughtsTokenCount"].as_u64().unwrap();
    assert!(thoughts > 0, "2.5 models think by default");
    assert_eq!(u["promptTokenCount"], prompt);
    assert_eq!(u["candidatesTokenCount"], candidates);
    assert_eq!(u["totalTokenCount"], prompt + candidates + thoughts);
    assert!(u.get("cachedContentTokenCount").is_none());
    assert_eq!(body["modelVersion"], "gemini-2.5-flash");
    let response_id = body["responseId"].as_str().unwrap();

    let rec = record(&sim, response_id).await;
    assert_eq!(rec.provider, Provider::Gemini);
    assert_eq!(rec.route, "/v1beta/models/{model}:generateContent");
    assert_eq!(rec.model_requested, "gemini-2.5-flash");
    assert_eq!(rec.output_tokens, candidates + thoughts);
    assert_eq!(rec.reasoning_tokens, thoughts);

    // thinkingBudget 0 turns thinking off on Flash.
    let body: Value = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &json!({"contents": contents(user), "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}, "maxOutputTokens": 9}}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(body["usageMetadata"].get("thoughtsTokenCount").is_none());
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 9);
    assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
}

#[tokio::test]
async fn stream_sse_every_chunk_has_running_usage() {
    let sim = start().await;
    let c = client();
    let m = "gemini-2.0-flash";
    let resp = c
        .post(format!(
            "{}/v1beta/models/{m}:streamGenerateContent?alt=sse&key=query-key",
            sim.base_url()
        ))
        .json(&json!({"contents": contents("stream please")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let raw = resp.text().await.unwrap();
    assert!(raw.contains("\r\n\r\n"), "Gemini frames SSE with CRLF");
    let events = parse_sse(&raw);
    assert!(events.len() >= 2);
    let prompt = count_tokens(m, "stream please");
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        let d = e.json();
        text.push_str(
            d["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        );
        let u = &d["usageMetadata"];
        assert_eq!(u["promptTokenCount"], prompt);
        assert_eq!(
            u["candidatesTokenCount"],
            count_tokens(m, &text),
            "running total"
        );
        assert_eq!(u["totalTokenCount"], prompt + count_tokens(m, &text));
        assert_eq!(d["modelVersion"], "gemini-2.0-flash-001");
        let last = i + 1 == events.len();
        assert_eq!(d["candidates"][0].get("finishReason").is_some(), last);
    }
    let last = events.last().unwrap().json();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let rec = record(&sim, last["responseId"].as_str().unwrap()).await;
    assert!(rec.streamed && rec.completed);
    assert_eq!(rec.route, "/v1beta/models/{model}:streamGenerateContent");
    assert_eq!(rec.output_tokens, count_tokens(m, &text));
}

#[tokio::test]
async fn stream_without_alt_is_a_json_array() {
    let sim = start().await;
    let c = client();
    let resp = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        &json!({"contents": contents("array please")}),
    )
    .send()
    .await
    .unwrap();
    let arr: Vec<Value> = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(arr.len() >= 2);
    let last = arr.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let u = &last["usageMetadata"];
    let thoughts = u["thoughtsTokenCount"].as_u64().unwrap();
    assert_eq!(
        u["totalTokenCount"].as_u64().unwrap(),
        u["promptTokenCount"].as_u64().unwrap()
            + u["candidatesTokenCount"].as_u64().unwrap()
            + thoughts
    );
    // Thoughts are reported from the first chunk on (thinking precedes the answer).
    assert_eq!(arr[0]["usageMetadata"]["thoughtsTokenCount"], thoughts);
}

#[tokio::test]
async fn cached_content_and_count_tokens() {
    let sim = start().await;
    let c = client();
    let m = "gemini-2.5-flash";
    let body: Value = gemini(
        &c,
        &sim,
        &format!("/v1beta/models/{m}:generateContent"),
        &json!({"contents": contents("with cache"), "cachedContent": "cachedContents/abc123"}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let u = &body["usageMetadata"];
    let cached = u["cachedContentTokenCount"].as_u64().unwrap();
    assert!(cached >= 1024);
    assert_eq!(
        u["promptTokenCount"].as_u64().unwrap(),
        cached + count_tokens(m, "with cache")
    );

    let body: Value = gemini(
        &c,
        &sim,
        &format!("/v1beta/models/{m}:countTokens"),
        &json!({"contents": contents("count these tokens")}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["totalTokens"], count_tokens(m, "count these tokens"));
}
