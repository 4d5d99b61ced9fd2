//! Provider adapters: one per wire format (OpenAI, Anthropic, Gemini), behind one API the
//! proxy uses to classify a request path, inspect a request body, rewrite it when tally
//! needs streamed usage, extract normalized token usage from JSON bodies and SSE streams,
//! and answer errors in the provider's own format. Pure logic over bytes: must not do I/O,
//! hold connections, know policies or pricing, or panic on any input (every byte here
//! comes from an untrusted client or upstream).
//!
//! Normalized token figures ([`TokenCounts`]), whatever the provider reports:
//! - `input_tokens`: all input, including cache reads and cache writes (Anthropic's
//!   `input_tokens` excludes both, so we add `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`; Gemini's `toolUsePromptTokenCount` is added too);
//! - `cached_input_tokens`: cache reads; `cache_write_tokens`: cache creation;
//! - `output_tokens`: all output including reasoning/thinking (Gemini reports thoughts
//!   outside `candidatesTokenCount`, so we add `thoughtsTokenCount`);
//! - `reasoning_tokens`, `audio_*`: where the provider reports them.
//!
//! A provider-reported zero is a real zero ([`UsageReport::complete`] is true); a missing
//! usage object is "unknown" (`complete` false), never zero.

mod anthropic;
mod bpe;
pub mod estimate;
mod gemini;
mod json;
mod openai;
pub mod sse;

use http::Method;
use serde_json::Value;
use tally_events::{Provider, Route, TokenCounts, UsageSource};

pub use sse::{SseError, SseEvent, SseParser};

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The wire format. `GET /v1/models` is classified as OpenAI; Anthropic serves the same
    /// path, so the proxy may override the provider from the request headers.
    pub provider: Provider,
    /// The kind of call.
    pub route: Route,
    /// The model named in the path (Gemini `models/{model}:…`, `GET /v1/models/{id}`).
    pub model_in_path: Option<String>,
    /// The path itself asks for a stream (Gemini `:streamGenerateContent`). Its response
    /// is SSE only with `?alt=sse`; without it Gemini streams one JSON array, which
    /// [`usage_from_body`] reads once complete (tell them apart by `content-type`).
    pub streaming_by_path: bool,
}

/// Maps a method and path (a query string, if present, is ignored) to the endpoint it
/// addresses, or `None` for anything tally does not proxy — including paths with `..`,
/// `.` or empty segments, percent-encoding, backslashes, or non-printable bytes, which are
/// refused rather than normalized.
pub fn classify(method: &Method, path: &str) -> Option<Endpoint> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix('/')?;
    if rest.is_empty()
        || !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'\\' | b'#'))
    {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return None;
    }
    let post = *method == Method::POST;
    let get = *method == Method::GET;
    let ep = |provider, route| Endpoint {
        provider,
        route,
        model_in_path: None,
        streaming_by_path: false,
    };
    match segments.as_slice() {
        ["v1", "chat", "completions"] if post => Some(ep(Provider::Openai, Route::Chat)),
        ["v1", "responses"] if post => Some(ep(Provider::Openai, Route::Responses)),
        ["v1", "completions"] if post => Some(ep(Provider::Openai, Route::Completions)),
        ["v1", "embeddings"] if post => Some(ep(Provider::Openai, Route::Embeddings)),
        ["v1", "messages"] if post => Some(ep(Provider::Anthropic, Route::Messages)),
        ["v1", "messages", "count_tokens"] if post => {
            Some(ep(Provider::Anthropic, Route::CountTokens))
        }
        ["v1", "models"] if get => Some(ep(Provider::Openai, Route::Models)),
        ["v1beta", "models"] if get => Some(ep(Provider::Gemini, Route::Models)),
        [version @ ("v1" | "v1beta"), "models", model] if get => {
            let provider = if *version == "v1" {
                Provider::Openai
            } else {
                Provider::Gemini
            };
            valid_model_id(model, true).then(|| Endpoint {
                model_in_path: Some((*model).to_owned()),
                ..ep(provider, Route::Models)
            })
        }
        ["v1" | "v1beta", "models", model_and_method] if post => {
            let (model, method) = model_and_method.rsplit_once(':')?;
            if !valid_model_id(model, false) {
                return None;
            }
            let (route, streaming) = match method {
                "generateContent" => (Route::GenerateContent, false),
                "streamGenerateContent" => (Route::GenerateContent, true),
                "countTokens" => (Route::CountTokens, false),
                _ => return None,
            };
            Some(Endpoint {
                provider: Provider::Gemini,
                route,
                model_in_path: Some(model.to_owned()),
                streaming_by_path: streaming,
            })
        }
        _ => None,
    }
}

