//! Anthropic Messages wire format (`/v1/messages`, `/v1/messages/count_tokens`, model
//! list); it must not implement transport, faults or token counting itself.
//!
//! Usage semantics mirrored from the Messages API: `input_tokens` excludes
//! `cache_read_input_tokens` and `cache_creation_input_tokens` (total input is their
//! sum); caching happens only up to a `cache_control` breakpoint (on a tool, a system
//! block, a message content block, or top-level), written the first time and read
//! later, for prefixes of at least 1024 tokens. Streaming sends `message_start` (usage
//! with the input/cache fields and a small `output_tokens`), `content_block_start`,
//! `ping`, `content_block_delta`…, `content_block_stop`, `message_delta` (stop reason
//! and cumulative usage: `output_tokens` is the running total, input and cache fields
//! repeated) and `message_stop`. With `thinking` enabled a `thinking` block (streamed as
//! `thinking_delta`s and a `signature_delta`) precedes the text; its tokens are part of
//! `output_tokens`.

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::generate::{self, Finish, Output, OutputSpec};
use crate::models;
use crate::prompt::{self, InputUsage, Pieces};
use crate::server::{Ctx, RecordUsage, tri};
use crate::sse::{Framing, Step};
use crate::tokens::encoding_for_model;

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
    }
}

fn has_cache_control(v: &Value) -> bool {
    v.get("cache_control").is_some_and(|c| !c.is_null())
}

/// Prompt pieces in Anthropic's cache order (tools, system, messages) with the last
/// `cache_control` breakpoint marked.
fn pieces(req: &Value) -> Pieces<'_> {
    let mut p = Pieces::default();
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        for t in tools {
            p.push_json(t);
            if has_cache_control(t) {
                p.mark_cache();
            }
        }
    }
    match req.get("system") {
        Some(Value::Array(blocks)) => {
            for b in blocks {
                p.collect(b);
                if has_cache_control(b) {
                    p.mark_cache();
                }
            }
        }
        Some(s) => p.collect(s),
        None => {}
    }
    if let Some(messages) = req.get("messages").and_then(Value::as_array) {
        for m in messages {
            match m.get("content") {
                Some(Value::Array(blocks)) => {
                    for b in blocks {
                        p.collect(b);
                        if has_cache_control(b) {
                            p.mark_cache();
                        }
                    }
                }
                Some(c) => p.collect(c),
                None => {}
            }
        }
    }
    if has_cache_control(req) {
        p.mark_cache();
    }
    p
}

fn usage(input: &InputUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input.uncached(),
        "cache_creation_input_tokens": input.cache_write,
        "cache_read_input_tokens": input.cached,
        "cache_creation": {"ephemeral_5m_input_tokens": input.cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard"
    })
}

/// Validates the fields every Messages request needs; returns the model.
fn validate<'a>(
    ctx: &mut Ctx,
    req: &'a Value,
    need_max_tokens: bool,
) -> Result<&'a str, Box<Response>> {
    let bad = |ctx: &mut Ctx, msg: &str| Box::new(ctx.take_error(StatusCode::BAD_REQUEST, msg));
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return Err(bad(ctx, "model: Field required"));
    };
    if !req.get("messages").is_some_and(Value::is_array) {
        return Err(bad(ctx, "messages: Field required"));
    }
    if need_max_tokens && req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err(bad(ctx, "max_tokens: Field required"));
    }
    Ok(model)
}

