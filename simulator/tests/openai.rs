//! OpenAI wire format over real HTTP: chat completions, Responses, legacy completions,
//! embeddings, models, prompt caching; checks usage against recomputed token counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use tally_simulator::{Provider, count_tokens};

#[tokio::test]
async fn chat_non_stream_usage_matches_recount() {
    let sim = start().await;
    let c = client();
    let system = "You are a terse assistant.";
    let user = "Count the tokens of this sentence, please.";
    let resp = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": user}]}
        ]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = header(&resp, "x-request-id");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let u = &body["usage"];
    let prompt = count_tokens("gpt-4o-mini", system) + count_tokens("gpt-4o-mini", user);
    let completion = count_tokens("gpt-4o-mini", text);
    assert_eq!(u["prompt_tokens"], prompt);
    assert_eq!(u["completion_tokens"], completion);
    assert_eq!(u["total_tokens"], prompt + completion);
    assert!((20..=200).contains(&completion), "{completion}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["prompt_tokens_details"]["audio_tokens"], 0);
    for k in [
        "reasoning_tokens",
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    ] {
        assert_eq!(u["completion_tokens_details"][k], 0, "{k}");
    }

    let rec = record(&sim, &request_id).await;
    assert_eq!(rec.provider, Provider::Openai);
    assert_eq!(rec.route, "/v1/chat/completions");
    assert_eq!(rec.model_requested, "gpt-4o-mini");
    assert_eq!(rec.model_served, "gpt-4o-mini-2024-07-18");
    assert_eq!(rec.status, 200);
    assert!(!rec.streamed && rec.completed);
    assert_eq!(rec.input_tokens, prompt);
    assert_eq!(rec.output_tokens, completion);
    assert_eq!(rec.output_tokens_sent, completion);
    assert!(
        rec.key_fingerprint
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );

    // Deterministic: the same body gives the same text.
    let again: Value = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": user}]}
        ]}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(again["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn chat_stream_usage_chunk_only_when_asked() {
    let sim = start().await;
    let c = client();
    let msgs = json!([{"role": "user", "content": "Stream me something."}]);

    // Without include_usage: no chunk carries a usage key at all.
    let resp = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "gpt-4.1", "messages": msgs, "stream": true}),
    )
    .send()
    .await
    .unwrap();
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let id = header(&resp, "x-request-id");
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Sse::json).collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let rec = record(&sim, &id).await;
    assert!(rec.streamed && rec.completed);
    assert_eq!(rec.output_tokens, count_tokens("gpt-4.1", &text));
    assert_eq!(rec.output_tokens_sent, rec.output_tokens);

    // With include_usage on a reasoning model: usage null everywhere but a final
    // choices-less chunk; completion_tokens = visible text + reasoning.
    let resp = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "o4-mini", "messages": msgs, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .send()
    .await
    .unwrap();
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Sse::json).collect();
    let (last, rest) = chunks.split_last().unwrap();
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["model"], "o4-mini-2025-04-16");
    let text: String = rest
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let u = &last["usage"];
    let reasoning = u["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!(reasoning > 0);
    assert_eq!(
        u["completion_tokens"].as_u64().unwrap(),
        count_tokens("o4-mini", &text) + reasoning
    );
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap(),
        count_tokens("o4-mini", "Stream me something.")
    );
}

#[tokio::test]
async fn chat_respects_max_tokens_and_forced_length() {
    let sim = start().await;
    let c = client();
    let body: Value = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "max_completion_tokens": 7,
                "messages": [{"role": "user", "content": "long answer please"}]}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(count_tokens("gpt-4o", text), 7);

    let body: Value = openai(
        &c,
        &sim,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
    )
    .header("x-sim-output-tokens", "250")
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 250);
}

