//! The demo's workload: what a few teams sharing one gateway send in a minute, as plain
//! HTTP in each provider's own wire format, plus a script that calls the provider
//! directly with its own key (bypass traffic). Defines the traffic and sends it; must
//! not look at events or tables (the demo reads those back through SQL).
//!
//! Tenants and keys (`dev-<tenant>-<suffix>` keys of dev mode, passed through to the
//! provider as its API key):
//!
//! | tenant | keys | what it does |
//! |---|---|---|
//! | `acme` | `dev-acme-web`, `dev-acme-batch` | chat on OpenAI, Anthropic and Gemini, streaming and not; embeddings; long cached prompts; streams its users abandon |
//! | `search` | `dev-search-api` | a burst that runs into its per-key rate limit |
//! | `labs` | `dev-labs-research` | gpt-4o calls until its daily budget is spent |
//! | `hobby` | `dev-hobby-1` | gpt-4o-mini, and gpt-4o, which its plan does not include |
//!
//! The simulator fails a few requests (`error_rate`): the gateway retries them, then the
//! client retries once more, as the official SDKs do (`x-stainless-retry-count`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Longest time one demo request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests sent at once by the independent lanes.
const CONCURRENCY: usize = 6;

/// OpenAI-format keys the gateway uses (passed through to the provider).
pub(crate) const OPENAI_KEYS: [&str; 5] = [
    "dev-acme-web",
    "dev-acme-batch",
    "dev-search-api",
    "dev-labs-research",
    "dev-hobby-1",
];
/// The key of a script that calls the provider directly, bypassing the gateway.
pub(crate) const BYPASS_KEY: &str = "sk-proj-notebook-of-someone-in-acme";
/// Model whose streams get abandoned by their readers (alone in its reconciliation
/// cells, so the provider's billing of aborted streams shows on its own).
pub(crate) const ABORT_MODEL: &str = "gpt-4.1";
/// Model called with a long shared prefix (prompt caching).
pub(crate) const CACHE_MODEL: &str = "gpt-4.1-mini";
/// Model whose provider price changed (the simulator bills a new price).
pub(crate) const REPRICED_MODEL: &str = "gpt-4.1-nano";

/// What one request got back.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) request_id: Option<String>,
    pub(crate) body: Bytes,
    /// The client hung up after this many body chunks.
    pub(crate) aborted: bool,
}

impl Reply {
    /// A refusal by a tally policy rule.
    pub(crate) fn denied(&self) -> bool {
        self.status >= 400 && contains(&self.body, b"tally.denied")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Which wire format a call speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

/// One request of the workload.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) wire: Wire,
    pub(crate) key: &'static str,
    pub(crate) path: String,
    pub(crate) body: Value,
    pub(crate) headers: Vec<(&'static str, String)>,
    /// Read this many body chunks, then hang up.
    pub(crate) abort_after_chunks: Option<usize>,
}

impl Call {
    fn openai_chat(key: &'static str, model: &str, prompt: &str, stream: bool) -> Call {
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 200,
        });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        Call {
            wire: Wire::OpenAi,
            key,
            path: "/v1/chat/completions".to_owned(),
            body,
            headers: Vec::new(),
            abort_after_chunks: None,
        }
    }

