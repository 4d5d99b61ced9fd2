//! OpenAI wire format for chat completions, legacy completions, embeddings and the
//! model list (the Responses API lives in `responses`); it must not implement
//! transport, faults or token counting itself.
//!
//! Shapes follow the OpenAI API reference and the official Python SDK's types:
//! `chat.completion` / `chat.completion.chunk` objects, `usage` with
//! `prompt_tokens_details` and `completion_tokens_details`, and with
//! `stream_options.include_usage` a final chunk with `"choices": []` and `usage` while
//! every other chunk carries `"usage": null`.

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::generate::{self, Finish, Output, OutputSpec, Rng};
use crate::models;
use crate::prompt::{self, InputUsage, Pieces};
use crate::server::{Ctx, RecordUsage, tri, unix_secs};
use crate::sse::{Framing, Step};
use crate::tokens::encoding_for_model;

/// Reasoning budget ceiling for an OpenAI `reasoning_effort`.
pub(crate) fn reasoning_max(model: &str, effort: Option<&str>) -> u64 {
    if !models::openai_reasoning(model) {
        return 0;
    }
    match effort {
        Some("none") => 0,
        Some("minimal") => 32,
        Some("low") => 128,
        Some("high") => 2048,
        _ => 512,
    }
}

pub(crate) fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn u64_field(req: &Value, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| req.get(*n).and_then(Value::as_u64))
}

/// The `usage` object of chat completions.
fn chat_usage(input: &InputUsage, out: &Output) -> Value {
    let output = out.total_tokens();
    json!({
        "prompt_tokens": input.total,
        "completion_tokens": output,
        "total_tokens": input.total + output,
        "prompt_tokens_details": {"cached_tokens": input.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": out.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn record_usage(input: &InputUsage, out: &Output) -> RecordUsage {
    RecordUsage {
        input: input.total,
        cached: input.cached,
        cache_write: 0,
        output: out.total_tokens(),
        reasoning: out.reasoning_tokens,
    }
}

/// Required string field or a 400 in OpenAI's words.
fn required_str<'a>(ctx: &mut Ctx, req: &'a Value, name: &str) -> Result<&'a str, Box<Response>> {
    req.get(name).and_then(Value::as_str).ok_or_else(|| {
        Box::new(ctx.take_error(
            StatusCode::BAD_REQUEST,
            &format!("Missing required parameter: '{name}'."),
        ))
    })
}

/// Content steps for `out.answer`, with hidden reasoning tokens carried by the first
/// content step (or by `last` when there is no content).
pub(crate) fn content_steps(
    out: &Output,
    name: &'static str,
    mut render: impl FnMut(&str) -> String,
) -> Vec<Step> {
    let mut steps: Vec<Step> = out
        .answer
        .chunk_texts()
        .map(|(text, tokens)| Step::content(name, render(text), tokens))
        .collect();
    if let Some(first) = steps.first_mut() {
        first.tokens += out.reasoning_tokens;
    }
    steps
}

/// Adds the hidden reasoning to `last` when no content step carried it.
pub(crate) fn reasoning_on_last(steps: &mut [Step], out: &Output, had_content: bool) {
    if !had_content && let Some(last) = steps.last_mut() {
        last.tokens += out.reasoning_tokens;
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let model = tri!(required_str(&mut ctx, &req, "model"));
    let Some(messages) = req.get("messages").filter(|m| m.is_array()) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
        );
    };
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let mut pieces = Pieces::default();
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        pieces.push_json(tools);
    }
    pieces.collect(messages);
    let input = prompt::openai_input(enc, &ctx.shared.cache, &served, &pieces);
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let effort = req.get("reasoning_effort").and_then(Value::as_str);
    let out = generate::plan_output(
        &mut ctx.rng(),
        OutputSpec {
            encoding: enc,
            max_tokens: u64_field(&req, &["max_completion_tokens", "max_tokens"]),
            forced: ctx.faults.output_tokens,
            reasoning_max: reasoning_max(model, effort),
            visible_reasoning: false,
            chunk_tokens: ctx.chunk_tokens(),
        },
    );
    ctx.set_usage(record_usage(&input, &out), stream);
    let id = ctx.id("chatcmpl-");
    let created = unix_secs();
    let fingerprint = "fp_sim0000001";
    let usage = chat_usage(&input, &out);
    if !stream {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": served,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out.answer.text, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish_reason(out.finish)
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": fingerprint
        });
        return ctx.json(&body).await;
    }
    let chunk = |delta: Value, finish: Option<&str>| -> String {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served,
            "service_tier": "default",
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    };
    let mut steps = vec![Step::control(
        "",
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
    )];
    let content = content_steps(&out, "", |t| chunk(json!({"content": t}), None));
    let had_content = !content.is_empty();
    steps.extend(content);
    steps.push(Step::control(
        "",
        chunk(json!({}), Some(finish_reason(out.finish))),
    ));
    reasoning_on_last(&mut steps, &out, had_content);
    if include_usage {
        let last = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served,
            "service_tier": "default",
            "system_fingerprint": fingerprint,
            "choices": [],
            "usage": usage
        });
        steps.push(Step::control("", last.to_string()));
    }
    steps.push(Step::control("", "[DONE]".to_owned()));
    ctx.stream(steps, Framing::Data)
}

