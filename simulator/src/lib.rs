//! Provider simulator: speaks the OpenAI, Anthropic and Gemini wire formats; owns no
//! business logic of tally and must never call a real provider.
//!
//! [`Simulator`] is an axum HTTP server that answers like the providers do, closely
//! enough that the official SDKs work against it unchanged (base URL pointed at it),
//! streaming and not:
//!
//! | provider  | routes |
//! |-----------|--------|
//! | OpenAI    | `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models` |
//! | Anthropic | `POST /v1/messages`, `POST /v1/messages/count_tokens`, `GET /v1/models` (with an `anthropic-version` header) |
//! | Gemini    | `POST /v1beta/models/{model}:generateContent`, `POST /v1beta/models/{model}:streamGenerateContent[?alt=sse]`, `GET /v1beta/models` |
//! | simulator | `GET /_sim/served` (the served record as JSON) |
//! | reports   | OpenAI `GET /v1/organization/usage/{completions,embeddings}`, `GET /v1/organization/costs`; Anthropic `GET /v1/organizations/usage_report/messages`, `GET /v1/organizations/cost_report`; `GET /_sim/reports/gcp-billing.csv` (see [`reports`]) |
//!
//! Everything is deterministic: input tokens are counted with tiktoken ([`count_tokens`]),
//! output text is generated from a seed derived from the request body, and the reported
//! output tokens are exactly the token count of the text sent. Faults (errors, rate
//! limits, latency, aborted streams, malformed payloads) come from [`SimConfig`] or from
//! per-request `x-sim-*` headers (see [Fault headers](#fault-headers)).
//!
//! # Fault headers
//!
//! | header | effect |
//! |--------|--------|
//! | `x-sim-status: N` | fail with status `N` (4xx/5xx) in the provider's error format (`429` adds `retry-after`) |
//! | `x-sim-hang-ms: N` | wait `N` ms before sending the response head |
//! | `x-sim-latency-ms: N` | total latency of a non-streaming response |
//! | `x-sim-ttft-ms: N` | delay before the first streamed content chunk |
//! | `x-sim-chunk-delay-ms: N` | delay between streamed content chunks |
//! | `x-sim-output-tokens: N` | force the visible output to exactly `N` tokens |
//! | `x-sim-fail-after-chunks: N` | stream `N` content chunks, then abort the connection (no final usage) |
//! | `x-sim-invalid: json\|sse` | send a malformed JSON body / malformed SSE framing |
//!
//! # Token accounting
//!
//! * Input: the sum of `count_tokens(model, piece)` over the text pieces of the request
//!   (message/system/instruction contents, plus the compact JSON of `tools` if present).
//!   No per-message overhead is added. Anthropic and Gemini models are counted with
//!   `cl100k_base` as a documented approximation.
//! * Output: generated text made of pieces that are one token each, so the text of every
//!   streamed chunk counts exactly and chunks add up to the reported output tokens.
//! * Reasoning: OpenAI reasoning models and Gemini thinking models report hidden reasoning
//!   tokens (OpenAI inside `completion_tokens`; Gemini separately as `thoughtsTokenCount`,
//!   not inside `candidatesTokenCount`); Claude with `thinking` enabled streams a visible
//!   thinking block whose tokens are part of `output_tokens`.

mod anthropic;
mod auth;
mod cache;
mod config;
mod errors;
mod faults;
mod gemini;
mod generate;
mod models;
mod openai;
mod prompt;
mod record;
pub mod reports;
mod responses;
mod server;
mod sse;
mod tokens;

pub use config::{ConfigError, SimConfig};
pub use record::{Provider, ServedRecord};
pub use reports::{ReportsConfig, api_key_id};
pub use server::{SimHandle, Simulator, spawn};
pub use tokens::{Encoding, count_tokens, encoding_for_model};
