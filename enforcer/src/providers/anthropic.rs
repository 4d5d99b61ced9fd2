//! The Anthropic Messages wire format: request reading, usage extraction from message
//! bodies and event streams, and Anthropic-shaped errors. Must not know other providers'
//! formats, and must never add up streamed usage snapshots.
//!
//! Field semantics relied on (Anthropic API reference, streaming guide):
//! - `usage.input_tokens` EXCLUDES cache reads and writes: total input is
//!   `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`;
//!   `cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}` split the
//!   cache writes by TTL; `output_tokens` includes extended-thinking tokens.
//! - Streaming: `message_start.message.usage` carries input and cache figures (and a
//!   provisional `output_tokens`); each `message_delta.usage` carries CUMULATIVE figures —
//!   the latest value of every field present replaces the earlier one, never summed.
//! - A mid-stream failure arrives as `event: error` with `{"type":"error","error":{…}}`.

use serde_json::{Value, json};
use tally_events::{Provider, Route, TokenCounts};

use super::estimate::{InputText, tokenizer_for};
use super::json::{as_count, count, str_field};
use super::{
    AnthropicRaw, Endpoint, ProviderError, RequestInfo, SseEvent, StreamState, UsageReport,
    opt_bool, opt_count, opt_str,
};

pub(super) fn inspect(endpoint: &Endpoint, v: &Value) -> Result<RequestInfo, ProviderError> {
    let model = opt_str(v, "model")?;
    let stream = opt_bool(v, "stream")?.unwrap_or(false);
    let max_output_tokens = opt_count(v, "max_tokens")?;
    let estimated_input_tokens = if endpoint.route == Route::CountTokens {
        0 // token counting is free
    } else {
        let mut t = InputText::default();
        match v.get("system") {
            Some(Value::String(s)) => t.push(s),
            Some(Value::Array(blocks)) => blocks.iter().for_each(|b| block_input(b, &mut t)),
            _ => {}
        }
        for m in v
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.message();
            match m.get("content") {
                Some(Value::String(s)) => t.push(s),
                Some(Value::Array(blocks)) => blocks.iter().for_each(|b| block_input(b, &mut t)),
                _ => {}
            }
        }
        for tool in v
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.push_json(tool);
        }
        t.estimate(tokenizer_for(Provider::Anthropic, model.as_deref()))
    };
    Ok(RequestInfo {
        model,
        stream: stream && endpoint.route == Route::Messages,
        include_usage_requested: false,
        max_output_tokens: if endpoint.route == Route::Messages {
            max_output_tokens
        } else {
            None
        },
        estimated_input_tokens,
    })
}

fn block_input(b: &Value, t: &mut InputText) {
    match str_field(b, "type") {
        Some("text") => t.push(str_field(b, "text").unwrap_or("")),
        Some("thinking") => t.push(str_field(b, "thinking").unwrap_or("")),
        Some("tool_use" | "server_tool_use") => {
            t.push(str_field(b, "name").unwrap_or(""));
            if let Some(input) = b.get("input") {
                t.push_json(input);
            }
        }
        Some("image") => t.media(),
        Some("document") => match b.get("source") {
            Some(src) if str_field(src, "type") == Some("text") => {
                t.push(str_field(src, "data").unwrap_or(""));
            }
            _ => t.media(),
        },
        _ => {
            // tool_result, search_result, web search results…: a string or nested blocks.
            match b.get("content") {
                Some(Value::String(s)) => t.push(s),
                Some(Value::Array(inner)) => inner.iter().for_each(|x| block_input(x, t)),
                _ => t.push(str_field(b, "text").unwrap_or("")),
            }
        }
    }
}

