//! The event types: the common header and the `decision`, `usage` and `correction`
//! events, with their closed vocabularies. Owns field names and meanings (a public
//! contract: SQL users and billing scripts depend on them); must not know how events are
//! encoded, stored or transported.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Timestamp;

/// Current version of the event schema written by this build. Bumped when a field is
/// added; readers accept any version and ignore fields they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// A time-ordered unique event id (UUIDv7): the idempotency key everywhere downstream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new id ordered after every id made earlier by this process.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Parse the hyphenated text form.
    pub fn parse(s: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.hyphenated())
    }
}

/// Declares a closed string vocabulary with a forward-compatible `Other` catch-all, so an
/// older reader decodes a value added later instead of failing.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
            /// A value written by a newer tally that this build does not know.
            #[serde(other)]
            Other,
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire and column value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other => "other",
                }
            }

            /// Parse a wire value; unknown values become `Other`.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)+
                    _ => $name::Other,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// The upstream API family a request was addressed to.
    Provider {
        Openai => "openai",
        Anthropic => "anthropic",
        Gemini => "gemini",
    }
}

vocabulary! {
    /// The kind of API call, independent of provider.
    Route {
        /// OpenAI `/v1/chat/completions`.
        Chat => "chat",
        /// OpenAI `/v1/responses`.
        Responses => "responses",
        /// OpenAI legacy `/v1/completions`.
        Completions => "completions",
        /// Anthropic `/v1/messages`.
        Messages => "messages",
        /// Anthropic `/v1/messages/count_tokens`.
        CountTokens => "count_tokens",
        /// OpenAI `/v1/embeddings`.
        Embeddings => "embeddings",
        /// Gemini `:generateContent` and `:streamGenerateContent`.
        GenerateContent => "generate_content",
        /// Model listings.
        Models => "models",
    }
}

vocabulary! {
    /// What a policy rule decided.
    Outcome {
        Allow => "allow",
        Deny => "deny",
        /// A rule in shadow mode would have denied; the request was let through.
        ShadowDeny => "shadow_deny",
    }
}

vocabulary! {
    /// The kind of rule (or built-in check) that produced a decision.
    RuleKind {
        /// Gateway key authentication.
        Auth => "auth",
        /// Allow/deny access rules.
        Access => "access",
        RateLimit => "rate_limit",
        UsageCap => "usage_cap",
        /// Request validation (size, shape, unknown route).
        Validation => "validation",
        /// No rule matched; the configured default applied.
        Default => "default",
    }
}

vocabulary! {
    /// The unit a decision's counter is measured in.
    CounterUnit {
        Requests => "requests",
        Tokens => "tokens",
        InputTokens => "input_tokens",
        OutputTokens => "output_tokens",
        /// Integer micro-US-dollars.
        UsdMicros => "usd_micros",
    }
}

vocabulary! {
    /// How a forwarded (or denied) request ended.
    FinishState {
        Completed => "completed",
        ClientAborted => "client_aborted",
        UpstreamError => "upstream_error",
        Timeout => "timeout",
        Denied => "denied",
        /// Stopped by tally mid-stream because a cap was reached (`on_exceed: cut`).
        CutByPolicy => "cut_by_policy",
    }
}

vocabulary! {
    /// Where the token figures of a usage event come from.
    UsageSource {
        ProviderReported => "provider_reported",
        Estimated => "estimated",
        /// Some figures reported by the provider, the rest estimated.
        Mixed => "mixed",
    }
}

vocabulary! {
    /// The type of event, as written in `event_type`.
    EventType {
        Decision => "decision",
        Usage => "usage",
        Correction => "correction",
    }
}

/// Fields every event carries.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EventHeader {
    /// Unique, time-ordered; the idempotency key.
    pub event_id: EventId,
    /// Schema version of the writer.
    pub schema_version: u32,
    /// When the thing the event records happened (UTC, microseconds).
    pub occurred_at: Timestamp,
    /// The enforcer instance that wrote the event.
    pub gateway_instance: String,
    /// The request id returned to the client in `x-tally-request-id`.
    pub request_id: String,
    /// The tenant the gateway key belongs to (`unknown` when authentication failed).
    pub tenant: String,
    /// Id of the gateway key (never the secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// Free-form labels of the key and request: team, user, project, app…
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The model the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_requested: Option<String>,
    /// The model the provider says served the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_served: Option<String>,
    /// The provider's own request id, for support tickets and reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
}