#[tokio::test]
async fn responses_non_stream_and_stream() {
    let sim = start().await;
    let c = client();
    let instructions = "Answer like a pirate.";
    let input = "What is a token?";
    let body: Value = openai(
        &c,
        &sim,
        "/v1/responses",
        &json!({"model": "gpt-5", "instructions": instructions, "input": input}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-5-2025-08-07");
    let output = body["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning");
    let msg = output.iter().find(|o| o["type"] == "message").unwrap();
    let text = msg["content"][0]["text"].as_str().unwrap();
    let u = &body["usage"];
    let input_tokens = count_tokens("gpt-5", instructions) + count_tokens("gpt-5", input);
    let reasoning = u["output_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!(reasoning > 0);
    assert_eq!(u["input_tokens"], input_tokens);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        u["output_tokens"].as_u64().unwrap(),
        count_tokens("gpt-5", text) + reasoning
    );
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        input_tokens + u["output_tokens"].as_u64().unwrap()
    );

    let resp = openai(
        &c,
        &sim,
        "/v1/responses",
        &json!({"model": "gpt-4.1-mini", "input": [{"role": "user", "content": [{"type": "input_text", "text": input}]}], "stream": true}),
    )
    .send()
    .await
    .unwrap();
    let events = parse_sse(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(deltas >= 2);
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        let d = e.json();
        assert_eq!(d["type"], e.event.as_deref().unwrap());
        assert_eq!(d["sequence_number"], i);
        if let Some(delta) = d["delta"].as_str() {
            text.push_str(delta);
        }
    }
    let done = events.last().unwrap().json();
    let u = &done["response"]["usage"];
    assert_eq!(u["input_tokens"], count_tokens("gpt-4.1-mini", input));
    assert_eq!(u["output_tokens"], count_tokens("gpt-4.1-mini", &text));
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(events[0].json()["response"]["usage"], Value::Null);

    // Cut by max_output_tokens: incomplete.
    let resp = openai(
        &c,
        &sim,
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "hi", "stream": true, "max_output_tokens": 16}),
    )
    .send()
    .await
    .unwrap();
    let events = parse_sse(&resp.text().await.unwrap());
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("response.incomplete"));
    let r = &last.json()["response"];
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["usage"]["output_tokens"], 16);
}

#[tokio::test]
async fn legacy_completions_and_embeddings() {
    let sim = start().await;
    let c = client();
    let body: Value = openai(
        &c,
        &sim,
        "/v1/completions",
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["completion_tokens"], 16);
    assert_eq!(
        body["usage"]["prompt_tokens"],
        count_tokens("gpt-3.5-turbo-instruct", "Say this is a test")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let resp = openai(
        &c,
        &sim,
        "/v1/completions",
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"], "max_tokens": 30,
                "stream": true, "stream_options": {"include_usage": true}}),
    )
    .send()
    .await
    .unwrap();
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Sse::json).collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        count_tokens("gpt-3.5-turbo-instruct", &text)
    );
    assert_eq!(usage["prompt_tokens"], 2);

    for format in ["float", "base64"] {
        let body: Value = openai(
            &c,
            &sim,
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"], "encoding_format": format}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        let n = count_tokens("text-embedding-3-small", "hello world")
            + count_tokens("text-embedding-3-small", "bye");
        assert_eq!(body["usage"]["prompt_tokens"], n);
        assert_eq!(body["usage"]["total_tokens"], n);
        match format {
            "float" => assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 1536),
            _ => assert_eq!(
                body["data"][0]["embedding"].as_str().unwrap().len(),
                1536 * 4 * 4 / 3
            ),
        }
    }

    let models: Value = c
        .get(format!("{}/v1/models", sim.base_url()))
        .bearer_auth("sk")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );
}

#[tokio::test]
async fn prompt_caching_reports_128_token_increments() {
    let sim = start().await;
    let c = client();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(150);
    let req = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": long},
        {"role": "user", "content": "first question"}
    ]});
    let first: Value = openai(&c, &sim, "/v1/chat/completions", &req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt >= 1024, "{prompt}");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let second_req = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": long},
        {"role": "user", "content": "a different question"}
    ]});
    let resp = openai(&c, &sim, "/v1/chat/completions", &second_req)
        .send()
        .await
        .unwrap();
    let id = header(&resp, "x-request-id");
    let second: Value = resp.json().await.unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let system_tokens = count_tokens("gpt-4o", &long);
    assert!(cached >= 1024 && cached <= system_tokens, "{cached}");
    assert_eq!((cached - 1024) % 128, 0);
    assert!(system_tokens - cached < 128);
    assert_eq!(record(&sim, &id).await.cached_input_tokens, cached);

    // Short prompts are never cached.
    let short = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "short"}]});
    for _ in 0..2 {
        let b: Value = openai(&c, &sim, "/v1/chat/completions", &short)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }
}