/// Raw Anthropic usage fields from `u`, for the keys present and numeric.
fn read_raw(u: &Value, raw: &mut AnthropicRaw) {
    let get = |k: &str| u.get(k).and_then(as_count);
    if let Some(n) = get("input_tokens") {
        raw.input = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        raw.cache_read = n;
    }
    match get("cache_creation_input_tokens") {
        Some(n) => raw.cache_creation = n,
        None => {
            if let Some(c) = u.get("cache_creation").filter(|c| c.is_object()) {
                raw.cache_creation = count(c, "ephemeral_5m_input_tokens")
                    .saturating_add(count(c, "ephemeral_1h_input_tokens"));
            }
        }
    }
    if let Some(n) = get("output_tokens") {
        raw.output = n;
    }
    if let Some(d) = u.get("output_tokens_details")
        && let Some(n) = get_in(d, &["thinking_tokens", "reasoning_tokens"])
    {
        raw.thinking = n;
    }
}

fn get_in(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| v.get(*k).and_then(as_count))
}

fn normalize(raw: &AnthropicRaw) -> TokenCounts {
    TokenCounts {
        input_tokens: raw
            .input
            .saturating_add(raw.cache_read)
            .saturating_add(raw.cache_creation),
        cached_input_tokens: raw.cache_read,
        cache_write_tokens: raw.cache_creation,
        output_tokens: raw.output,
        reasoning_tokens: raw.thinking,
        audio_input_tokens: 0,
        audio_output_tokens: 0,
    }
}

pub(super) fn usage_from_value(v: &Value) -> UsageReport {
    let mut report = UsageReport {
        model_served: str_field(v, "model").map(str::to_owned),
        upstream_request_id: str_field(v, "id").map(str::to_owned),
        ..UsageReport::default()
    };
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let mut raw = AnthropicRaw::default();
        read_raw(u, &mut raw);
        report.tokens = normalize(&raw);
        report.complete = true;
        report.input_reported = true;
    }
    report
}

pub(super) fn on_event(s: &mut StreamState, ev: &SseEvent) {
    let Some(data) = ev.data.as_deref() else {
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return;
    };
    let kind = str_field(&v, "type").unwrap_or(ev.event_type()).to_owned();
    match kind.as_str() {
        "message_start" => {
            let Some(msg) = v.get("message") else { return };
            s.set_ids(str_field(msg, "model"), str_field(msg, "id"));
            if let Some(u) = msg.get("usage").filter(|u| u.is_object()) {
                read_raw(u, &mut s.anthropic);
                s.tokens = normalize(&s.anthropic);
                s.input_reported = true;
            }
        }
        "message_delta" => {
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                // Cumulative: the latest value of each field present wins.
                read_raw(u, &mut s.anthropic);
                s.tokens = normalize(&s.anthropic);
                s.delta_usage_seen = true;
                s.input_reported = true;
                let stop = v.get("delta").and_then(|d| d.get("stop_reason"));
                if stop.is_some_and(|r| !r.is_null()) {
                    s.complete = true;
                }
            }
        }
        "message_stop" if s.delta_usage_seen => s.complete = true,
        "content_block_start" => {
            if let Some(b) = v.get("content_block") {
                for key in ["text", "thinking", "name"] {
                    s.push_text(str_field(b, key).unwrap_or(""));
                }
            }
        }
        "content_block_delta" => {
            if let Some(d) = v.get("delta") {
                for key in ["text", "thinking", "partial_json"] {
                    s.push_text(str_field(d, key).unwrap_or(""));
                }
            }
        }
        _ => {}
    }
}

/// Anthropic's documented `error.type` per HTTP status; other 4xx are
/// `invalid_request_error` and other 5xx `api_error`, as Anthropic itself does.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

pub(super) fn error_value(status: u16, message: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": error_type(status), "message": message },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn error_types_follow_anthropic() {
        assert_eq!(error_type(400), "invalid_request_error");
        assert_eq!(error_type(401), "authentication_error");
        assert_eq!(error_type(403), "permission_error");
        assert_eq!(error_type(409), "invalid_request_error");
        assert_eq!(error_type(429), "rate_limit_error");
        assert_eq!(error_type(500), "api_error");
        assert_eq!(error_type(502), "api_error");
        assert_eq!(error_type(529), "overloaded_error");
    }
}
