//! The proxy under failure, over real loopback HTTP against the simulator: client
//! disconnects mid-stream (drain and cancel), upstream 5xx, retries, upstream reset
//! mid-stream, upstream timeout, auth and size denials, and unbuffered streaming. Each
//! case must produce exactly one usage event per attempt with the right finish state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{harness, request_id, stream_body};
use futures_util::StreamExt;
use tally_enforcer::config::{OnClientAbort, RouteConfig};
use tally_events::log::{EventLog, Position};
use tally_events::{FinishState, Outcome, UsageSource};

#[tokio::test]
async fn client_disconnect_with_drain_records_the_providers_final_usage() {
    let h = harness(|c| c.on_client_abort = OnClientAbort::Drain).await;
    let resp = h
        .chat(stream_body(200))
        .header("x-sim-output-tokens", "200")
        .header("x-sim-chunk-delay-ms", "5")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    let u = &usage[0];
    assert_eq!(u.finish_state, FinishState::ClientAborted);
    assert_eq!(
        u.usage_source,
        UsageSource::ProviderReported,
        "drain reads to the final usage"
    );
    assert_eq!(u.tokens.output_tokens, 200);
    assert!(u.tokens.input_tokens > 0);
}

#[tokio::test]
async fn client_disconnect_with_cancel_stops_the_upstream_and_estimates() {
    let h = harness(|c| c.on_client_abort = OnClientAbort::Cancel).await;
    let resp = h
        .chat(stream_body(400))
        .header("x-sim-output-tokens", "400")
        .header("x-sim-chunk-delay-ms", "20")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    let mut body = resp.bytes_stream();
    let mut got = 0;
    while got < 3 {
        got += usize::from(!body.next().await.unwrap().unwrap().is_empty());
    }
    drop(body);
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    let u = &usage[0];
    assert_eq!(u.finish_state, FinishState::ClientAborted);
    assert_ne!(u.usage_source, UsageSource::ProviderReported);
    assert!(
        u.tokens.output_tokens > 0 && u.tokens.output_tokens < 400,
        "{u:?}"
    );
    // The simulator saw the stream closed early.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = h.sim.served();
    let last = served.last().unwrap();
    assert!(
        !last.completed,
        "upstream generation should have been cancelled: {last:?}"
    );
}

#[tokio::test]
async fn upstream_5xx_is_relayed_and_recorded() {
    let h = harness(|_| {}).await;
    let resp = h
        .chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .header("x-sim-status", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let id = request_id(&resp);
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].finish_state, FinishState::UpstreamError);
    assert_eq!(usage[0].status_code, Some(500));
    assert_eq!(usage[0].tokens.total(), 0);
}

#[tokio::test]
async fn every_retry_attempt_is_its_own_usage_event() {
    let h = harness(|c| {
        c.routes.insert(
            "openai".into(),
            RouteConfig {
                upstream: "openai".into(),
                max_attempts: 3,
                backoff_ms: 1,
                ..RouteConfig::default()
            },
        );
    })
    .await;
    let resp = h
        .chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .header("x-sim-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let last_id = request_id(&resp);
    let base = last_id.trim_end_matches("-r2").to_owned();
    assert_eq!(
        last_id,
        format!("{base}-r2"),
        "the client sees the answering attempt's id"
    );
    let mut usage = h.wait_usage(&base, 3).await;
    usage.sort_by_key(|u| u.retry_attempt);
    assert_eq!(usage.len(), 3, "{usage:?}");
    assert_eq!(usage[0].header.request_id, base);
    assert_eq!(usage[1].retry_of.as_deref(), Some(base.as_str()));
    assert_eq!(
        usage[2].retry_of.as_deref(),
        Some(format!("{base}-r1").as_str())
    );
    assert!(
        usage
            .iter()
            .all(|u| u.finish_state == FinishState::UpstreamError && u.status_code == Some(503))
    );
}

#[tokio::test]
async fn upstream_reset_mid_stream_is_an_upstream_error_with_estimated_output() {
    let h = harness(|_| {}).await;
    let resp = h
        .chat(stream_body(300))
        .header("x-sim-output-tokens", "300")
        .header("x-sim-fail-after-chunks", "4")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    let mut body = resp.bytes_stream();
    let mut saw_error = false;
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            saw_error = true;
            break;
        }
    }
    assert!(
        saw_error,
        "the client must see the stream fail, not end cleanly"
    );
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage.len(), 1);
    let u = &usage[0];
    assert_eq!(u.finish_state, FinishState::UpstreamError);
    assert_eq!(u.usage_source, UsageSource::Estimated);
    assert!(
        u.tokens.output_tokens > 0 && u.tokens.output_tokens < 300,
        "{u:?}"
    );
    assert!(u.tokens.input_tokens > 0);
}

#[tokio::test]
async fn upstream_timeout_gives_504_and_a_timeout_event() {
    let h = harness(|c| c.response_timeout_ms = 300).await;
    let resp = h
        .chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .header("x-sim-hang-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let id = request_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tally.upstream_timeout", "{body}");
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].finish_state, FinishState::Timeout);
    assert_eq!(usage[0].status_code, Some(504));
}

#[tokio::test]
async fn unknown_keys_get_401_in_the_providers_format_and_a_decision() {
    let h = harness(|_| {}).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", h.proxy))
        .header("x-api-key", "not-a-key")
        .json(&serde_json::json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let id = request_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic error shape: {body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage[0].finish_state, FinishState::Denied);
    let d = h.decisions_for(&id);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].outcome, Outcome::Deny);
    assert_eq!(d[0].rule, "gateway-key");
    assert!(d[0].reason.contains("not known"), "{}", d[0].reason);
    // The secret never reaches the log.
    let raw: Vec<u8> = h
        .log
        .read(Position::START, 100)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.payload)
        .collect();
    assert!(!String::from_utf8_lossy(&raw).contains("not-a-key"));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let h = harness(|c| c.max_body_bytes = 1024).await;
    let big = "x".repeat(4096);
    let resp = h
        .chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let id = request_id(&resp);
    assert_eq!(
        h.wait_usage(&id, 1).await[0].finish_state,
        FinishState::Denied
    );
    assert_eq!(
        h.decisions_for(&id)
            .first()
            .map(|d| d.rule.clone())
            .as_deref(),
        Some("request-size")
    );
}

#[tokio::test]
async fn sse_events_reach_the_client_as_soon_as_the_upstream_sends_them() {
    let h = harness(|_| {}).await;
    let delay = 150u64;
    let resp = h
        .chat(stream_body(40))
        .header("x-sim-output-tokens", "24")
        .header("x-sim-chunk-delay-ms", delay.to_string())
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut arrivals = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        let events = chunk.windows(2).filter(|w| w == b"\n\n").count();
        for _ in 0..events {
            arrivals.push(Instant::now());
        }
    }
    assert!(
        arrivals.len() >= 4,
        "expected several events, got {}",
        arrivals.len()
    );
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let spaced = gaps
        .iter()
        .filter(|g| **g >= Duration::from_millis(delay / 2))
        .count();
    // Content chunks are `delay` apart upstream; buffering would bunch them together.
    assert!(
        spaced >= 3,
        "events arrived bunched together (buffered): gaps {gaps:?}"
    );
}
