//! Policies: the API the proxy uses to decide whether a request may pass (access rules,
//! rate limits, token and dollar caps), to reserve budget before forwarding, to settle
//! reservations on real usage, to stop streams that would break a cap, and to rebuild
//! counters from history. Owns the public types only; must not do I/O beyond loading
//! the policy file, and must not know HTTP or provider formats.
//!
//! Call order for one request (see docs/policies.md):
//! `evaluate` → forward if `Verdict::Allow` → `check_stream` while output streams →
//! `settle` exactly once with the usage of all attempts (zeros if nothing was consumed).

use std::collections::BTreeMap;

use tally_events::{DecisionEvent, Provider, Route, Timestamp};

mod access;
mod counters;
mod engine;
mod expr;
mod fast;
mod file;
mod period;
mod rate_limit;
mod usage_cap;

pub use engine::{PolicyEngine, Reservation};
pub use file::{PolicyError, PolicySet, Problem};

/// What the engine needs to know about a request before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    pub tenant: String,
    /// Id of the gateway key (never the secret).
    pub key_id: Option<String>,
    /// Labels of the key (team, user, project…).
    pub labels: BTreeMap<String, String>,
    pub provider: Option<Provider>,
    pub route: Option<Route>,
    /// The model the client asked for.
    pub model: Option<String>,
    /// Request headers; names are lowercased by the engine. Leave out secrets.
    pub headers: BTreeMap<String, String>,
    /// Estimated input tokens (from the request body).
    pub estimated_input_tokens: u64,
    /// The output limit the request asked for, or the provider's default for the model.
    pub max_output_tokens: u64,
    /// Estimated cost of `estimated_input_tokens` input plus `max_output_tokens` output,
    /// in micro-USD, from the price table; `None` when the model has no price (dollar
    /// caps then apply their `on_error`).
    pub estimated_cost_micros: Option<i64>,
}

/// The result of evaluating a request.
#[derive(Debug)]
pub struct Evaluation {
    /// Decision events to write, in rule order: the `deny` that refused the request, or
    /// the `shadow_deny`s (and, with `emit_allow_decisions`, `allow`s) of an allowed one.
    pub decisions: Vec<DecisionEvent>,
    pub verdict: Verdict,
    /// The tightest limits that applied, for `x-ratelimit-*` response headers.
    pub limits: RateLimits,
}

/// The tightest request limit and the tightest token limit (rate limits and caps in
/// tokens, input or output tokens) among the enforced rules that applied to a request:
/// what OpenAI-style `x-ratelimit-*` response headers report. Dollar caps have no such
/// header and are left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests: Option<LimitStatus>,
    pub tokens: Option<LimitStatus>,
}

/// One counter as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit: i64,
    /// Room left after this request (its reservation included when it was admitted).
    pub remaining: i64,
    /// When the counter is back to its full limit: the end of a cap's period, or a
    /// window's length from now; for a refusal, when the request would fit.
    pub reset_at: Timestamp,
}

/// Whether the request may be forwarded.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it, holding this reservation until `settle`.
    Allow(Reservation),
    /// Refuse it with `status` and `message` (the decision's reason).
    Deny {
        rule: String,
        status: u16,
        message: String,
        /// For a `Retry-After` header: seconds until the counter has room again.
        retry_after_secs: Option<u64>,
    },
}

/// What to do with a response that is streaming.
#[derive(Debug)]
pub enum StreamVerdict {
    Continue,
    /// A cap with `on_exceed: cut` would be exceeded: stop the stream, write the
    /// decision (outcome `deny`), end the response with `message`, finish the attempt as
    /// `cut_by_policy` and settle as usual.
    Cut {
        decision: DecisionEvent,
        message: String,
    },
    /// A cap in shadow mode would have cut the stream: write the decision (outcome
    /// `shadow_deny`) and keep streaming. Returned at most once per rule and request.
    ShadowCut {
        decision: DecisionEvent,
    },
}

/// One rule's part in a decision, as `tally policy test` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleTrace {
    pub rule: String,
    pub kind: tally_events::RuleKind,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Whether the rule's `match` held; `None` when the rule was not looked at (an
    /// earlier access rule had decided access).
    pub matched: Option<bool>,
    /// Why the rule could not be evaluated (match, key or cost), if so.
    pub error: Option<String>,
    /// The counter the request falls in, for limits and caps that matched.
    pub counter_key: Option<String>,
    pub unit: Option<tally_events::CounterUnit>,
    pub limit: Option<i64>,
    /// What this request reserves or counts in that counter.
    pub amount: Option<i64>,
    /// The counter's settled usage plus reservations in flight, before and after.
    pub before: Option<i64>,
    pub after: Option<i64>,
}

/// A decision with every rule's part in it.
#[derive(Debug)]
pub struct Explanation {
    pub rules: Vec<RuleTrace>,
    pub evaluation: Evaluation,
}

/// One counter's state, for metrics and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub rule: String,
    /// `rule:tenant=acme`, `rule:key_id=k1`, `rule:key=<value>`.
    pub counter_key: String,
    pub unit: tally_events::CounterUnit,
    pub limit: i64,
    /// Settled usage in the current window or period (reservations excluded).
    pub value: i64,
    /// Reservations of requests still running.
    pub in_flight: i64,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
}
