//! Fault suite of the proxy, over real loopback HTTP against the simulator: upstreams
//! that send invalid JSON, invalid SSE or responses too large to parse, and an event log
//! that refuses appends (disk full, read-only) or stalls (queue full). Each case checks
//! the documented behaviour — what the client gets, the error code, the counter that
//! records it — and the accounting: every answered request has its usage event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::{HookedLog, harness, harness_with_log, request_id, stream_body};
use tally_enforcer::config::WhenFull;
use tally_events::log::{EventLog, LogError, SegmentLog};
use tally_events::{FinishState, UsageSource};

#[tokio::test]
async fn invalid_json_from_the_upstream_is_relayed_and_estimated() {
    let h = harness(|_| {}).await;
    let resp = h
        .chat(
            serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .header("x-sim-invalid", "json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let body = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_err(),
        "relayed as sent"
    );
    let u = &h.wait_usage(&id, 1).await[0];
    assert_eq!(u.usage_source, UsageSource::Estimated);
    assert!(u.tokens.input_tokens > 0, "input estimated: {u:?}");
    assert!(
        u.tokens.output_tokens > 0,
        "output estimated from the text: {u:?}"
    );
    assert!(u.cost_micros > 0, "{u:?}");
}

#[tokio::test]
async fn invalid_sse_from_the_upstream_is_relayed_and_still_accounted() {
    let h = harness(|_| {}).await;
    let mut body = stream_body(200);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = h
        .chat(body)
        .header("x-sim-invalid", "sse")
        .header("x-sim-output-tokens", "120")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "the stream reaches its end");
    let u = &h.wait_usage(&id, 1).await[0];
    assert_eq!(u.finish_state, FinishState::Completed);
    // The broken event is skipped; the final usage chunk still counts.
    assert_eq!(u.usage_source, UsageSource::ProviderReported);
    assert_eq!(u.tokens.output_tokens, 120);
}

#[tokio::test]
async fn responses_over_max_response_bytes_are_refused_and_streams_pass() {
    let h = harness(|c| c.max_response_bytes = 16 * 1024).await;
    let resp = h
        .chat(
            serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 50_000,
            "messages": [{"role": "user", "content": "write a lot"}]}),
        )
        .header("x-sim-output-tokens", "20000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-tally-error-code"], "tally.upstream_body");
    let id = request_id(&resp);
    let u = &h.wait_usage(&id, 1).await[0];
    assert_eq!(u.finish_state, FinishState::UpstreamError);

    // A stream is never held whole: the same size streams through, usage reported.
    let mut body = stream_body(50_000);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = h
        .chat(body)
        .header("x-sim-output-tokens", "20000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.len() > 16 * 1024, "{} bytes", text.len());
    let u = &h.wait_usage(&id, 1).await[0];
    assert_eq!(u.tokens.output_tokens, 20_000);
}

const OK: u8 = 0;
const REFUSE: u8 = 1;
const STALL: u8 = 2;

