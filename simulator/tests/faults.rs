//! Faults and the served record over real HTTP: 401 and injected error shapes per
//! provider, real streaming with delays, mid-stream aborts, client disconnects,
//! malformed payloads, hangs, configured error rates, `/_sim/served`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tally_simulator::{ServedRecord, SimConfig, count_tokens};

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream,
           "messages": [{"role": "user", "content": "hello"}]})
}

fn claude(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 500, "stream": stream,
           "messages": [{"role": "user", "content": "hello"}]})
}

fn gem() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
}

#[tokio::test]
async fn missing_key_is_401_in_each_format() {
    let sim = start().await;
    let c = client();
    let base = sim.base_url();

    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    let e = &b["error"];
    assert!(e["message"].is_string());
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], "invalid_api_key");
    assert!(e.get("param").is_some());

    let r = c
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&claude(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "authentication_error");
    assert!(b["error"]["message"].is_string());

    let r = c
        .post(format!(
            "{base}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .json(&gem())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], 401);
    assert_eq!(b["error"]["status"], "UNAUTHENTICATED");

    // An empty bearer is no key either.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer ")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let served = served_at_least(&sim, 4).await;
    assert_eq!(served.len(), 4);
    assert!(
        served
            .iter()
            .all(|r| r.status == 401 && r.key_fingerprint.is_none())
    );
    assert!(served.iter().all(|r| r.output_tokens == 0));
}

#[tokio::test]
async fn injected_status_in_each_format() {
    let sim = start().await;
    let c = client();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-status", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let id = header(&r, "x-request-id");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["type"], "server_error");

    let r = openai(&c, &sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-status", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "1");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "rate_limit_exceeded");

    let r = anthropic(&c, &sim, "/v1/messages", &claude(true))
        .header("x-sim-status", "529")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "overloaded_error");

    let r = anthropic(&c, &sim, "/v1/messages", &claude(false))
        .header("x-sim-status", "429")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["type"], "rate_limit_error");

    let r = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &gem(),
    )
    .header("x-sim-status", "429")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 429);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b["error"],
        json!({"code": 429, "message": b["error"]["message"], "status": "RESOURCE_EXHAUSTED"})
    );

    let rec = record(&sim, &id).await;
    assert_eq!(rec.status, 500);
    assert_eq!(rec.model_requested, "gpt-4o-mini");
    assert_eq!(rec.output_tokens, 0);
}

#[tokio::test]
async fn stream_really_streams_with_delays() {
    let sim = start().await;
    let c = client();
    let t0 = Instant::now();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-output-tokens", "16")
        .header("x-sim-ttft-ms", "60")
        .header("x-sim-chunk-delay-ms", "40")
        .send()
        .await
        .unwrap();
    let head = t0.elapsed();
    assert!(
        head < Duration::from_millis(50),
        "head is not held back by TTFT: {head:?}"
    );
    let (frames, err) = read_frames(r).await;
    assert!(err.is_none());
    let content: Vec<Instant> = frames
        .iter()
        .filter(|(_, b)| {
            let s = String::from_utf8_lossy(b);
            s.contains("\"content\":\"") && !s.contains("\"content\":\"\"")
        })
        .map(|(t, _)| *t)
        .collect();
    // 16 tokens / 4 per chunk = 4 content events, each its own frame.
    assert!(content.len() >= 4, "{} content frames", content.len());
    let first = content[0] - t0;
    let spread = *content.last().unwrap() - content[0];
    assert!(first >= Duration::from_millis(55), "ttft {first:?}");
    assert!(
        spread >= Duration::from_millis(110),
        "chunks spread over {spread:?}"
    );
    let text: String = parse_sse(&concat(&frames))
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(count_tokens("gpt-4o-mini", &text), 16);
}

