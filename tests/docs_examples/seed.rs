//! Real traffic for the examples to query: a mixed workload through the sandbox's
//! `tally up --dev` proxy (to its simulator), then a wait until every request has ended
//! and the ledger has committed it.

use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};

/// The stack's configuration: retries on the OpenAI route, and the policies below.
pub(crate) fn stack_config(policy_file: &str) -> String {
    format!(
        "proxy:\n  policy_file: {policy_file}\n  routes:\n    openai: {{ upstream: openai, max_attempts: 2, backoff_ms: 10 }}\n"
    )
}

/// Policies that the workload runs into: one of each kind of decision.
pub(crate) const POLICIES: &str = r#"rules:
  - name: globex-no-gpt-4o
    match: tenant == "globex" && model == "gpt-4o"
    action: deny
    reason: globex may use gpt-4o-mini only
  - name: initech-rpm
    match: tenant == "initech"
    action: rate-limit
    limit: 3
    window: 1m
    key: key_id
  - name: umbrella-daily-tokens
    match: tenant == "umbrella"
    action: usage-cap
    limit_tokens: 200
    unit: tokens
    period: day
  - name: acme-rpm-trial
    match: tenant == "acme"
    mode: shadow
    action: rate-limit
    limit: 5
    window: 1m
    key: key_id
"#;

fn chat(model: &str, stream: bool, max_tokens: Option<u32>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Summarize the quarterly report in two sentences."}],
        "stream": stream,
    });
    if let Some(m) = max_tokens {
        body["max_tokens"] = m.into();
    }
    body
}

struct Traffic {
    client: Client,
    proxy: String,
}

impl Traffic {
    fn openai(&self, key: &str, body: serde_json::Value) -> RequestBuilder {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.proxy))
            .bearer_auth(key)
            .json(&body)
    }

    fn anthropic(&self, key: &str, model: &str, stream: bool) -> RequestBuilder {
        self.client
            .post(format!("http://{}/v1/messages", self.proxy))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&serde_json::json!({
                "model": model,
                "max_tokens": 256,
                "stream": stream,
                "messages": [{"role": "user", "content": "Draft a short release note."}],
            }))
    }

    fn gemini(&self, key: &str, model: &str, stream: bool) -> RequestBuilder {
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        self.client
            .post(format!(
                "http://{}/v1beta/models/{model}:{method}",
                self.proxy
            ))
            .header("x-goog-api-key", key)
            .json(&serde_json::json!({
                "contents": [{"role": "user", "parts": [{"text": "List three colours."}]}],
            }))
    }

    fn embeddings(&self, key: &str) -> RequestBuilder {
        self.client
            .post(format!("http://{}/v1/embeddings", self.proxy))
            .bearer_auth(key)
            .json(&serde_json::json!({"model": "text-embedding-3-small", "input": "tally"}))
    }
}

/// Send a request and read its whole answer; the status does not matter (denials and
/// upstream errors are part of the workload).
fn send(r: RequestBuilder) {
    if let Ok(resp) = r.send() {
        let _ = resp.bytes();
    }
}

/// Send a streaming request, read its first bytes and hang up (a client abort).
fn abort(r: RequestBuilder) {
    if let Ok(mut resp) = r.send() {
        let mut buf = [0u8; 64];
        let _ = resp.read(&mut buf);
    }
}

/// Drive the workload and wait until it is all in the tables.
pub(crate) fn seed(proxy: &str, admin: &str) {
    let client = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let t = Traffic {
        client: client.clone(),
        proxy: proxy.to_owned(),
    };
    let (acme, acme_batch) = ("dev-acme-web", "dev-acme-batch");
    // acme: the three wire formats, streaming and not, embeddings.
    for i in 0..4 {
        send(t.openai(acme, chat("gpt-4o-mini", i % 2 == 1, None)));
    }
    send(t.openai(acme, chat("gpt-4.1-mini", false, None)));
    send(t.embeddings(acme));
    send(t.anthropic(acme_batch, "claude-haiku-4-5", false));
    send(t.anthropic(acme_batch, "claude-haiku-4-5", true));
    send(t.gemini(acme_batch, "gemini-2.5-flash", false));
    send(t.gemini(acme_batch, "gemini-2.5-flash", true));
    // An upstream failing twice: the first attempt and its retry are both usage rows.
    send(
        t.openai(acme, chat("gpt-4o-mini", false, None))
            .header("x-sim-status", "503"),
    );
    // An upstream error without retries (Anthropic's route has none).
    send(
        t.anthropic(acme_batch, "claude-haiku-4-5", false)
            .header("x-sim-status", "529"),
    );
    // Client aborts mid-stream: the proxy drains the upstream for the real usage.
    abort(
        t.openai(acme, chat("gpt-4o-mini", true, None))
            .header("x-sim-output-tokens", "60")
            .header("x-sim-chunk-delay-ms", "5"),
    );
    abort(
        t.anthropic("dev-globex-web", "claude-haiku-4-5", true)
            .header("x-sim-output-tokens", "60")
            .header("x-sim-chunk-delay-ms", "5"),
    );
    // The upstream resets mid-stream: the output is estimated.
    send(
        t.openai(acme, chat("gpt-4o-mini", true, None))
            .header("x-sim-fail-after-chunks", "3"),
    );
    // globex: allowed traffic and an access-rule denial.
    send(t.openai("dev-globex-web", chat("gpt-4o-mini", false, None)));
    send(t.openai("dev-globex-web", chat("gpt-4o", false, None)));
    send(t.anthropic("dev-globex-web", "claude-sonnet-4-5", false));
    // initech: five requests against a limit of three a minute.
    for _ in 0..5 {
        send(t.openai("dev-initech-batch", chat("gpt-4.1-mini", false, Some(64))));
    }
    // umbrella: a daily token cap that runs out.
    for _ in 0..6 {
        send(
            t.openai("dev-umbrella-app", chat("gpt-4o-mini", false, Some(50)))
                .header("x-sim-output-tokens", "40"),
        );
    }
    // Not a gateway key.
    send(t.openai("sk-not-a-gateway-key", chat("gpt-4o-mini", false, None)));

    wait_until_settled(&client, admin);
}

fn metric(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Until no request is in flight (drained aborts write their usage when the upstream
/// ends) and the ledger has committed every event: `tally export` reads only committed
/// tables.
fn wait_until_settled(client: &Client, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = client
            .get(format!("http://{admin}/metrics"))
            .bearer_auth(super::sandbox::DEV_ADMIN)
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let in_flight = metric(&text, "tally_requests_in_flight");
        let lag = metric(&text, "tally_ledger_lag_events");
        if !in_flight.is_empty() && in_flight.iter().chain(&lag).all(|v| *v == 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the seeded traffic did not settle in 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