/// A model id: starts with a letter or digit, then letters, digits, `.`, `_`, `-` (and `:`
/// for OpenAI fine-tune ids), no `..`, at most 256 bytes.
fn valid_model_id(id: &str, allow_colon: bool) -> bool {
    id.len() <= 256
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && !id.contains("..")
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'-')
                || (allow_colon && b == b':')
        })
}

/// What tally needs to know about a request before forwarding it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The model asked for (body `model`, or the path for Gemini).
    pub model: Option<String>,
    /// The response will be an event stream.
    pub stream: bool,
    /// OpenAI only: the client itself asked for `stream_options.include_usage: true`
    /// (always false for other providers, which report usage in streams unasked).
    pub include_usage_requested: bool,
    /// The most output tokens the request allows (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `generationConfig.maxOutputTokens`),
    /// multiplied by the number of choices/candidates requested when more than one.
    pub max_output_tokens: Option<u64>,
    /// Estimated input tokens (see [`estimate`]); 0 for free endpoints (token counting,
    /// model listings).
    pub estimated_input_tokens: u64,
}

/// A request or response tally cannot read.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request body is not JSON (or not UTF-8).
    #[error("request body is not valid JSON: {0}")]
    RequestInvalidJson(serde_json::Error),
    /// The request body is JSON but not an object.
    #[error("request body must be a JSON object")]
    RequestNotObject,
    /// A field tally relies on has the wrong type.
    #[error("request field `{field}` has the wrong type: expected {expected}")]
    RequestInvalidField {
        field: &'static str,
        expected: &'static str,
    },
    /// The response body is not JSON (or not UTF-8).
    #[error("response body is not valid JSON: {0}")]
    ResponseInvalidJson(serde_json::Error),
    /// The response body is JSON but not of the expected shape.
    #[error("response body must be a JSON object")]
    ResponseNotObject,
}

impl ProviderError {
    /// Stable machine-readable code (part of tally's error contract).
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::RequestInvalidJson(_) => "request.invalid_json",
            ProviderError::RequestNotObject => "request.not_object",
            ProviderError::RequestInvalidField { .. } => "request.invalid_field",
            ProviderError::ResponseInvalidJson(_) => "response.invalid_json",
            ProviderError::ResponseNotObject => "response.not_object",
        }
    }

    /// The HTTP status the proxy should answer with.
    pub fn status(&self) -> u16 {
        match self {
            ProviderError::RequestInvalidJson(_)
            | ProviderError::RequestNotObject
            | ProviderError::RequestInvalidField { .. } => 400,
            ProviderError::ResponseInvalidJson(_) | ProviderError::ResponseNotObject => 502,
        }
    }
}

fn parse_request(body: &[u8]) -> Result<Value, ProviderError> {
    let v: Value = serde_json::from_slice(body).map_err(ProviderError::RequestInvalidJson)?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ProviderError::RequestNotObject)
    }
}

/// `v[field]` as a string; absent or null is `None`, another type is an error.
pub(crate) fn opt_str(v: &Value, field: &'static str) -> Result<Option<String>, ProviderError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProviderError::RequestInvalidField {
            field,
            expected: "a string",
        }),
    }
}

/// `v[field]` as a boolean; absent or null is `None`, another type is an error.
pub(crate) fn opt_bool(v: &Value, field: &'static str) -> Result<Option<bool>, ProviderError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ProviderError::RequestInvalidField {
            field,
            expected: "a boolean",
        }),
    }
}

/// `v[field]` as a non-negative integer; absent or null is `None`, anything else (a
/// negative number, a string…) is an error.
pub(crate) fn opt_count(v: &Value, field: &'static str) -> Result<Option<u64>, ProviderError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(_) => Err(ProviderError::RequestInvalidField {
            field,
            expected: "a non-negative integer",
        }),
    }
}