#[tokio::test]
async fn fail_after_chunks_aborts_the_connection() {
    let sim = start().await;
    let c = client();
    let cases: [(reqwest::RequestBuilder, &str); 3] = [
        (
            openai(&c, &sim, "/v1/chat/completions", &chat(true)),
            "x-request-id",
        ),
        (
            anthropic(&c, &sim, "/v1/messages", &claude(true)),
            "request-id",
        ),
        (
            gemini(
                &c,
                &sim,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                &gem(),
            ),
            "",
        ),
    ];
    for (req, id_header) in cases {
        let r = req
            .header("x-sim-output-tokens", "40")
            .header("x-sim-fail-after-chunks", "3")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = (!id_header.is_empty()).then(|| header(&r, id_header));
        let (frames, err) = read_frames(r).await;
        assert!(err.is_some(), "client must see a body error");
        let body = concat(&frames);
        assert!(!body.contains("[DONE]") && !body.contains("message_stop"));
        assert!(!body.contains("finishReason"));
        let events = parse_sse(&body);
        let id = id.unwrap_or_else(|| events[0].json()["responseId"].as_str().unwrap().to_owned());
        let rec = record(&sim, &id).await;
        assert!(!rec.completed, "{rec:?}");
        assert_eq!(rec.status, 200);
        assert_eq!(rec.output_tokens, 40);
        assert_eq!(rec.output_tokens_sent, 12, "3 chunks of 4 tokens");
    }
}

#[tokio::test]
async fn client_disconnect_is_recorded_incomplete() {
    let sim = start().await;
    let c = client();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-output-tokens", "80")
        .header("x-sim-chunk-delay-ms", "30")
        .send()
        .await
        .unwrap();
    let id = header(&r, "x-request-id");
    let mut s = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\":\"").count() < 3 {
        let b = s.next().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&b));
    }
    drop(s);
    let rec = record(&sim, &id).await;
    assert!(!rec.completed);
    assert!(rec.streamed);
    assert_eq!(rec.output_tokens, 80);
    assert!(
        rec.output_tokens_sent >= 8 && rec.output_tokens_sent < 80,
        "sent {}",
        rec.output_tokens_sent
    );
}

#[tokio::test]
async fn invalid_payloads() {
    let sim = start().await;
    let c = client();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-invalid", "json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.starts_with('{'));
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let r = anthropic(&c, &sim, "/v1/messages", &claude(true))
        .header("x-sim-invalid", "sse")
        .send()
        .await
        .unwrap();
    let events = parse_sse(&r.text().await.unwrap());
    let bad = events
        .iter()
        .filter(|e| serde_json::from_str::<Value>(&e.data).is_err())
        .count();
    assert_eq!(bad, 1, "exactly one merged, unparsable event");

    let r = openai(&c, &sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-invalid", "json")
        .send()
        .await
        .unwrap();
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let bad = events
        .iter()
        .filter(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
        .count();
    assert_eq!(bad, 1);
}

#[tokio::test]
async fn hang_delays_the_response_head() {
    let sim = start().await;
    let c = client();
    let t0 = Instant::now();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-hang-ms", "150")
        .send()
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(140));
    assert_eq!(r.status(), 200);

    let t0 = Instant::now();
    let r = openai(&c, &sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-latency-ms", "100")
        .send()
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(90));
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn configured_error_and_rate_limit_rates() {
    let sim = start_with(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let c = client();
    for i in 0..10 {
        let body = json!({"model": "claude-haiku-4-5", "max_tokens": 10,
                          "messages": [{"role": "user", "content": format!("n{i}")}]});
        let r = anthropic(&c, &sim, "/v1/messages", &body)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 500 | 529), "{}", r.status());
        let b: Value = r.json().await.unwrap();
        assert!(matches!(
            b["error"]["type"].as_str(),
            Some("api_error" | "overloaded_error")
        ));
    }
    let sim = start_with(SimConfig {
        rate_limit_rate: 1.0,
        retry_after_secs: 7,
        ..SimConfig::default()
    })
    .await;
    let r = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &gem(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "7");

    // Half the requests fail; the same body (and retry count) always draws the same.
    let sim = start_with(SimConfig {
        error_rate: 0.5,
        seed: 42,
        ..SimConfig::default()
    })
    .await;
    let mut failures = 0;
    for i in 0..40 {
        let body =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("m{i}")}]});
        let a = openai(&c, &sim, "/v1/chat/completions", &body)
            .send()
            .await
            .unwrap()
            .status();
        let b = openai(&c, &sim, "/v1/chat/completions", &body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(a, b);
        if !a.is_success() {
            failures += 1;
        }
    }
    assert!((8..=32).contains(&failures), "{failures}");

    // An SDK retry (x-stainless-retry-count) draws again, so retries can succeed.
    let mut recovered = 0;
    for i in 0..40 {
        let body =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("m{i}")}]});
        let first = openai(&c, &sim, "/v1/chat/completions", &body)
            .send()
            .await
            .unwrap()
            .status();
        let retry = openai(&c, &sim, "/v1/chat/completions", &body)
            .header("x-stainless-retry-count", "1")
            .send()
            .await
            .unwrap()
            .status();
        if !first.is_success() && retry.is_success() {
            recovered += 1;
        }
    }
    assert!(recovered > 0);
}

