//! The OpenAI wire format (and OpenAI-compatible servers): chat completions, Responses,
//! legacy completions and embeddings — request reading, the `include_usage` rewrite,
//! usage extraction from bodies and streams, and OpenAI-shaped errors. Must not know other
//! providers' formats, and must not alter a body beyond the one documented rewrite.
//!
//! Field semantics relied on (OpenAI API reference):
//! - Chat/legacy `usage`: `prompt_tokens` includes cached tokens
//!   (`prompt_tokens_details.cached_tokens`) and audio; `completion_tokens` includes
//!   `completion_tokens_details.reasoning_tokens` and audio. Streaming carries usage only
//!   when the request sets `stream_options.include_usage: true`: then one extra chunk with
//!   `choices: []` and the usage comes right before `data: [DONE]`, and every other chunk
//!   has `usage: null`.
//! - Responses `usage`: `input_tokens` (incl. `input_tokens_details.cached_tokens`),
//!   `output_tokens` (incl. `output_tokens_details.reasoning_tokens`); streamed on the
//!   terminal `response.completed`, `response.incomplete` or `response.failed` event, and
//!   a Responses stream has no `[DONE]`.
//! - Embeddings `usage`: `prompt_tokens`, `total_tokens`.

use serde_json::{Value, json};
use tally_events::{Provider, Route, TokenCounts};

use super::estimate::{InputText, tokenizer_for};
use super::json::{count_any, first_token, get_any, object_members, splice, str_field};
use super::{
    Endpoint, EventAction, ProviderError, RequestInfo, SseEvent, StreamState, UsageReport,
    opt_bool, opt_count, opt_str,
};

pub(super) fn inspect(endpoint: &Endpoint, v: &Value) -> Result<RequestInfo, ProviderError> {
    let model = opt_str(v, "model")?;
    let stream = opt_bool(v, "stream")?.unwrap_or(false);
    let include_usage_requested = v
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let choices = opt_count(v, "n")?.unwrap_or(1).max(1);
    let cap = match endpoint.route {
        Route::Chat => match opt_count(v, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => opt_count(v, "max_tokens")?,
        },
        Route::Completions => opt_count(v, "max_tokens")?,
        Route::Responses => opt_count(v, "max_output_tokens")?,
        _ => None,
    };
    let mut text = InputText::default();
    match endpoint.route {
        Route::Chat => chat_input(v, &mut text),
        Route::Responses => responses_input(v, &mut text),
        Route::Completions => prompt_input(v.get("prompt"), &mut text),
        Route::Embeddings => prompt_input(v.get("input"), &mut text),
        _ => {}
    }
    let tokenizer = tokenizer_for(Provider::Openai, model.as_deref());
    Ok(RequestInfo {
        estimated_input_tokens: text.estimate(tokenizer),
        model,
        stream: stream && endpoint.route != Route::Embeddings,
        include_usage_requested,
        max_output_tokens: cap.map(|c| c.saturating_mul(choices)),
    })
}

/// Text of a `content` value: a string, or an array of typed parts.
fn content_input(content: Option<&Value>, t: &mut InputText) {
    match content {
        Some(Value::String(s)) => t.push(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                part_input(p, t);
            }
        }
        _ => {}
    }
}

fn part_input(p: &Value, t: &mut InputText) {
    match str_field(p, "type") {
        Some("text" | "input_text" | "output_text") => t.push(str_field(p, "text").unwrap_or("")),
        Some("refusal") => t.push(str_field(p, "refusal").unwrap_or("")),
        Some(
            "image_url" | "input_image" | "input_audio" | "file" | "input_file" | "image" | "audio",
        ) => t.media(),
        _ => match p {
            Value::String(s) => t.push(s),
            _ => t.push(str_field(p, "text").unwrap_or("")),
        },
    }
}

fn chat_input(v: &Value, t: &mut InputText) {
    if let Some(messages) = v.get("messages").and_then(Value::as_array) {
        for m in messages {
            t.message();
            content_input(m.get("content"), t);
            t.push(str_field(m, "name").unwrap_or(""));
            t.push(str_field(m, "refusal").unwrap_or(""));
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    function_input(call.get("function"), t);
                }
            }
            function_input(m.get("function_call"), t);
        }
    }
    for key in ["tools", "functions"] {
        if let Some(tools) = v.get(key).and_then(Value::as_array) {
            tools.iter().for_each(|tool| t.push_json(tool));
        }
    }
    if let Some(format) = v
        .get("response_format")
        .filter(|f| f.get("json_schema").is_some())
    {
        t.push_json(format);
    }
}

fn function_input(f: Option<&Value>, t: &mut InputText) {
    if let Some(f) = f {
        t.push(str_field(f, "name").unwrap_or(""));
        t.push(str_field(f, "arguments").unwrap_or(""));
    }
}

