//! `respond_after`: with `durable` (the default) a client never sees the end of a
//! response before its usage event is durable in the log, for whole responses and for
//! streams of every provider, read the way the SDKs read them (up to the terminal event,
//! or to the end of the body); denials too. With `queued` responses end without waiting.
//! The log here takes 300 ms to acknowledge each append, and remembers when it did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, HookedLog, harness_with_log};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tally_enforcer::config::RespondAfter;
use tally_events::Event;
use tally_events::log::{EventLog, Receipt, SegmentLog};

const ACK_DELAY: Duration = Duration::from_millis(300);

/// The harness over a log whose appends take [`ACK_DELAY`] and are durable on return;
/// also when each usage event's append returned, by request id.
async fn setup(mode: RespondAfter) -> (Harness, Arc<Mutex<HashMap<String, Instant>>>) {
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let a = acked.clone();
    let hook = move |log: &SegmentLog, key: &str, payload: &[u8]| {
        // The sink appends on a runtime worker: hand the worker's other tasks to another
        // thread while this one sleeps, so the delay holds up the log and nothing else.
        tokio::task::block_in_place(|| std::thread::sleep(ACK_DELAY));
        let pos = log.append(key, payload)?.wait()?;
        if let Ok(Event::Usage(u)) = tally_events::decode(payload) {
            a.lock().insert(u.header.request_id.clone(), Instant::now());
        }
        Ok(Receipt::ready(pos))
    };
    let h = harness_with_log(
        |c| c.event_queue.respond_after = mode,
        move |inner| Arc::new(HookedLog { inner, hook }) as Arc<dyn EventLog>,
    )
    .await;
    (h, acked)
}

/// When the client saw the end: the whole body, or for a stream the first chunk that
/// contains `terminal` (the SDKs stop reading there), else the end of the body.
async fn read_until(resp: reqwest::Response, terminal: Option<&str>) -> (String, Instant) {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if terminal.is_some_and(|t| text.contains(t)) {
            return (text, Instant::now());
        }
    }
    (text, Instant::now())
}

struct Case {
    name: &'static str,
    path: &'static str,
    auth: (&'static str, &'static str),
    body: serde_json::Value,
    terminal: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let chat = |stream: bool| {
        serde_json::json!({"model": "gpt-4o-mini", "stream": stream, "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]})
    };
    let bearer = ("authorization", "Bearer dev-acme-durable");
    vec![
        Case {
            name: "openai whole",
            path: "/v1/chat/completions",
            auth: bearer,
            body: chat(false),
            terminal: None,
        },
        Case {
            name: "openai stream",
            path: "/v1/chat/completions",
            auth: bearer,
            body: chat(true),
            terminal: Some("[DONE]"),
        },
        Case {
            name: "anthropic stream",
            path: "/v1/messages",
            auth: ("x-api-key", "dev-acme-durable"),
            body: serde_json::json!({"model": "claude-sonnet-4-5", "stream": true,
                "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}),
            terminal: Some("message_stop"),
        },
        Case {
            name: "gemini stream",
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            auth: ("x-goog-api-key", "dev-acme-durable"),
            body: serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}),
            terminal: None,
        },
        Case {
            name: "denied (unknown key)",
            path: "/v1/chat/completions",
            auth: ("authorization", "Bearer sk-not-a-gateway-key"),
            body: chat(false),
            terminal: None,
        },
    ]
}

/// Send every case; for each, (name, when the client saw the end, when the log
/// acknowledged its usage event).
async fn run(mode: RespondAfter) -> Vec<(&'static str, Instant, Instant)> {
    let (h, acked) = setup(mode).await;
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for case in cases() {
        let resp = client
            .post(format!("{}{}", h.proxy, case.path))
            .header(case.auth.0, case.auth.1)
            .json(&case.body)
            .send()
            .await
            .unwrap();
        let id = common::request_id(&resp);
        let (text, seen) = read_until(resp, case.terminal).await;
        if let Some(t) = case.terminal {
            assert!(text.contains(t), "{}: {text}", case.name);
        }
        // The append may still be under way in `queued` mode.
        let deadline = Instant::now() + Duration::from_secs(5);
        let ack = loop {
            if let Some(at) = acked.lock().get(&id).copied() {
                break at;
            }
            assert!(Instant::now() < deadline, "{}: no usage event", case.name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        out.push((case.name, seen, ack));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_responses_end_only_after_their_usage_event_is_durable() {
    for (name, seen, ack) in run(RespondAfter::Durable).await {
        assert!(
            seen >= ack,
            "{name}: the client saw the end {:?} before the event was durable",
            ack - seen
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_responses_end_without_waiting_for_the_log() {
    let results = run(RespondAfter::Queued).await;
    // Every response ended well before its slow append returned.
    for (name, seen, ack) in results {
        assert!(
            ack > seen + ACK_DELAY / 3,
            "{name}: waited for the log in queued mode"
        );
    }
}