impl EventHeader {
    /// A header with a fresh id, the current time and the current schema version.
    pub fn new(gateway_instance: &str, request_id: &str, tenant: &str) -> Self {
        Self {
            event_id: EventId::new(),
            schema_version: SCHEMA_VERSION,
            occurred_at: Timestamp::now(),
            gateway_instance: gateway_instance.to_owned(),
            request_id: request_id.to_owned(),
            tenant: tenant.to_owned(),
            api_key_id: None,
            labels: BTreeMap::new(),
            provider: None,
            route: None,
            model_requested: None,
            model_served: None,
            upstream_request_id: None,
        }
    }
}

/// A policy decision about one request: allowed, denied or shadow-denied, and why.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DecisionEvent {
    #[serde(flatten)]
    pub header: EventHeader,
    pub outcome: Outcome,
    /// Name of the rule (or built-in check) that decided.
    pub rule: String,
    pub rule_kind: RuleKind,
    /// The bucket the rule counted in, e.g. `tenant:acme/model:gpt-4o`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_key: Option<String>,
    /// Counter value at decision time (before this request's reservation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_unit: Option<CounterUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Timestamp>,
    /// When the counter has room again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<Timestamp>,
    /// Tokens reserved for this request against the rule's counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_tokens: Option<u64>,
    /// Cost reserved for this request, in micro-USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_cost_micros: Option<i64>,
    /// A sentence a person can act on.
    pub reason: String,
}

impl DecisionEvent {
    /// A decision with no counter details (access and validation rules); counter fields
    /// can be filled in afterwards.
    pub fn new(
        header: EventHeader,
        outcome: Outcome,
        rule: &str,
        rule_kind: RuleKind,
        reason: String,
    ) -> Self {
        Self {
            header,
            outcome,
            rule: rule.to_owned(),
            rule_kind,
            counter_key: None,
            counter_value: None,
            counter_limit: None,
            counter_unit: None,
            window_start: None,
            window_end: None,
            reset_at: None,
            reserved_tokens: None,
            reserved_cost_micros: None,
            reason,
        }
    }
}

/// What one forwarded (or denied) request consumed. One per attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UsageEvent {
    #[serde(flatten)]
    pub header: EventHeader,
    /// The named upstream the attempt went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// HTTP status sent to the client (absent if no response head was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    pub streamed: bool,
    pub finish_state: FinishState,
    #[serde(flatten)]
    pub tokens: TokenCounts,
    pub usage_source: UsageSource,
    /// Cost in integer micro-US-dollars.
    pub cost_micros: i64,
    /// Version of the price table the cost was computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<String>,
    /// Time from request received to response end, milliseconds.
    pub latency_ms: u64,
    /// Time from request received to the first response byte, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// 0 for the first attempt, 1 for the first retry…
    #[serde(default)]
    pub retry_attempt: u32,
    /// The `request_id` of the attempt this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// Token figures, normalized across providers (see docs/events.md):
/// `input_tokens` counts all input including cache reads and writes; `output_tokens`
/// counts all output including reasoning.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TokenCounts {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    #[serde(default)]
    pub audio_input_tokens: u64,
    #[serde(default)]
    pub audio_output_tokens: u64,
}

impl TokenCounts {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Add another set of figures to these, kind by kind (saturating).
    pub fn add(&mut self, other: &TokenCounts) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.audio_input_tokens = self
            .audio_input_tokens
            .saturating_add(other.audio_input_tokens);
        self.audio_output_tokens = self
            .audio_output_tokens
            .saturating_add(other.audio_output_tokens);
    }
}

/// Amends an earlier event without touching it: the figures present here replace the
/// original's when reading the corrected view.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CorrectionEvent {
    #[serde(flatten)]
    pub header: EventHeader,
    /// The event being amended.
    pub corrects_event_id: EventId,
    /// Why, in a sentence.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_source: Option<UsageSource>,
}

/// Any event. On the wire the variant is the `event_type` field.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum Event {
    Decision(DecisionEvent),
    Usage(UsageEvent),
    Correction(CorrectionEvent),
}

impl Event {
    /// The common header.
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Decision(e) => &e.header,
            Event::Usage(e) => &e.header,
            Event::Correction(e) => &e.header,
        }
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Decision(_) => EventType::Decision,
            Event::Usage(_) => EventType::Usage,
            Event::Correction(_) => EventType::Correction,
        }
    }
}

impl From<DecisionEvent> for Event {
    fn from(e: DecisionEvent) -> Self {
        Event::Decision(e)
    }
}

impl From<UsageEvent> for Event {
    fn from(e: UsageEvent) -> Self {
        Event::Usage(e)
    }
}

impl From<CorrectionEvent> for Event {
    fn from(e: CorrectionEvent) -> Self {
        Event::Correction(e)
    }
}
