//! The Gemini `generateContent` wire format: request reading, usage extraction from
//! `GenerateContentResponse` bodies (single, JSON-array stream) and SSE streams, and
//! Google-shaped errors. Must not know other providers' formats.
//!
//! Field semantics relied on (Gemini API reference, `UsageMetadata`):
//! - `promptTokenCount` includes `cachedContentTokenCount` (the cached part of the
//!   prompt is still counted in the effective prompt size);
//! - `thoughtsTokenCount` is NOT part of `candidatesTokenCount`; and
//!   `toolUsePromptTokenCount` is NOT part of `promptTokenCount`:
//!   `totalTokenCount = prompt + toolUsePrompt + candidates + thoughts`. Both extras are
//!   billed (tool-use prompt as input, thoughts as output), so we add them in;
//! - per-modality `*TokensDetails` lists of `{modality, tokenCount}` give audio figures;
//! - proto3 JSON omits zero-valued fields: a present `usageMetadata` with a missing count
//!   means zero, while a missing `usageMetadata` means unknown.
//!
//! Streaming: every chunk may carry `usageMetadata`, each a snapshot of the totals so far —
//! the latest one wins; final once a candidate has a `finishReason` (or the prompt was
//! blocked).

use serde_json::{Value, json};
use tally_events::{Provider, Route, TokenCounts};

use super::estimate::{InputText, tokenizer_for};
use super::json::{count_any, get_any, str_field};
use super::{Endpoint, ProviderError, RequestInfo, SseEvent, StreamState, UsageReport};

pub(super) fn inspect(endpoint: &Endpoint, v: &Value) -> Result<RequestInfo, ProviderError> {
    let model = endpoint.model_in_path.clone();
    let config = get_any(v, &["generationConfig", "generation_config"]);
    let cap = config
        .and_then(|c| get_any(c, &["maxOutputTokens", "max_output_tokens"]))
        .map(|n| {
            super::json::as_count(n).ok_or(ProviderError::RequestInvalidField {
                field: "generationConfig.maxOutputTokens",
                expected: "a non-negative integer",
            })
        })
        .transpose()?;
    let candidates = config
        .map(|c| count_any(c, &["candidateCount", "candidate_count"]))
        .unwrap_or(0)
        .max(1);
    let estimated_input_tokens = if endpoint.route == Route::CountTokens {
        0 // token counting is free
    } else {
        let mut t = InputText::default();
        if let Some(sys) = get_any(v, &["systemInstruction", "system_instruction"]) {
            t.message();
            parts_input(sys, &mut t);
        }
        for c in v
            .get("contents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.message();
            parts_input(c, &mut t);
        }
        for tool in v
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            t.push_json(tool);
        }
        t.estimate(tokenizer_for(Provider::Gemini, model.as_deref()))
    };
    Ok(RequestInfo {
        model,
        stream: endpoint.streaming_by_path,
        include_usage_requested: false,
        max_output_tokens: cap.map(|c| c.saturating_mul(candidates)),
        estimated_input_tokens,
    })
}

fn parts_input(content: &Value, t: &mut InputText) {
    for p in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(text) = str_field(p, "text") {
            t.push(text);
        } else if get_any(p, &["inlineData", "inline_data", "fileData", "file_data"]).is_some() {
            t.media();
        } else if let Some(call) = get_any(p, &["functionCall", "function_call"]) {
            t.push(str_field(call, "name").unwrap_or(""));
            if let Some(args) = call.get("args") {
                t.push_json(args);
            }
        } else if let Some(resp) = get_any(p, &["functionResponse", "function_response"]) {
            t.push_json(resp);
        } else if let Some(code) = get_any(p, &["executableCode", "executable_code"]) {
            t.push(str_field(code, "code").unwrap_or(""));
        } else if let Some(out) = get_any(p, &["codeExecutionResult", "code_execution_result"]) {
            t.push(str_field(out, "output").unwrap_or(""));
        }
    }
}

/// Sum of `tokenCount` over the entries of a `*TokensDetails` list with `modality`.
fn modality_tokens(um: &Value, keys: &[&str], modality: &str) -> u64 {
    get_any(um, keys)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| str_field(d, "modality") == Some(modality))
        .map(|d| count_any(d, &["tokenCount", "token_count"]))
        .fold(0, u64::saturating_add)
}