/// The harness over a log that appends normally, refuses every append like a full disk
/// (`ENOSPC`), or stalls, as `mode` says.
async fn faulty(when_full: WhenFull, capacity: usize) -> (common::Harness, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(OK));
    let m = mode.clone();
    let hook = move |log: &SegmentLog, key: &str, payload: &[u8]| {
        if m.load(Ordering::SeqCst) == STALL {
            // The sink calls append on a runtime worker; hand the worker's other tasks
            // to another thread while this one stalls, as a slow disk would not block
            // them either.
            tokio::task::block_in_place(|| {
                while m.load(Ordering::SeqCst) == STALL {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        if m.load(Ordering::SeqCst) == REFUSE {
            return Err(LogError::Io {
                context: "appending to segment 0".into(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        log.append(key, payload)
    };
    let h = harness_with_log(
        |c| {
            c.event_queue.when_full = when_full;
            c.event_queue.capacity = capacity;
            c.event_queue.durable_wait_ms = 300;
        },
        move |inner| Arc::new(HookedLog { inner, hook }) as Arc<dyn EventLog>,
    )
    .await;
    (h, mode)
}

fn small_chat(h: &common::Harness) -> reqwest::RequestBuilder {
    h.chat(serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]}))
        .header("x-sim-output-tokens", "5")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_open_with_block_and_counts_what_was_not_written() {
    let (h, mode) = faulty(WhenFull::Block, 1024).await;
    mode.store(REFUSE, Ordering::SeqCst);
    for _ in 0..3 {
        let resp = small_chat(&h).send().await.unwrap();
        assert_eq!(resp.status(), 200, "fail-open keeps serving");
        resp.text().await.unwrap();
    }
    let stats = h.state.sink.stats();
    assert_eq!(stats.append_errors.load(Ordering::SeqCst), 3);
    assert_eq!(stats.durable_misses.load(Ordering::SeqCst), 3);
    assert!(
        h.state.sink.health().check().is_err(),
        "not ready while failing"
    );
    // The disk has room again: appends and readiness recover.
    mode.store(OK, Ordering::SeqCst);
    let resp = small_chat(&h).send().await.unwrap();
    let id = request_id(&resp);
    resp.text().await.unwrap();
    assert_eq!(h.wait_usage(&id, 1).await.len(), 1);
    assert!(h.state.sink.health().check().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_fail_closed_refuses_new_requests_then_recovers() {
    let (h, mode) = faulty(WhenFull::FailClosed, 1024).await;
    mode.store(REFUSE, Ordering::SeqCst);
    // This one is admitted; its events are refused.
    let resp = small_chat(&h).send().await.unwrap();
    resp.text().await.unwrap();
    let resp = small_chat(&h).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-tally-error-code"], "tally.event_log");
    // Recovered: after the refusal period one request tests the log again.
    mode.store(OK, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_micros(
        tally_enforcer::sink::FAILING_REFUSE_MICROS as u64 + 100_000,
    ))
    .await;
    let resp = small_chat(&h).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    resp.text().await.unwrap();
    assert_eq!(h.wait_usage(&id, 1).await.len(), 1);
    let resp = small_chat(&h).send().await.unwrap();
    assert_eq!(resp.status(), 200, "serving again");
    resp.text().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_fills_the_queue_then_fail_closed_refuses_and_nothing_is_lost() {
    let (h, mode) = faulty(WhenFull::FailClosed, 4).await;
    // A real usage event to copy (new ids) while the log stalls.
    let resp = small_chat(&h).send().await.unwrap();
    let id = request_id(&resp);
    resp.text().await.unwrap();
    let template = h.wait_usage(&id, 1).await.remove(0);
    mode.store(STALL, Ordering::SeqCst);
    let sink = h.state.sink.clone();
    let copies: Vec<tally_events::EventId> = (0..6).map(|_| tally_events::EventId::new()).collect();
    let fill: Vec<_> = copies
        .iter()
        .map(|event_id| {
            let (sink, mut u) = (sink.clone(), template.clone());
            u.header.event_id = *event_id;
            // Work already done: queued whatever `when_full` says, waiting for room.
            tokio::spawn(async move { sink.emit_always(u.into()).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.has_room() {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Full: a new request is refused at once, before anything is forwarded.
    let resp = small_chat(&h).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-tally-error-code"], "tally.event_log");
    assert!(sink.stats().queue_full.load(Ordering::SeqCst) > 0);
    // The log moves again: every queued event is written.
    mode.store(OK, Ordering::SeqCst);
    for f in fill {
        f.await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let written = h
            .events()
            .iter()
            .filter(|e| copies.contains(&e.header().event_id))
            .count();
        if written == copies.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{written} of 6 written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_with_block_applies_back_pressure_and_loses_nothing() {
    let (h, mode) = faulty(WhenFull::Block, 2).await;
    mode.store(STALL, Ordering::SeqCst);
    let h = Arc::new(h);
    let sends: Vec<_> = (0..6)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let resp = small_chat(&h).send().await.unwrap();
                let id = request_id(&resp);
                let status = resp.status().as_u16();
                resp.text().await.unwrap();
                (status, id)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    mode.store(OK, Ordering::SeqCst);
    for s in sends {
        let (status, id) = s.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(h.wait_usage(&id, 1).await.len(), 1);
    }
    assert_eq!(h.state.sink.stats().append_errors.load(Ordering::SeqCst), 0);
}
