//! Gemini (Generative Language API v1beta) wire format: `generateContent`,
//! `streamGenerateContent` (`alt=sse` or a streamed JSON array), `countTokens` and the
//! model list; it must not implement transport, faults or token counting itself.
//!
//! `usageMetadata` mirrors the API: `promptTokenCount` (includes
//! `cachedContentTokenCount` when `cachedContent` is set), `candidatesTokenCount` (the
//! answer only), `thoughtsTokenCount` (thinking, reported separately and *not* part of
//! `candidatesTokenCount`), `totalTokenCount = prompt + candidates + thoughts`. Zero
//! counts are omitted, as proto3 JSON does. Every streamed chunk carries
//! `usageMetadata` with running totals; the last chunk has `finishReason`. SSE events
//! are framed with CRLF (`data: …\r\n\r\n`), like the real API.

use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::auth::query_param;
use crate::generate::{self, FNV_OFFSET, Finish, OutputSpec, fnv1a};
use crate::models;
use crate::prompt::{self, Pieces};
use crate::server::{Ctx, RecordUsage, tri};
use crate::sse::{Framing, Step};
use crate::tokens::encoding_for_model;

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
}

fn pieces(req: &Value) -> Pieces<'_> {
    let mut p = Pieces::default();
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        p.push_json(tools);
    }
    for key in ["systemInstruction", "system_instruction", "contents"] {
        if let Some(v) = req.get(key) {
            p.collect(v);
        }
    }
    p
}

/// Token count of an explicit `cachedContent` resource: deterministic from its name
/// (1024–4608), since the simulator does not store caches.
fn cached_content_tokens(req: &Value) -> u64 {
    req.get("cachedContent")
        .or_else(|| req.get("cached_content"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or(0, |name| {
            1024 + (fnv1a(FNV_OFFSET, name.as_bytes()) % 8) * 512
        })
}

/// Thinking ceiling: Gemini 2.5+ thinks unless `thinkingBudget: 0` on a model that
/// allows it; `-1`/absent is dynamic.
fn thinking_max(model: &str, req: &Value) -> u64 {
    if !models::gemini_thinking(model) {
        return 0;
    }
    let budget = req
        .pointer("/generationConfig/thinkingConfig/thinkingBudget")
        .and_then(Value::as_i64);
    match budget {
        Some(0) if models::gemini_thinking_optional(model) => 0,
        Some(b) if b > 0 => (b as u64).min(1024),
        _ => 512,
    }
}

struct Usage {
    prompt: u64,
    cached: u64,
    thoughts: u64,
}

impl Usage {
    fn metadata(&self, candidates: u64) -> Value {
        let mut m = Map::new();
        m.insert("promptTokenCount".into(), json!(self.prompt));
        if candidates > 0 {
            m.insert("candidatesTokenCount".into(), json!(candidates));
        }
        m.insert(
            "totalTokenCount".into(),
            json!(self.prompt + candidates + self.thoughts),
        );
        if self.cached > 0 {
            m.insert("cachedContentTokenCount".into(), json!(self.cached));
        }
        m.insert(
            "promptTokensDetails".into(),
            json!([{"modality": "TEXT", "tokenCount": self.prompt}]),
        );
        if self.thoughts > 0 {
            m.insert("thoughtsTokenCount".into(), json!(self.thoughts));
        }
        Value::Object(m)
    }
}

/// `:generateContent` (`stream == false`) and `:streamGenerateContent`.
pub(crate) async fn generate(mut ctx: Ctx, model: &str, body: &[u8], stream: bool) -> Response {
    let req = tri!(ctx.parse(body));
    if !req.get("contents").is_some_and(Value::is_array) {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let cached = cached_content_tokens(&req);
    let prompt_tokens = prompt::plain_input(enc, &pieces(&req)) + cached;
    let out = generate::plan_output(
        &mut ctx.rng(),
        OutputSpec {
            encoding: enc,
            max_tokens: req
                .pointer("/generationConfig/maxOutputTokens")
                .and_then(Value::as_u64),
            forced: ctx.faults.output_tokens,
            reasoning_max: thinking_max(model, &req),
            visible_reasoning: false,
            chunk_tokens: ctx.chunk_tokens(),
        },
    );
    ctx.set_usage(
        RecordUsage {
            input: prompt_tokens,
            cached,
            cache_write: 0,
            output: out.total_tokens(),
            reasoning: out.reasoning_tokens,
        },
        stream,
    );
    let response_id = ctx.id("");
    ctx.guard.rec.request_id.clone_from(&response_id);
    let usage = Usage {
        prompt: prompt_tokens,
        cached,
        thoughts: out.reasoning_tokens,
    };
    let chunk = |text: &str, finish: Option<Finish>, candidates: u64| -> Value {
        let mut cand = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(finish_reason(f));
        }
        json!({
            "candidates": [cand],
            "usageMetadata": usage.metadata(candidates),
            "modelVersion": served,
            "responseId": response_id
        })
    };
    if !stream {
        let body = chunk(&out.answer.text, Some(out.finish), out.answer.tokens);
        return ctx.json(&body).await;
    }
    let framing = if query_param(ctx.query.as_deref(), "alt") == Some("sse") {
        Framing::DataCrlf
    } else {
        Framing::JsonArray
    };
    let n = out.answer.chunks.len();
    let mut sent = 0;
    let mut steps: Vec<Step> = out
        .answer
        .chunk_texts()
        .enumerate()
        .map(|(i, (text, tokens))| {
            sent += tokens;
            let finish = (i + 1 == n).then_some(out.finish);
            Step::content("", chunk(text, finish, sent).to_string(), tokens)
        })
        .collect();
    if steps.is_empty() {
        steps.push(Step::content(
            "",
            chunk("", Some(out.finish), 0).to_string(),
            0,
        ));
    }
    if let Some(first) = steps.first_mut() {
        first.tokens += out.reasoning_tokens;
    }
    ctx.stream(steps, framing)
}

/// `:countTokens`: `{"totalTokens": n}`. Free, so the served record carries 0 tokens.
pub(crate) async fn count_tokens(mut ctx: Ctx, model: &str, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    // countTokens takes `contents` or a whole `generateContentRequest`.
    let inner = req.get("generateContentRequest").unwrap_or(&req);
    let n = prompt::plain_input(encoding_for_model(model), &pieces(inner));
    ctx.json(
        &json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}),
    )
    .await
}

/// `GET /v1beta/models`.
pub(crate) async fn models(ctx: Ctx) -> Response {
    let data: Vec<Value> = models::listed(&["gemini-"])
        .into_iter()
        .map(|m| {
            json!({
                "name": format!("models/{m}"),
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "countTokens"]
            })
        })
        .collect();
    ctx.json(&json!({"models": data})).await
}