/// Reads what tally needs from a request body. Bodies of `GET` endpoints (model
/// listings) are not read.
pub fn inspect_request(endpoint: &Endpoint, body: &[u8]) -> Result<RequestInfo, ProviderError> {
    if endpoint.route == Route::Models {
        return Ok(RequestInfo {
            model: endpoint.model_in_path.clone(),
            ..RequestInfo::default()
        });
    }
    let v = parse_request(body)?;
    match endpoint.provider {
        Provider::Anthropic => anthropic::inspect(endpoint, &v),
        Provider::Gemini => gemini::inspect(endpoint, &v),
        Provider::Openai | Provider::Other => openai::inspect(endpoint, &v),
    }
}

/// The body to send upstream when it must differ from the client's, else `None`.
///
/// For OpenAI streaming chat and legacy completions whose client did not ask for
/// `stream_options.include_usage: true`, returns the body with it set (inserted as a new
/// member, or set inside an existing `stream_options`), every other byte unchanged. The
/// caller must then build its [`StreamTracker`] with `strip_usage_chunk = true` so that
/// the extra usage-only chunk never reaches the client.
pub fn prepare_upstream_body(
    endpoint: &Endpoint,
    body: &[u8],
    info: &RequestInfo,
) -> Result<Option<Vec<u8>>, ProviderError> {
    let wants_rewrite = matches!(endpoint.provider, Provider::Openai | Provider::Other)
        && matches!(endpoint.route, Route::Chat | Route::Completions)
        && info.stream
        && !info.include_usage_requested;
    if !wants_rewrite {
        return Ok(None);
    }
    parse_request(body)?;
    Ok(openai::force_include_usage(body))
}

/// Usage found in a response, normalized (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Normalized token figures (zeros when nothing was reported).
    pub tokens: TokenCounts,
    /// The model the provider says served the request.
    pub model_served: Option<String>,
    /// The provider's id for the response (`chatcmpl-…`, `resp_…`, `msg_…`, Gemini
    /// `responseId`).
    pub upstream_request_id: Option<String>,
    /// The provider's final usage was seen; `tokens` are then provider-reported, zeros
    /// included. False when the body or stream carried no (final) usage.
    pub complete: bool,
    /// The input-side figures (`input_tokens`, `cached_input_tokens`,
    /// `cache_write_tokens`) are provider-reported even though `complete` is false (an
    /// Anthropic stream cut after `message_start`, a Gemini stream cut mid-way).
    pub input_reported: bool,
}

/// Usage from a complete (non-streamed) response body. Gemini `:streamGenerateContent`
/// without `alt=sse` answers with a JSON array of chunks; that is accepted here too (the
/// latest `usageMetadata` wins). Endpoints that consume no tokens (token counting, model
/// listings) report zeros as complete.
pub fn usage_from_body(endpoint: &Endpoint, body: &[u8]) -> Result<UsageReport, ProviderError> {
    if matches!(endpoint.route, Route::Models | Route::CountTokens) {
        return Ok(UsageReport {
            complete: true,
            input_reported: true,
            ..UsageReport::default()
        });
    }
    let v: Value = serde_json::from_slice(body).map_err(ProviderError::ResponseInvalidJson)?;
    match endpoint.provider {
        Provider::Gemini => gemini::usage_from_value(&v),
        _ if !v.is_object() => Err(ProviderError::ResponseNotObject),
        Provider::Anthropic => Ok(anthropic::usage_from_value(&v)),
        Provider::Openai | Provider::Other => Ok(openai::usage_from_value(&v)),
    }
}

/// What to do with one upstream SSE event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Send the event's raw bytes to the client unchanged.
    Forward,
    /// Do not send it (only the usage-only chunk tally itself asked for).
    Drop,
}

/// Streamed output text is held up to this many bytes before it is folded (see
/// [`FOLD_TEXT_BYTES`]; only a single event this large reaches it); beyond it only
/// characters are counted (and estimated at 4 characters per token).
pub const MAX_TRACKED_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// Once this much streamed text is held, its tokens up to the last word boundary are
/// counted and the text dropped, so a stream holds at most a few KiB of text however
/// long it runs.
pub const FOLD_TEXT_BYTES: usize = 4 * 1024;