pub(super) fn normalize(um: &Value) -> TokenCounts {
    let prompt = count_any(um, &["promptTokenCount", "prompt_token_count"]);
    let tool_prompt = count_any(
        um,
        &["toolUsePromptTokenCount", "tool_use_prompt_token_count"],
    );
    let candidates = count_any(um, &["candidatesTokenCount", "candidates_token_count"]);
    let thoughts = count_any(um, &["thoughtsTokenCount", "thoughts_token_count"]);
    TokenCounts {
        input_tokens: prompt.saturating_add(tool_prompt),
        cached_input_tokens: count_any(
            um,
            &["cachedContentTokenCount", "cached_content_token_count"],
        ),
        cache_write_tokens: 0,
        output_tokens: candidates.saturating_add(thoughts),
        reasoning_tokens: thoughts,
        audio_input_tokens: modality_tokens(
            um,
            &["promptTokensDetails", "prompt_tokens_details"],
            "AUDIO",
        )
        .saturating_add(modality_tokens(
            um,
            &[
                "toolUsePromptTokensDetails",
                "tool_use_prompt_tokens_details",
            ],
            "AUDIO",
        )),
        audio_output_tokens: modality_tokens(
            um,
            &["candidatesTokensDetails", "candidates_tokens_details"],
            "AUDIO",
        ),
    }
}

/// Applies one `GenerateContentResponse` (a whole body or one stream chunk).
fn apply_chunk(s: &mut StreamState, v: &Value) {
    s.set_ids(str_field(v, "modelVersion"), str_field(v, "responseId"));
    for c in v
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if c.get("finishReason").is_some_and(|r| !r.is_null()) {
            s.finished = true;
        }
        let parts = c.get("content").and_then(|x| x.get("parts"));
        for p in parts.and_then(Value::as_array).into_iter().flatten() {
            s.push_text(str_field(p, "text").unwrap_or(""));
            if let Some(call) = p.get("functionCall") {
                s.push_text(str_field(call, "name").unwrap_or(""));
                if let Some(args) = call.get("args") {
                    s.push_text(&args.to_string());
                }
            }
        }
    }
    if v.get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
    {
        s.finished = true;
    }
    if let Some(um) = v.get("usageMetadata").filter(|u| u.is_object()) {
        s.tokens = normalize(um);
        s.input_reported = true;
        if s.finished {
            s.complete = true;
        }
    }
}

pub(super) fn usage_from_value(v: &Value) -> Result<UsageReport, ProviderError> {
    let chunks: Vec<&Value> = match v {
        Value::Object(_) => vec![v],
        Value::Array(items) => items.iter().filter(|i| i.is_object()).collect(),
        _ => return Err(ProviderError::ResponseNotObject),
    };
    let mut s = StreamState::default();
    for chunk in chunks {
        apply_chunk(&mut s, chunk);
    }
    Ok(UsageReport {
        tokens: s.tokens,
        model_served: s.model_served,
        upstream_request_id: s.upstream_request_id,
        // A whole body: its latest usage is final.
        complete: s.input_reported,
        input_reported: s.input_reported,
    })
}

pub(super) fn on_event(s: &mut StreamState, ev: &SseEvent) {
    let Some(data) = ev.data.as_deref() else {
        return;
    };
    if let Ok(v) = serde_json::from_str::<Value>(data)
        && v.is_object()
    {
        apply_chunk(s, &v);
    }
}

/// The `google.rpc.Code` name Google APIs pair with an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500.. => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    }
}

pub(super) fn error_value(status: u16, code: &str, message: &str) -> Value {
    json!({
        "error": {
            "code": status,
            "message": message,
            "status": status_name(status),
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": code,
                "domain": "tally",
            }],
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_names() {
        assert_eq!(status_name(400), "INVALID_ARGUMENT");
        assert_eq!(status_name(401), "UNAUTHENTICATED");
        assert_eq!(status_name(403), "PERMISSION_DENIED");
        assert_eq!(status_name(429), "RESOURCE_EXHAUSTED");
        assert_eq!(status_name(500), "INTERNAL");
        assert_eq!(status_name(503), "UNAVAILABLE");
    }

    #[test]
    fn thoughts_and_tool_prompt_are_added_not_assumed_inside() {
        let um = json!({
            "promptTokenCount": 151, "candidatesTokenCount": 1089,
            "toolUsePromptTokenCount": 18329, "thoughtsTokenCount": 1120,
            "totalTokenCount": 20689
        });
        let t = normalize(&um);
        assert_eq!(t.input_tokens, 151 + 18329);
        assert_eq!(t.output_tokens, 1089 + 1120);
        assert_eq!(t.reasoning_tokens, 1120);
        assert_eq!(t.total(), 20689);
    }
}