/// `POST /v1/completions` (legacy text completions; `max_tokens` defaults to 16).
pub(crate) async fn completions(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let model = tri!(required_str(&mut ctx, &req, "model"));
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let mut pieces = Pieces::default();
    let prompt = req.get("prompt").unwrap_or(&Value::Null);
    pieces.collect(prompt);
    let mut input = prompt::openai_input(enc, &ctx.shared.cache, &served, &pieces);
    input.total += token_array_len(prompt);
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let out = generate::plan_output(
        &mut ctx.rng(),
        OutputSpec {
            encoding: enc,
            max_tokens: Some(u64_field(&req, &["max_tokens"]).unwrap_or(16)),
            forced: ctx.faults.output_tokens,
            reasoning_max: 0,
            visible_reasoning: false,
            chunk_tokens: ctx.chunk_tokens(),
        },
    );
    ctx.set_usage(record_usage(&input, &out), stream);
    let id = ctx.id("cmpl-");
    let created = unix_secs();
    let usage = json!({
        "prompt_tokens": input.total,
        "completion_tokens": out.total_tokens(),
        "total_tokens": input.total + out.total_tokens()
    });
    if !stream {
        let body = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": served,
            "choices": [{"text": out.answer.text, "index": 0, "logprobs": null, "finish_reason": finish_reason(out.finish)}],
            "usage": usage
        });
        return ctx.json(&body).await;
    }
    let chunk = |text: &str, finish: Option<&str>| -> String {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": served,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    };
    let mut steps = content_steps(&out, "", |t| chunk(t, None));
    steps.push(Step::control(
        "",
        chunk("", Some(finish_reason(out.finish))),
    ));
    if include_usage {
        let last = json!({
            "id": id, "object": "text_completion", "created": created, "model": served,
            "choices": [], "usage": usage
        });
        steps.push(Step::control("", last.to_string()));
    }
    steps.push(Step::control("", "[DONE]".to_owned()));
    ctx.stream(steps, Framing::Data)
}

/// Tokens given directly as integer arrays (`[1, 2]` or `[[1, 2], [3]]`).
fn token_array_len(v: &Value) -> u64 {
    match v {
        Value::Array(a) if a.iter().all(Value::is_u64) => a.len() as u64,
        Value::Array(a) => a.iter().map(token_array_len).sum(),
        _ => 0,
    }
}

/// `POST /v1/embeddings`: deterministic unit vectors; `encoding_format: "base64"` (what
/// the Python SDK asks for by default) returns little-endian f32 bytes in base64.
pub(crate) async fn embeddings(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let model = tri!(required_str(&mut ctx, &req, "model"));
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let inputs: Vec<&Value> = match req.get("input") {
        Some(Value::Array(a)) if !a.iter().all(Value::is_u64) => a.iter().collect(),
        Some(v) => vec![v],
        None => {
            return ctx.error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'input'.",
            );
        }
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(if model.contains("3-large") {
            3072
        } else {
            1536
        })
        .clamp(1, 8192) as usize;
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut total = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (i, item) in inputs.iter().enumerate() {
        let (tokens, seed_text) = match item {
            Value::String(s) => (enc.count(s), s.clone()),
            other => (token_array_len(other), other.to_string()),
        };
        total += tokens;
        let vector = unit_vector(
            crate::generate::fnv1a(crate::generate::FNV_OFFSET, seed_text.as_bytes()),
            dims,
        );
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
            Value::String(base64_encode(&bytes))
        } else {
            json!(vector)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    ctx.set_usage(
        RecordUsage {
            input: total,
            ..RecordUsage::default()
        },
        false,
    );
    let body = json!({
        "object": "list",
        "data": data,
        "model": served,
        "usage": {"prompt_tokens": total, "total_tokens": total}
    });
    ctx.json(&body).await
}

fn unit_vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<f32> = (0..dims).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET /v1/models` (OpenAI format).
pub(crate) async fn models(ctx: Ctx) -> Response {
    let data: Vec<Value> = models::listed(&["gpt-", "o1", "o3", "o4", "text-embedding-", "chatgpt-"])
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_715_367_049u64, "owned_by": "system"}))
        .collect();
    ctx.json(&json!({"object": "list", "data": data})).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn vectors_are_unit() {
        let v = unit_vector(1, 16);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
