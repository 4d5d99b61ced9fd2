//! Turning what happened to a request into events: the per-request context shared by
//! all attempts, and the construction of `usage` and `decision` events from it (cost from
//! the price table, estimation when the provider's final usage never arrived). Must not
//! do I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use tally_events::{
    DecisionEvent, EventHeader, FinishState, Outcome, Provider, Route, RuleKind, TokenCounts,
    UsageEvent, UsageSource,
};

use crate::pricing::PriceTable;

/// What is known about a request before it is forwarded.
#[derive(Clone, Debug)]
pub(crate) struct RequestCtx {
    pub(crate) request_id: String,
    pub(crate) instance: String,
    pub(crate) started: Instant,
    pub(crate) tenant: String,
    pub(crate) api_key_id: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) provider: Option<Provider>,
    pub(crate) route: Option<Route>,
    pub(crate) model_requested: Option<String>,
    pub(crate) streamed: bool,
    pub(crate) estimated_input_tokens: u64,
}

impl RequestCtx {
    /// The event header for this request (fresh event id, current time).
    pub(crate) fn header(&self, request_id: &str) -> EventHeader {
        let mut h = EventHeader::new(&self.instance, request_id, &self.tenant);
        h.api_key_id = self.api_key_id.clone();
        h.labels = self.labels.clone();
        h.provider = self.provider;
        h.route = self.route;
        h.model_requested = self.model_requested.clone();
        h
    }

    /// A denial decision with a reason a person can act on.
    pub(crate) fn denial(&self, rule: &str, kind: RuleKind, reason: String) -> DecisionEvent {
        DecisionEvent::new(
            self.header(&self.request_id),
            Outcome::Deny,
            rule,
            kind,
            reason,
        )
    }

    /// The usage event of a request that was never forwarded.
    pub(crate) fn denied_usage(&self, status: u16) -> UsageEvent {
        AttemptOutcome {
            request_id: self.request_id.clone(),
            upstream: None,
            status_code: Some(status),
            finish_state: FinishState::Denied,
            reported: None,
            estimated_output_tokens: 0,
            model_served: None,
            upstream_request_id: None,
            ttft_ms: None,
            retry_attempt: 0,
            retry_of: None,
            input_forwarded: false,
        }
        .into_event(self, None)
    }
}

/// How one attempt ended, as observed by the forwarder.
#[derive(Clone, Debug)]
pub(crate) struct AttemptOutcome {
    pub(crate) request_id: String,
    pub(crate) upstream: Option<String>,
    pub(crate) status_code: Option<u16>,
    pub(crate) finish_state: FinishState,
    /// Usage reported by the provider; `complete` says whether its final figures arrived.
    pub(crate) reported: Option<(TokenCounts, bool)>,
    /// Output tokens estimated from the text streamed so far (used when not complete).
    pub(crate) estimated_output_tokens: u64,
    pub(crate) model_served: Option<String>,
    pub(crate) upstream_request_id: Option<String>,
    pub(crate) ttft_ms: Option<u64>,
    pub(crate) retry_attempt: u32,
    pub(crate) retry_of: Option<String>,
    /// Whether the request reached a provider that may bill its input.
    pub(crate) input_forwarded: bool,
}