/// Text with no word boundary (CJK, base64) is cut at any character past this size.
pub(crate) const FORCE_FOLD_TEXT_BYTES: usize = 4 * FOLD_TEXT_BYTES;

/// Per-provider raw usage while a stream is read.
#[derive(Debug, Default)]
pub(crate) struct AnthropicRaw {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
    thinking: u64,
}

/// State shared by the per-provider stream readers.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) tokens: TokenCounts,
    pub(crate) complete: bool,
    pub(crate) input_reported: bool,
    pub(crate) model_served: Option<String>,
    pub(crate) upstream_request_id: Option<String>,
    pub(crate) anthropic: AnthropicRaw,
    /// A usage-carrying message_delta was seen (Anthropic).
    pub(crate) delta_usage_seen: bool,
    /// A candidate finished or the prompt was blocked (Gemini).
    pub(crate) finished: bool,
    text: String,
    overflow_chars: u64,
}

impl StreamState {
    pub(crate) fn push_text(&mut self, s: &str) {
        if self.text.len().saturating_add(s.len()) <= MAX_TRACKED_TEXT_BYTES {
            self.text.push_str(s);
        } else {
            self.overflow_chars = self.overflow_chars.saturating_add(s.chars().count() as u64);
        }
    }

    pub(crate) fn set_ids(&mut self, model: Option<&str>, id: Option<&str>) {
        if let Some(m) = model.filter(|m| !m.is_empty())
            && self.model_served.as_deref() != Some(m)
        {
            self.model_served = Some(m.to_owned());
        }
        if let Some(i) = id.filter(|i| !i.is_empty())
            && self.upstream_request_id.is_none()
        {
            self.upstream_request_id = Some(i.to_owned());
        }
    }
}

/// Reads one response stream: accumulates usage and streamed text, and says which events
/// to forward. Create one per upstream response; feed it every event from
/// [`SseParser::push`] and, at the end of the stream, those from
/// [`SseParser::finish_event`] (a final event the upstream did not terminate).
#[derive(Debug)]
pub struct StreamTracker {
    endpoint: Endpoint,
    strip_usage_chunk: bool,
    requested_model: Option<String>,
    estimated_input_tokens: u64,
    state: StreamState,
    /// Output tokens of the streamed text already counted and dropped (see
    /// [`FOLD_TEXT_BYTES`]).
    folded_tokens: u64,
    /// Bytes at the start of the held text already searched for a word boundary, so a
    /// stream without one (CJK, base64) is not rescanned on every event.
    searched: usize,
}

impl StreamTracker {
    /// A tracker for a stream from `endpoint`. `strip_usage_chunk` must be true exactly
    /// when [`prepare_upstream_body`] added `include_usage` for this request.
    pub fn new(endpoint: &Endpoint, strip_usage_chunk: bool) -> Self {
        Self {
            endpoint: endpoint.clone(),
            strip_usage_chunk,
            requested_model: endpoint.model_in_path.clone(),
            estimated_input_tokens: 0,
            state: StreamState::default(),
            folded_tokens: 0,
            searched: 0,
        }
    }

    /// Remembers the request's model and input estimate, used by [`Self::settle`] when
    /// the stream ends without usage.
    pub fn with_request(mut self, info: &RequestInfo) -> Self {
        if info.model.is_some() {
            self.requested_model = info.model.clone();
        }
        self.estimated_input_tokens = info.estimated_input_tokens;
        self
    }

    /// Reads one event; returns whether to forward it. Events that are not JSON, or not
    /// of a known shape, are forwarded untouched and ignored.
    pub fn on_event(&mut self, event: &SseEvent) -> EventAction {
        let action = self.read_event(event);
        if self.state.text.len() >= FOLD_TEXT_BYTES {
            self.fold();
        }
        action
    }

    fn read_event(&mut self, event: &SseEvent) -> EventAction {
        match self.endpoint.provider {
            Provider::Anthropic => {
                anthropic::on_event(&mut self.state, event);
                EventAction::Forward
            }
            Provider::Gemini => {
                gemini::on_event(&mut self.state, event);
                EventAction::Forward
            }
            Provider::Openai | Provider::Other => match self.endpoint.route {
                Route::Responses => {
                    openai::on_responses_event(&mut self.state, event);
                    EventAction::Forward
                }
                _ => openai::on_chat_event(&mut self.state, event, self.strip_usage_chunk),
            },
        }
    }