    fn anthropic(key: &'static str, prompt: &str, stream: bool) -> Call {
        Call {
            wire: Wire::Anthropic,
            key,
            path: "/v1/messages".to_owned(),
            body: json!({
                "model": "claude-haiku-4-5",
                "max_tokens": 200,
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
            headers: Vec::new(),
            abort_after_chunks: None,
        }
    }

    fn gemini(key: &'static str, prompt: &str, stream: bool) -> Call {
        let path = if stream {
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        } else {
            "/v1beta/models/gemini-2.5-flash:generateContent"
        };
        Call {
            wire: Wire::Gemini,
            key,
            path: path.to_owned(),
            body: json!({
                "contents": [{"role": "user", "parts": [{"text": prompt}]}],
                "generationConfig": {"maxOutputTokens": 200},
            }),
            headers: Vec::new(),
            abort_after_chunks: None,
        }
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.headers.push((name, value.into()));
        self
    }
}

/// A plain HTTP/1.1 client for loopback.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub(crate) fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Send `call` to `base` (`http://host:port`).
    pub(crate) async fn send(&self, base: &str, call: &Call) -> Result<Reply> {
        let uri = format!("{base}{}", call.path);
        let mut req = Request::post(&uri).header("content-type", "application/json");
        req = match call.wire {
            Wire::OpenAi => req.header("authorization", format!("Bearer {}", call.key)),
            Wire::Anthropic => req
                .header("x-api-key", call.key)
                .header("anthropic-version", "2023-06-01"),
            Wire::Gemini => req.header("x-goog-api-key", call.key),
        };
        for (name, value) in &call.headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(call.body.to_string())))
            .with_context(|| format!("building the request to {uri}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .with_context(|| format!("POST {uri}"))?;
            let status = resp.status().as_u16();
            let request_id = resp
                .headers()
                .get("x-tally-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            let mut chunks = 0usize;
            let mut aborted = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.with_context(|| format!("reading the answer of {uri}"))?;
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                    chunks += 1;
                    if call.abort_after_chunks.is_some_and(|n| chunks >= n) {
                        // Hang up mid-stream, as a user closing the tab does.
                        aborted = true;
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(Reply {
                status,
                request_id,
                body: Bytes::from(bytes),
                aborted,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("POST {uri} took longer than {REQUEST_TIMEOUT:?}"))?
    }
}

/// What the workload saw, from the client's side.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outcome {
    /// Requests sent through the gateway (client retries included).
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    /// Refused by a policy rule, per lane.
    pub(crate) denied_rate_limit: Vec<String>,
    pub(crate) denied_budget: Vec<String>,
    pub(crate) denied_access: Vec<String>,
    /// Refusals nobody planned (none expected).
    pub(crate) denied_other: u64,
    /// Streams the client hung up on.
    pub(crate) aborted: u64,
    /// Answered with an upstream error after the gateway's retries.
    pub(crate) upstream_errors: u64,
    /// Client-side retries after an upstream error.
    pub(crate) client_retries: u64,
    /// Requests sent straight to the provider with [`BYPASS_KEY`].
    pub(crate) bypass: u64,
}

/// The independent traffic (sent concurrently) and the lanes whose order matters.
pub(crate) struct Plan {
    pub(crate) mixed: Vec<Call>,
    pub(crate) rate_limited: Vec<Call>,
    pub(crate) budget: Vec<Call>,
    pub(crate) access: Vec<Call>,
    pub(crate) bypass: Vec<Call>,
}

impl Plan {
    /// Requests in the plan, bypass included (client retries come on top).
    pub(crate) fn len(&self) -> usize {
        self.mixed.len()
            + self.rate_limited.len()
            + self.budget.len()
            + self.access.len()
            + self.bypass.len()
    }
}

const TOPICS: [&str; 12] = [
    "Summarize the incident report for the checkout outage",
    "Draft a reply to a customer asking about a refund",
    "Translate the release notes into French",
    "Explain the difference between a mutex and a semaphore",
    "Write a haiku about distributed systems",
    "List three risks in the Q3 migration plan",
    "Classify this ticket: my invoice shows a double charge",
    "Suggest a name for an internal metrics dashboard",
    "Rewrite this sentence to be more concise: we are going to be doing the thing",
    "What questions should I ask in a design review?",
    "Give an example of a SQL window function",
    "Outline a blog post about reducing LLM costs",
];

/// A long, fixed system prompt (over 1,024 tokens), so repeated calls hit the
/// provider's prompt cache.
fn long_system_prompt() -> String {
    let rule = "Always answer in the company's voice: short sentences, no jargon, cite the \
                policy section you rely on, never promise delivery dates, and escalate any \
                legal question to the legal team with the ticket number. ";
    let mut s = String::from("You are the support assistant of Acme Corp. ");
    for i in 0..24 {
        s.push_str(&format!("Policy section {i}: "));
        s.push_str(rule);
    }
    s
}

/// The demo's workload.
pub(crate) fn plan() -> Plan {
    let mut mixed = Vec::new();
    for (i, topic) in TOPICS.iter().enumerate() {
        let prompt = format!("{topic} (ticket {i})");
        let web = "dev-acme-web";
        mixed.push(Call::openai_chat(web, "gpt-4o-mini", &prompt, false));
        mixed.push(Call::openai_chat(
            web,
            "gpt-4o-mini",
            &format!("{prompt}, streaming"),
            true,
        ));
        mixed.push(Call::anthropic("dev-acme-batch", &prompt, i % 2 == 0));
        mixed.push(Call::gemini("dev-acme-web", &prompt, i % 3 == 0));
        if i % 2 == 0 {
            mixed.push(Call::openai_chat(
                "dev-hobby-1",
                "gpt-4o-mini",
                &format!("hobby: {prompt}"),
                i % 4 == 0,
            ));
        }
        if i % 3 == 0 {
            mixed.push(Call {
                wire: Wire::OpenAi,
                key: "dev-acme-batch",
                path: "/v1/embeddings".to_owned(),
                body: json!({"model": "text-embedding-3-small", "input": [prompt.clone(), topic.to_string()]}),
                headers: Vec::new(),
                abort_after_chunks: None,
            });
        }
        if i % 2 == 1 {
            mixed.push(Call::openai_chat(
                "dev-acme-batch",
                REPRICED_MODEL,
                &format!("nightly batch: {prompt}"),
                false,
            ));
        }
    }
    // Long shared prefix: the provider serves most of it from its prompt cache.
    let system = long_system_prompt();
    for i in 0..6 {
        let mut call = Call::openai_chat("dev-acme-web", CACHE_MODEL, "", false);
        call.body["messages"] = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Customer question {i}: where is my order?")},
        ]);
        mixed.push(call);
    }
    // Streams whose reader goes away after a few chunks (legacy completions: a plain
    // prompt, so both sides count its input the same way).
    for i in 0..5 {
        mixed.push(Call {
            wire: Wire::OpenAi,
            key: "dev-acme-web",
            path: "/v1/completions".to_owned(),
            body: json!({
                "model": ABORT_MODEL,
                "prompt": format!("Write a long product description for item {i} of the autumn catalogue"),
                "max_tokens": 400,
                "stream": true,
            }),
            headers: vec![("x-sim-output-tokens", "300".to_owned())],
            abort_after_chunks: Some(4),
        });
    }

    // One key, one burst: 18 requests against 12 per minute.
    let rate_limited = (0..18)
        .map(|i| {
            Call::openai_chat(
                "dev-search-api",
                "gpt-4o-mini",
                &format!("Rewrite the search query #{i} for recall"),
                false,
            )
        })
        .collect();
    // gpt-4o calls of 300 output tokens (their max, so each reserves what it will use)
    // against a $0.02 daily budget.
    let budget = (0..12)
        .map(|i| {
            let mut call = Call::openai_chat(
                "dev-labs-research",
                "gpt-4o",
                &format!("Analyse experiment run {i} and propose the next hypothesis"),
                false,
            )
            .with_header("x-sim-output-tokens", "300");
            call.body["max_tokens"] = json!(300);
            call
        })
        .collect();
    // Models the hobby plan does not include.
    let access = (0..3)
        .map(|i| {
            Call::openai_chat(
                "dev-hobby-1",
                "gpt-4o",
                &format!("hobby project idea {i}"),
                false,
            )
        })
        .collect();
    // Someone's notebook calling the provider directly with its own key.
    let bypass = (0..4)
        .map(|i| {
            let mut c = Call::openai_chat(
                BYPASS_KEY,
                "gpt-4o-mini",
                &format!("notebook cell {i}: summarize the dataset"),
                false,
            );
            c.key = BYPASS_KEY;
            c
        })
        .collect();
    Plan {
        mixed,
        rate_limited,
        budget,
        access,
        bypass,
    }
}

/// Send the plan: the ordered lanes one request at a time, the rest `CONCURRENCY` at a
/// time, and the bypass calls straight to the provider at `simulator`. `tick` is called
/// after every request.
pub(crate) async fn run(
    http: &Http,
    proxy: &str,
    simulator: &str,
    plan: Plan,
    tick: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Outcome> {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn_lane = |calls: Vec<Call>, lane: Lane, workers: usize| {
        let queue = Arc::new(Mutex::new(calls.into_iter()));
        for _ in 0..workers {
            let (http, outcome, tick, queue) =
                (http.clone(), outcome.clone(), tick.clone(), queue.clone());
            let proxy = proxy.to_owned();
            tasks.spawn(async move {
                loop {
                    let next = queue.lock().await.next();
                    let Some(call) = next else { break };
                    let reply = send_with_client_retry(&http, &proxy, &call, &outcome).await?;
                    record(&outcome, &reply, lane).await;
                    tick(lane.label());
                }
                Ok::<_, anyhow::Error>(())
            });
        }
    };
    spawn_lane(plan.mixed, Lane::Mixed, CONCURRENCY);
    spawn_lane(plan.rate_limited, Lane::RateLimited, 1);
    spawn_lane(plan.budget, Lane::Budget, 1);
    spawn_lane(plan.access, Lane::Access, 1);
    while let Some(done) = tasks.join_next().await {
        done.context("a workload task panicked")??;
    }
    for call in &plan.bypass {
        let reply = http.send(simulator, call).await?;
        if reply.status == 200 {
            outcome.lock().await.bypass += 1;
        }
        tick("bypass traffic");
    }
    let out = outcome.lock().await.clone();
    Ok(out)
}

/// The part of the workload a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Mixed,
    RateLimited,
    Budget,
    Access,
}

impl Lane {
    fn label(self) -> &'static str {
        match self {
            Lane::Mixed => "mixed traffic",
            Lane::RateLimited => "rate-limited burst",
            Lane::Budget => "budget",
            Lane::Access => "access rule",
        }
    }
}