fn responses_input(v: &Value, t: &mut InputText) {
    if let Some(instructions) = str_field(v, "instructions") {
        t.message();
        t.push(instructions);
    }
    match v.get("input") {
        Some(Value::String(s)) => {
            t.message();
            t.push(s);
        }
        Some(Value::Array(items)) => {
            for item in items {
                match str_field(item, "type") {
                    Some("function_call" | "custom_tool_call") => {
                        t.push(str_field(item, "name").unwrap_or(""));
                        t.push(str_field(item, "arguments").unwrap_or(""));
                        t.push(str_field(item, "input").unwrap_or(""));
                    }
                    Some("function_call_output" | "custom_tool_call_output") => {
                        content_input(item.get("output"), t);
                    }
                    Some("reasoning") => {
                        if let Some(summary) = item.get("summary").and_then(Value::as_array) {
                            summary.iter().for_each(|s| part_input(s, t));
                        }
                    }
                    Some("message") | None => {
                        t.message();
                        content_input(item.get("content"), t);
                    }
                    Some(_) => {}
                }
            }
        }
        _ => {}
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        tools.iter().for_each(|tool| t.push_json(tool));
    }
    if let Some(format) = v.get("text").and_then(|x| x.get("format"))
        && str_field(format, "type") == Some("json_schema")
    {
        t.push_json(format);
    }
}