#[tokio::test]
async fn client_gone_during_latency_is_recorded_incomplete() {
    let sim = start().await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = openai(&c, &sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-latency-ms", "2000")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let served = served_at_least(&sim, 1).await;
    assert_eq!(served.len(), 1);
    assert!(!served[0].completed);
    assert_eq!(served[0].status, 499);
    assert_eq!(served[0].output_tokens_sent, 0);
    assert!(served[0].output_tokens > 0);
}

#[tokio::test]
async fn unknown_models_served_as_is_unless_configured() {
    let sim = start().await;
    let c = client();
    let body = json!({"model": "my-local-llama", "messages": [{"role": "user", "content": "x"}]});
    let b: Value = openai(&c, &sim, "/v1/chat/completions", &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["model"], "my-local-llama");

    let strict = start_with(SimConfig {
        reject_unknown_models: true,
        ..SimConfig::default()
    })
    .await;
    let r = openai(&c, &strict, "/v1/chat/completions", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "model_not_found");
    let r = gemini(
        &c,
        &strict,
        "/v1beta/models/gemini-9:generateContent",
        &gem(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn served_endpoint_matches_and_fingerprints_keys() {
    let sim = start().await;
    let c = client();
    for key in ["sk-alpha", "sk-alpha", "sk-beta"] {
        let r = c
            .post(format!("{}/v1/chat/completions", sim.base_url()))
            .bearer_auth(key)
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let via_http: Vec<ServedRecord> = c
        .get(format!("{}/_sim/served", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_http, sim.served());
    assert_eq!(via_http.len(), 3);
    let fp: Vec<&str> = via_http
        .iter()
        .map(|r| r.key_fingerprint.as_deref().unwrap())
        .collect();
    assert_eq!(fp[0], fp[1]);
    assert_ne!(fp[0], fp[2]);
    assert!(
        fp.iter()
            .all(|f| !f.contains("alpha") && !f.contains("beta"))
    );
    let ids: std::collections::HashSet<&str> =
        via_http.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "request ids are unique");
    assert!(via_http.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn config_from_yaml() {
    let cfg: SimConfig = serde_yaml_ng::from_str(
        "latency_ms: 5\nerror_rate: 0.25\nmodel_aliases:\n  fast: fast-2026-01-01\n",
    )
    .unwrap();
    assert_eq!(cfg.latency_ms, 5);
    assert_eq!(cfg.error_rate, 0.25);
    assert_eq!(cfg.chunk_tokens, SimConfig::default().chunk_tokens);
    assert!(cfg.validate().is_ok());
    let sim = start_with(cfg).await;
    let b: Value = openai(
        &client(),
        &sim,
        "/v1/chat/completions",
        &json!({"model": "fast", "messages": [{"role": "user", "content": "x"}]}),
    )
    .header("x-sim-status", "")
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap_or(json!(null));
    // error_rate 0.25 may fail this body; when it succeeds the alias is applied.
    if b.get("model").is_some() {
        assert_eq!(b["model"], "fast-2026-01-01");
    }
}

#[tokio::test]
async fn small_requests_are_fast() {
    let sim = start().await;
    let c = client();
    // Warm up (tokenizer load) then time sequential round trips.
    openai(&c, &sim, "/v1/chat/completions", &chat(false))
        .send()
        .await
        .unwrap();
    let n = 200;
    let t0 = Instant::now();
    for i in 0..n {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 20,
                          "messages": [{"role": "user", "content": format!("hello {i}")}]});
        let r = openai(&c, &sim, "/v1/chat/completions", &body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let per = t0.elapsed() / n;
    // Generous bound for unoptimized test builds on a loaded 2-core machine.
    assert!(per < Duration::from_millis(20), "{per:?} per request");
}