/// Send `call`; on an upstream error (5xx) send it once more with the retry count header
/// the official SDKs add.
async fn send_with_client_retry(
    http: &Http,
    proxy: &str,
    call: &Call,
    outcome: &Mutex<Outcome>,
) -> Result<Reply> {
    let reply = http.send(proxy, call).await?;
    outcome.lock().await.sent += 1;
    if reply.status < 500 {
        return Ok(reply);
    }
    {
        let mut o = outcome.lock().await;
        o.upstream_errors += 1;
        o.client_retries += 1;
    }
    let retry = call.clone().with_header("x-stainless-retry-count", "1");
    let reply = http.send(proxy, &retry).await?;
    {
        let mut o = outcome.lock().await;
        o.sent += 1;
        if reply.status >= 500 {
            o.upstream_errors += 1;
        }
    }
    Ok(reply)
}

async fn record(outcome: &Mutex<Outcome>, reply: &Reply, lane: Lane) {
    let mut o = outcome.lock().await;
    if reply.aborted {
        o.aborted += 1;
    } else if reply.status == 200 {
        o.ok += 1;
    }
    if reply.denied() {
        let id = reply.request_id.clone().unwrap_or_default();
        match lane {
            Lane::RateLimited => o.denied_rate_limit.push(id),
            Lane::Budget => o.denied_budget.push(id),
            Lane::Access => o.denied_access.push(id),
            Lane::Mixed => o.denied_other += 1,
        }
    }
}
