//! Error bodies in each provider's own format; it must not decide when to fail.
//!
//! * OpenAI: `{"error": {"message", "type", "param", "code"}}`
//! * Anthropic: `{"type": "error", "error": {"type", "message"}, "request_id"}`
//! * Gemini: `{"error": {"code", "message", "status"}}`

use http::StatusCode;
use serde_json::{Value, json};

use crate::record::Provider;

/// The JSON error body for `status` in `provider`'s format.
pub(crate) fn error_body(
    provider: Provider,
    status: StatusCode,
    message: &str,
    request_id: &str,
) -> Value {
    let code = status.as_u16();
    match provider {
        Provider::Openai => {
            let (kind, err_code) = match code {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => (
                    "invalid_request_error",
                    Some("unsupported_country_region_territory"),
                ),
                404 => ("invalid_request_error", Some("model_not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                c if c < 500 => ("invalid_request_error", None),
                _ => ("server_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": err_code}})
        }
        Provider::Anthropic => {
            let kind = match code {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                c if c < 500 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
        }
        Provider::Gemini => {
            let status_name = match code {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                409 => "ABORTED",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                500 => "INTERNAL",
                501 => "UNIMPLEMENTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "UNKNOWN",
            };
            json!({"error": {"code": code, "message": message, "status": status_name}})
        }
    }
}

/// A default message for an injected or generic failure.
pub(crate) fn default_message(provider: Provider, status: StatusCode) -> &'static str {
    match (provider, status.as_u16()) {
        (_, 401) => {
            "Missing API key: provide it in Authorization: Bearer, x-api-key, x-goog-api-key or ?key=."
        }
        (Provider::Openai, 429) => {
            "Rate limit reached for requests (simulated). Please try again in 1s."
        }
        (Provider::Anthropic, 429) => {
            "Number of request tokens has exceeded your per-minute rate limit (simulated)."
        }
        (Provider::Gemini, 429) => "Resource has been exhausted (e.g. check quota) (simulated).",
        (Provider::Anthropic, 529) => "Overloaded (simulated).",
        (Provider::Gemini, 503) => "The model is overloaded. Please try again later (simulated).",
        (_, 500..=599) => "The server had an error while processing your request (simulated).",
        _ => "Simulated failure.",
    }
}
