//! Helpers shared by the simulator's HTTP tests: start a simulator on loopback, a
//! bounded reqwest client, an SSE parser and stream readers; no assertions of their own.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tally_simulator::{ServedRecord, SimConfig, SimHandle, spawn};

pub async fn start() -> SimHandle {
    start_with(SimConfig::default()).await
}

pub async fn start_with(config: SimConfig) -> SimHandle {
    spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind simulator")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POST JSON with an OpenAI-style bearer key.
pub fn openai(
    c: &reqwest::Client,
    sim: &SimHandle,
    path: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    c.post(format!("{}{path}", sim.base_url()))
        .bearer_auth("sk-test-openai")
        .json(body)
}

/// POST JSON with an Anthropic-style key.
pub fn anthropic(
    c: &reqwest::Client,
    sim: &SimHandle,
    path: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    c.post(format!("{}{path}", sim.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
}

/// POST JSON with a Gemini key header.
pub fn gemini(
    c: &reqwest::Client,
    sim: &SimHandle,
    path_and_query: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    c.post(format!("{}{path_and_query}", sim.base_url()))
        .header("x-goog-api-key", "gk-test")
        .json(body)
}

#[derive(Debug, Clone)]
pub struct Sse {
    pub event: Option<String>,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", self.data))
    }
}

/// Parses an SSE body (LF or CRLF line endings); multiple `data:` lines join with `\n`.
pub fn parse_sse(body: &str) -> Vec<Sse> {
    let body = body.replace("\r\n", "\n");
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        if block.trim().is_empty() {
            continue;
        }
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        out.push(Sse {
            event,
            data: data.join("\n"),
        });
    }
    out
}

/// Reads a streaming body frame by frame with arrival times; `Err` if the body failed.
pub async fn read_frames(
    resp: reqwest::Response,
) -> (Vec<(Instant, Bytes)>, Option<reqwest::Error>) {
    let mut frames = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => frames.push((Instant::now(), b)),
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

pub fn concat(frames: &[(Instant, Bytes)]) -> String {
    let mut v = Vec::new();
    for (_, b) in frames {
        v.extend_from_slice(b);
    }
    String::from_utf8(v).unwrap()
}

/// Waits (bounded) until the simulator has recorded at least `n` requests.
pub async fn served_at_least(sim: &SimHandle, n: usize) -> Vec<ServedRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = sim.served();
        if s.len() >= n || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The record with `request_id`.
pub async fn record(sim: &SimHandle, request_id: &str) -> ServedRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = sim
            .served()
            .into_iter()
            .find(|r| r.request_id == request_id)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no served record for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}