    /// Whether `event` ends the stream as the provider's SDKs see it (they stop reading
    /// there): OpenAI chat and completions `[DONE]`, the Responses API's final
    /// `response.completed` / `.failed` / `.incomplete`, Anthropic's `message_stop`.
    /// Gemini streams have no such event; they end with the body. Call after
    /// [`Self::on_event`] for the same event.
    pub fn is_terminal(&self, event: &SseEvent) -> bool {
        match self.endpoint.provider {
            Provider::Anthropic => event.event_type() == "message_stop",
            Provider::Gemini => false,
            Provider::Openai | Provider::Other => match self.endpoint.route {
                // Those events (typed in the JSON, not always in `event:`) are the ones
                // that complete the usage; call after `on_event`.
                Route::Responses => self.state.complete,
                _ => event.data.as_deref().is_some_and(|d| d.trim() == "[DONE]"),
            },
        }
    }

    /// Usage so far; `complete` once the provider's final usage was seen.
    pub fn report(&self) -> UsageReport {
        UsageReport {
            tokens: self.state.tokens,
            model_served: self.state.model_served.clone(),
            upstream_request_id: self.state.upstream_request_id.clone(),
            complete: self.state.complete,
            input_reported: self.state.input_reported,
        }
    }

    /// The streamed output text not yet folded into [`Self::estimated_output_tokens`]
    /// (content, refusals, reasoning/thinking text, tool arguments): all of it while
    /// under [`FOLD_TEXT_BYTES`].
    #[cfg(test)]
    pub(crate) fn streamed_text(&self) -> &str {
        &self.state.text
    }

    /// The tokenizer of the model that answers (served, else requested).
    fn output_tokenizer(&self) -> estimate::Tokenizer {
        let model = self
            .state
            .model_served
            .as_deref()
            .or(self.requested_model.as_deref());
        estimate::tokenizer_for(self.endpoint.provider, model)
    }

    /// Count the held text up to its last word boundary, add it to the folded tokens
    /// and drop it. The cut is before the last space that follows a letter or digit:
    /// BPE pre-tokenization starts a new piece there (` word`), so the counts add up to
    /// a count of the whole text (up to rare merges across a cut). Text with no such
    /// boundary is cut at a character boundary once it passes [`FORCE_FOLD_TEXT_BYTES`].
    fn fold(&mut self) {
        let text = &self.state.text;
        // A boundary needs the character before a space: start one character before
        // the part already searched.
        let mut from = self.searched.min(text.len()).saturating_sub(1);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let window = &text[from..];
        let cut = window
            .char_indices()
            .rev()
            .skip(1)
            .find(|&(i, c)| c.is_alphanumeric() && window[i + c.len_utf8()..].starts_with(' '))
            .map(|(i, c)| from + i + c.len_utf8())
            .or_else(|| {
                (text.len() >= FORCE_FOLD_TEXT_BYTES).then(|| {
                    let mut cut = text.len() - FOLD_TEXT_BYTES / 4;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    cut
                })
            });
        let Some(cut) = cut.filter(|&c| c > 0) else {
            self.searched = text.len();
            return;
        };
        let tokens = estimate::count_text(self.output_tokenizer(), &text[..cut]);
        self.folded_tokens = self.folded_tokens.saturating_add(tokens);
        self.state.text.drain(..cut);
        // The cut was the last boundary: what is left holds none.
        self.searched = self.state.text.len();
    }

    /// Estimated output tokens for what was streamed so far: the folded count plus the
    /// text still held, plus characters past [`MAX_TRACKED_TEXT_BYTES`] at 4 per token.
    pub fn estimated_output_tokens(&self) -> u64 {
        self.folded_tokens
            .saturating_add(estimate::count_text(
                self.output_tokenizer(),
                &self.state.text,
            ))
            .saturating_add(self.state.overflow_chars.div_ceil(4))
    }

    /// Estimated output tokens so far for checks while streaming (after every chunk):
    /// folds the held text first, so each check counts at most a few KiB and checking a
    /// stream costs time linear in its length rather than quadratic.
    pub fn running_output_tokens(&mut self) -> u64 {
        self.fold();
        self.estimated_output_tokens()
    }