impl AttemptOutcome {
    /// Build the usage event, pricing it with `prices`.
    pub(crate) fn into_event(self, ctx: &RequestCtx, prices: Option<&PriceTable>) -> UsageEvent {
        let (tokens, source) = match self.reported {
            Some((tokens, true)) => (tokens, UsageSource::ProviderReported),
            Some((mut tokens, false)) => {
                let had_input = tokens.input_tokens > 0;
                if !had_input && self.input_forwarded {
                    tokens.input_tokens = ctx.estimated_input_tokens;
                }
                tokens.output_tokens = tokens.output_tokens.max(self.estimated_output_tokens);
                let source = if had_input {
                    UsageSource::Mixed
                } else {
                    UsageSource::Estimated
                };
                (tokens, source)
            }
            None => {
                let mut tokens = TokenCounts::default();
                // A response that streamed text, or a success whose usage could not be
                // read: the provider processed (and bills) the input; estimate both sides.
                let succeeded = self.status_code.is_some_and(|s| (200..300).contains(&s));
                if self.input_forwarded && (self.estimated_output_tokens > 0 || succeeded) {
                    tokens.output_tokens = self.estimated_output_tokens;
                    tokens.input_tokens = ctx.estimated_input_tokens;
                }
                (tokens, UsageSource::Estimated)
            }
        };
        let model = self
            .model_served
            .as_deref()
            .or(ctx.model_requested.as_deref());
        let priced = match (prices, model) {
            (Some(p), Some(m)) => p
                .cost_micros(m, &tokens, false)
                .map(|c| (c, p.version().to_owned())),
            _ => None,
        };
        let mut header = ctx.header(&self.request_id);
        header.model_served = self.model_served;
        header.upstream_request_id = self.upstream_request_id;
        let latency_ms = u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        UsageEvent {
            header,
            upstream: self.upstream,
            status_code: self.status_code,
            streamed: ctx.streamed,
            finish_state: self.finish_state,
            tokens,
            usage_source: source,
            cost_micros: priced.as_ref().map_or(0, |p| p.0),
            price_version: priced.map(|p| p.1),
            latency_ms,
            ttft_ms: self.ttft_ms,
            retry_attempt: self.retry_attempt,
            retry_of: self.retry_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestCtx {
        RequestCtx {
            request_id: "req-1".into(),
            instance: "gw".into(),
            started: Instant::now(),
            tenant: "acme".into(),
            api_key_id: Some("k".into()),
            labels: BTreeMap::new(),
            provider: Some(Provider::Openai),
            route: Some(Route::Chat),
            model_requested: Some("gpt-4o-mini".into()),
            streamed: true,
            estimated_input_tokens: 50,
        }
    }

    fn outcome(reported: Option<(TokenCounts, bool)>, estimated: u64) -> AttemptOutcome {
        AttemptOutcome {
            request_id: "req-1".into(),
            upstream: Some("openai".into()),
            status_code: Some(200),
            finish_state: FinishState::ClientAborted,
            reported,
            estimated_output_tokens: estimated,
            model_served: None,
            upstream_request_id: None,
            ttft_ms: Some(3),
            retry_attempt: 0,
            retry_of: None,
            input_forwarded: true,
        }
    }

    #[test]
    fn complete_reports_are_used_as_is() {
        let t = TokenCounts {
            input_tokens: 10,
            output_tokens: 0,
            ..TokenCounts::default()
        };
        let e = outcome(Some((t, true)), 99).into_event(&ctx(), Some(&PriceTable::built_in()));
        assert_eq!(e.usage_source, UsageSource::ProviderReported);
        assert_eq!(e.tokens.output_tokens, 0, "a reported zero is a real zero");
        assert_eq!(e.price_version.as_deref(), Some("2026-11-01"));
    }

    #[test]
    fn partial_reports_are_completed_by_estimates() {
        let t = TokenCounts {
            input_tokens: 40,
            output_tokens: 1,
            ..TokenCounts::default()
        };
        let e = outcome(Some((t, false)), 25).into_event(&ctx(), None);
        assert_eq!((e.tokens.input_tokens, e.tokens.output_tokens), (40, 25));
        assert_eq!(e.usage_source, UsageSource::Mixed);
        let e = outcome(None, 25).into_event(&ctx(), None);
        assert_eq!((e.tokens.input_tokens, e.tokens.output_tokens), (50, 25));
        assert_eq!(e.usage_source, UsageSource::Estimated);
        assert_eq!(e.cost_micros, 0);
    }

    #[test]
    fn denied_requests_cost_nothing() {
        let e = ctx().denied_usage(401);
        assert_eq!(e.finish_state, FinishState::Denied);
        assert_eq!(e.tokens, TokenCounts::default());
        assert_eq!(e.status_code, Some(401));
    }
}