/// Thinking budget ceiling from `thinking` (`enabled` with `budget_tokens`, or
/// `adaptive`).
fn thinking_max(req: &Value) -> u64 {
    match req.pointer("/thinking/type").and_then(Value::as_str) {
        Some("enabled") => req
            .pointer("/thinking/budget_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(1024)
            .min(1024),
        Some("adaptive") => 512,
        _ => 0,
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let model = tri!(validate(&mut ctx, &req, true));
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let input = prompt::anthropic_input(enc, &ctx.shared.cache, &served, &pieces(&req));
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let out = generate::plan_output(
        &mut ctx.rng(),
        OutputSpec {
            encoding: enc,
            max_tokens: req.get("max_tokens").and_then(Value::as_u64),
            forced: ctx.faults.output_tokens,
            reasoning_max: thinking_max(&req),
            visible_reasoning: true,
            chunk_tokens: ctx.chunk_tokens(),
        },
    );
    ctx.set_usage(
        RecordUsage {
            input: input.total,
            cached: input.cached,
            cache_write: input.cache_write,
            output: out.total_tokens(),
            reasoning: out.reasoning_tokens,
        },
        stream,
    );
    let id = ctx.id("msg_");
    let signature = format!("EqQBCkYIARgCKkA{}", ctx.id("sig"));
    if !stream {
        let mut content = Vec::new();
        if let Some(th) = &out.reasoning {
            content.push(json!({"type": "thinking", "thinking": th.text, "signature": signature}));
        }
        content.push(json!({"type": "text", "text": out.answer.text}));
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": served,
            "content": content,
            "stop_reason": stop_reason(out.finish),
            "stop_sequence": null,
            "usage": usage(&input, out.total_tokens())
        });
        return ctx.json(&body).await;
    }
    let steps = stream_steps(&id, &served, &signature, &input, &out);
    ctx.stream(steps, Framing::Named)
}

fn stream_steps(
    id: &str,
    served: &str,
    signature: &str,
    input: &InputUsage,
    out: &Output,
) -> Vec<Step> {
    let ev = |name: &'static str, data: Value| Step::control(name, data.to_string());
    let start_usage = usage(input, out.total_tokens().min(1));
    let mut steps = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": served, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": start_usage
        }}),
    )];
    let mut index = 0u64;
    let mut pinged = false;
    let mut block =
        |steps: &mut Vec<Step>, start: Value, deltas: Vec<Step>, extra: Option<Value>| {
            steps.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            if !pinged {
                steps.push(ev("ping", json!({"type": "ping"})));
                pinged = true;
            }
            steps.extend(deltas);
            if let Some(delta) = extra {
                steps.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            steps.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        };
    if let Some(th) = &out.reasoning {
        let deltas = th
            .chunk_texts()
            .map(|(t, n)| {
                let d = json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": t}});
                Step::content("content_block_delta", d.to_string(), n)
            })
            .collect();
        block(
            &mut steps,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            deltas,
            Some(json!({"type": "signature_delta", "signature": signature})),
        );
    }
    let text_index = u64::from(out.reasoning.is_some());
    let deltas = out
        .answer
        .chunk_texts()
        .map(|(t, n)| {
            let d = json!({"type": "content_block_delta", "index": text_index,
                "delta": {"type": "text_delta", "text": t}});
            Step::content("content_block_delta", d.to_string(), n)
        })
        .collect();
    block(
        &mut steps,
        json!({"type": "text", "text": ""}),
        deltas,
        None,
    );
    steps.push(ev(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason(out.finish), "stop_sequence": null},
        "usage": {
            "input_tokens": input.uncached(),
            "cache_creation_input_tokens": input.cache_write,
            "cache_read_input_tokens": input.cached,
            "output_tokens": out.total_tokens()
        }}),
    ));
    steps.push(ev("message_stop", json!({"type": "message_stop"})));
    steps
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": n}`, the full prompt count
/// (no caching). Free, so the served record carries 0 tokens.
pub(crate) async fn count_tokens(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let model = tri!(validate(&mut ctx, &req, false));
    tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let n = prompt::plain_input(encoding_for_model(model), &pieces(&req));
    ctx.json(&json!({"input_tokens": n})).await
}

/// `GET /v1/models` with an `anthropic-version` header.
pub(crate) async fn models(ctx: Ctx) -> Response {
    let cfg = ctx.config().clone();
    let data: Vec<Value> = models::listed(&["claude-"])
        .into_iter()
        .map(|alias| {
            let id = models::served_model(&cfg, alias);
            json!({"type": "model", "id": id, "display_name": alias, "created_at": "2025-01-01T00:00:00Z"})
        })
        .collect();
    let first = data.first().map(|d| d["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|d| d["id"].clone()).unwrap_or(Value::Null);
    ctx.json(&json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
        .await
}