    /// The figures to record for this stream now: provider-reported when complete;
    /// otherwise provider input (when reported, else the request estimate) with the
    /// larger of reported and estimated output, marked `Mixed` or `Estimated`.
    pub fn settle(&self) -> (TokenCounts, UsageSource) {
        let s = &self.state;
        if s.complete {
            return (s.tokens, UsageSource::ProviderReported);
        }
        let mut tokens = s.tokens;
        tokens.output_tokens = tokens.output_tokens.max(self.estimated_output_tokens());
        if s.input_reported {
            (tokens, UsageSource::Mixed)
        } else {
            tokens.input_tokens = tokens.input_tokens.max(self.estimated_input_tokens);
            (tokens, UsageSource::Estimated)
        }
    }
}

/// HTTP status for the error `type`s below, guessed from a tally error code when no status
/// is given (mid-stream errors), by the words of the code (split at `.`, `_`, `-`…):
/// `request.*` → 400, rate/budget/quota/cap/limit → 429, auth/key → 401,
/// permission/forbidden/access/denied → 403, timeout → 504, overloaded → 529,
/// invalid → 400, anything else → 500.
fn status_for_code(code: &str) -> u16 {
    let c = code.to_ascii_lowercase();
    let words: Vec<&str> = c.split(|ch: char| !ch.is_ascii_alphanumeric()).collect();
    let has = |ws: &[&str]| words.iter().any(|w| ws.contains(w));
    if c.starts_with("request.") {
        400
    } else if has(&[
        "rate",
        "ratelimit",
        "budget",
        "budgets",
        "quota",
        "cap",
        "caps",
        "limit",
        "limits",
    ]) {
        429
    } else if has(&[
        "auth",
        "unauthenticated",
        "unauthorized",
        "authentication",
        "key",
    ]) {
        401
    } else if has(&["permission", "forbidden", "access", "denied"]) {
        403
    } else if has(&["timeout"]) {
        504
    } else if has(&["overloaded"]) {
        529
    } else if has(&["invalid"]) {
        400
    } else {
        500
    }
}

/// An error body in the provider's own JSON format, so SDKs raise their usual errors:
/// - OpenAI `{"error":{"message","type","param":null,"code"}}`;
/// - Anthropic `{"type":"error","error":{"type","message"}}` (no code field exists);
/// - Gemini `{"error":{"code":<status>,"message","status","details":[ErrorInfo]}}`, the
///   tally code carried as `google.rpc.ErrorInfo.reason` with domain `tally`.
pub fn error_body(provider: Provider, status: u16, code: &str, message: &str) -> Vec<u8> {
    let v = match provider {
        Provider::Anthropic => anthropic::error_value(status, message),
        Provider::Gemini => gemini::error_value(status, code, message),
        Provider::Openai | Provider::Other => openai::error_value(status, code, message),
    };
    v.to_string().into_bytes()
}

/// A provider-shaped SSE event that ends a stream with an error, in the form each
/// provider's SDK surfaces as an exception:
/// - Anthropic: `event: error` with `{"type":"error","error":{…}}` — the documented
///   mid-stream error event;
/// - OpenAI: `data: {"error":{…}}` (no event name) — the official SDKs raise `APIError`
///   for any stream data object with an `error` key (openai-python `Stream.__stream__`);
/// - Gemini: `data: {"error":{"code","message","status"}}` — google-genai (Python) raises
///   `APIError` for a stream chunk starting with `{"error":`; the JS SDK only recognises
///   errors sent as bare JSON, so it sees an empty chunk and the stream's end instead.
///
/// The HTTP-like status (and so the error type) is derived from `code`.
pub fn sse_error_event(provider: Provider, code: &str, message: &str) -> Vec<u8> {
    let status = status_for_code(code);
    let (event_line, data) = match provider {
        Provider::Anthropic => (
            Some("error"),
            anthropic::error_value(status, message).to_string(),
        ),
        Provider::Gemini => (None, gemini::error_value(status, code, message).to_string()),
        Provider::Openai | Provider::Other => {
            (None, openai::error_value(status, code, message).to_string())
        }
    };
    let mut out = String::with_capacity(data.len() + 24);
    if let Some(name) = event_line {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data); // compact JSON: escapes every newline, so one data line
    out.push_str("\n\n");
    out.into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