/// Legacy completions `prompt` / embeddings `input`: a string, strings, token ids, or
/// arrays of token ids (counted as given).
fn prompt_input(p: Option<&Value>, t: &mut InputText) {
    match p {
        Some(Value::String(s)) => t.push(s),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => t.push(s),
                    Value::Number(_) => t.pre_tokenized = t.pre_tokenized.saturating_add(1),
                    Value::Array(ids) => {
                        t.pre_tokenized = t.pre_tokenized.saturating_add(ids.len() as u64);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Normalizes an OpenAI `usage` object, chat (`prompt_tokens`…) or Responses
/// (`input_tokens`…) naming; compatible servers mix them, so both are read.
pub(super) fn normalize_usage(u: &Value) -> TokenCounts {
    let input_details = get_any(u, &["prompt_tokens_details", "input_tokens_details"]);
    let output_details = get_any(u, &["completion_tokens_details", "output_tokens_details"]);
    let detail = |d: Option<&Value>, keys: &[&str]| d.map_or(0, |d| count_any(d, keys));
    TokenCounts {
        input_tokens: count_any(u, &["prompt_tokens", "input_tokens"]),
        cached_input_tokens: detail(input_details, &["cached_tokens"]),
        cache_write_tokens: detail(
            input_details,
            &["cache_write_tokens", "cache_creation_tokens"],
        ),
        output_tokens: count_any(u, &["completion_tokens", "output_tokens"]),
        reasoning_tokens: detail(output_details, &["reasoning_tokens"]),
        audio_input_tokens: detail(input_details, &["audio_tokens"]),
        audio_output_tokens: detail(output_details, &["audio_tokens"]),
    }
}

/// Usage of a chat, legacy completions, embeddings or Responses body (all carry a
/// top-level `usage`, `model` and `id`).
pub(super) fn usage_from_value(v: &Value) -> UsageReport {
    let mut report = UsageReport {
        model_served: str_field(v, "model").map(str::to_owned),
        upstream_request_id: str_field(v, "id").map(str::to_owned),
        ..UsageReport::default()
    };
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        report.tokens = normalize_usage(u);
        report.complete = true;
        report.input_reported = true;
    }
    report
}

/// One chat/legacy-completions stream event.
pub(super) fn on_chat_event(s: &mut StreamState, ev: &SseEvent, strip: bool) -> EventAction {
    let Some(data) = ev.data.as_deref() else {
        return EventAction::Forward;
    };
    if data.trim() == "[DONE]" {
        return EventAction::Forward;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return EventAction::Forward;
    };
    s.set_ids(str_field(&v, "model"), str_field(&v, "id"));
    let choices = v.get("choices").and_then(Value::as_array);
    let mut finished = false;
    for c in choices.into_iter().flatten() {
        finished |= c.get("finish_reason").is_some_and(|f| !f.is_null());
        // Legacy completions stream `text`; chat streams a `delta`.
        s.push_text(str_field(c, "text").unwrap_or(""));
        if let Some(d) = c.get("delta") {
            for key in ["content", "refusal", "reasoning_content", "reasoning"] {
                s.push_text(str_field(d, key).unwrap_or(""));
            }
            for call in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(f) = call.get("function") {
                    s.push_text(str_field(f, "name").unwrap_or(""));
                    s.push_text(str_field(f, "arguments").unwrap_or(""));
                }
            }
            if let Some(f) = d.get("function_call") {
                s.push_text(str_field(f, "arguments").unwrap_or(""));
            }
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        s.tokens = normalize_usage(u);
        s.input_reported = true;
        let usage_only = choices.is_none_or(|c| c.is_empty());
        // The documented final chunk is usage-only; some compatible servers put the final
        // usage on the chunk carrying `finish_reason` instead.
        if usage_only || finished {
            s.complete = true;
        }
        if strip && usage_only {
            return EventAction::Drop;
        }
    }
    EventAction::Forward
}

/// One Responses API stream event.
pub(super) fn on_responses_event(s: &mut StreamState, ev: &SseEvent) {
    let Some(data) = ev.data.as_deref() else {
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return;
    };
    let kind = str_field(&v, "type").unwrap_or(ev.event_type()).to_owned();
    let response = v.get("response");
    if let Some(r) = response {
        s.set_ids(str_field(r, "model"), str_field(r, "id"));
    }
    match kind.as_str() {
        "response.completed" | "response.incomplete" | "response.failed" => {
            if let Some(u) = response
                .and_then(|r| r.get("usage"))
                .filter(|u| u.is_object())
            {
                s.tokens = normalize_usage(u);
                s.complete = true;
                s.input_reported = true;
            }
        }
        k if k.ends_with(".delta")
            && !k.ends_with("audio.delta")
            && !k.contains("partial_image") =>
        {
            s.push_text(str_field(&v, "delta").unwrap_or(""));
        }
        _ => {}
    }
}

/// Sets `stream_options.include_usage` to true, touching nothing else: inserts a member
/// when `stream_options` is absent, replaces a `null` one, or sets the flag inside an
/// existing object. `None` when `stream_options` has another type (the upstream will
/// reject the request anyway) or the body is not an object.
pub(super) fn force_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let open = first_token(body);
    let (members, _) = object_members(body, open)?;
    let Some(opts) = members.iter().rev().find(|m| m.key == "stream_options") else {
        let sep = if members.is_empty() { "" } else { "," };
        let member = format!("\"stream_options\":{{\"include_usage\":true}}{sep}");
        return splice(body, open + 1, open + 1, member.as_bytes());
    };
    match body.get(opts.value_start)? {
        b'n' => splice(
            body,
            opts.value_start,
            opts.value_end,
            br#"{"include_usage":true}"#,
        ),
        b'{' => {
            let (inner, _) = object_members(body, opts.value_start)?;
            match inner.iter().rev().find(|m| m.key == "include_usage") {
                Some(flag) => splice(body, flag.value_start, flag.value_end, b"true"),
                None => {
                    let sep = if inner.is_empty() { "" } else { "," };
                    let member = format!("\"include_usage\":true{sep}");
                    let at = opts.value_start + 1;
                    splice(body, at, at, member.as_bytes())
                }
            }
        }
        _ => None,
    }
}

/// OpenAI's own `type` values: `invalid_request_error` for 4xx (OpenAI uses it for 401,
/// 403 and 404 too), `insufficient_quota` / `tokens` / `requests` for 429 (budget or quota,
/// token rate, request rate), `server_error` for 5xx.
fn error_type(status: u16, code: &str) -> &'static str {
    match status {
        429 => {
            let c = code.to_ascii_lowercase();
            if c.contains("budget") || c.contains("quota") || c.contains("cap") {
                "insufficient_quota"
            } else if c.contains("token") {
                "tokens"
            } else {
                "requests"
            }
        }
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

pub(super) fn error_value(status: u16, code: &str, message: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type(status, code),
            "param": null,
            "code": code,
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_inserts_member_and_preserves_bytes() {
        let body =
            br#"{"model":"gpt-4o", "stream": true, "messages":[{"role":"user","content":"hi"}]}"#;
        let out = force_include_usage(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o", "stream": true, "messages":[{"role":"user","content":"hi"}]}"#
        );
        assert_eq!(
            force_include_usage(b" {} ").unwrap(),
            br#" {"stream_options":{"include_usage":true}} "#
        );
    }

    #[test]
    fn rewrite_existing_stream_options() {
        let set = |b: &str| String::from_utf8(force_include_usage(b.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            set(r#"{"stream_options":{"include_usage":false,"x":1},"stream":true}"#),
            r#"{"stream_options":{"include_usage":true,"x":1},"stream":true}"#
        );
        assert_eq!(
            set(r#"{"stream_options": {} ,"stream":true}"#),
            r#"{"stream_options": {"include_usage":true} ,"stream":true}"#
        );
        assert_eq!(
            set(r#"{"stream_options": {"continuous_usage_stats": true}}"#),
            r#"{"stream_options": {"include_usage":true,"continuous_usage_stats": true}}"#
        );
        assert_eq!(
            set(r#"{"stream_options":null,"stream":true}"#),
            r#"{"stream_options":{"include_usage":true},"stream":true}"#
        );
        assert!(force_include_usage(br#"{"stream_options":"yes"}"#).is_none());
    }

    #[test]
    fn error_types() {
        assert_eq!(
            error_type(400, "request.invalid_json"),
            "invalid_request_error"
        );
        assert_eq!(error_type(401, "auth.invalid_key"), "invalid_request_error");
        assert_eq!(error_type(429, "budget_exceeded"), "insufficient_quota");
        assert_eq!(error_type(429, "rate_limit.tokens"), "tokens");
        assert_eq!(error_type(429, "rate_limit.requests"), "requests");
        assert_eq!(error_type(502, "upstream.unavailable"), "server_error");
    }
}
