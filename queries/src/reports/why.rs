//! "Why was this request blocked?": every decision recorded for a request id in time
//! order (rule, outcome, counter value/limit/unit, window, reset, reason) and every
//! attempt (the request and its retries `<id>-r<n>`), from the events alone. Must not
//! consult policy configuration or counters: the events explain themselves.

use datafusion::common::ScalarValue;
use serde::Serialize;
use tally_events::Timestamp;

use crate::engine::QueryEngine;
use crate::error::QueryError;
use crate::reports::{Col, human, minute, render_table, second, thousands, usd};
use crate::scope::Principal;

/// The overall verdict for a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A rule denied it.
    Denied,
    /// Let through, but a rule in shadow mode would have denied it.
    ShadowDenied,
    /// Every decision allowed it.
    Allowed,
    /// Attempts were recorded but no decision.
    NoDecision,
}

/// One decision event.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct WhyDecision {
    pub occurred_at: Timestamp,
    pub request_id: String,
    pub outcome: String,
    pub rule: String,
    pub rule_kind: String,
    pub counter_key: Option<String>,
    pub counter_value: Option<i64>,
    pub counter_limit: Option<i64>,
    pub counter_unit: Option<String>,
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    pub reset_at: Option<Timestamp>,
    pub reserved_tokens: Option<i64>,
    pub reserved_cost_micros: Option<i64>,
    pub reason: String,
}

/// One attempt (usage event), with corrections applied.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct WhyAttempt {
    pub occurred_at: Timestamp,
    pub request_id: String,
    pub retry_attempt: i64,
    pub retry_of: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub status_code: Option<i64>,
    pub finish_state: String,
    pub streamed: bool,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub usage_source: String,
    pub cost_micros: i64,
    pub latency_ms: i64,
    pub corrected: bool,
    pub correction_reason: Option<String>,
}

/// Everything recorded about one request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct WhyReport {
    pub request_id: String,
    pub tenant: Option<String>,
    pub verdict: Verdict,
    /// A sentence a person can act on.
    pub summary: String,
    pub decisions: Vec<WhyDecision>,
    pub attempts: Vec<WhyAttempt>,
}

pub(crate) const DECISIONS_SQL: &str =
    "SELECT occurred_at, request_id, tenant, outcome, rule, rule_kind,
  counter_key, counter_value, counter_limit, counter_unit, window_start, window_end, reset_at,
  reserved_tokens, reserved_cost_micros, reason
FROM decisions
WHERE request_id = $1 OR starts_with(request_id, $2)
ORDER BY occurred_at, event_id";

pub(crate) const ATTEMPTS_SQL: &str =
    "SELECT occurred_at, request_id, tenant, retry_attempt, retry_of, provider,
  COALESCE(model_served, model_requested) AS model, upstream, status_code, finish_state, streamed,
  input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
  usage_source, cost_micros, latency_ms, corrected, correction_reason
FROM usage_corrected
WHERE request_id = $1 OR starts_with(request_id, $2)
ORDER BY occurred_at, retry_attempt, event_id";

/// Whether `candidate` is `id` itself or one of its retries, `<id>-r<n>`.
fn is_request_or_retry(id: &str, candidate: &str) -> bool {
    candidate == id
        || candidate
            .strip_prefix(id)
            .and_then(|rest| rest.strip_prefix("-r"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Explain one request from its events. A tenant-scoped principal sees only its own
/// requests; another tenant's id is reported as not found.
pub async fn why(
    engine: &QueryEngine,
    request_id: &str,
    principal: &Principal,
) -> Result<WhyReport, QueryError> {
    let request_id = request_id.trim();
    if request_id.is_empty() {
        return Err(QueryError::BadRequest(
            "a request id is required (the x-tally-request-id response header)".to_owned(),
        ));
    }
    let params = || {
        vec![
            ScalarValue::Utf8(Some(request_id.to_owned())),
            ScalarValue::Utf8(Some(format!("{request_id}-r"))),
        ]
    };
    let (decision_batches, attempt_batches) = futures_util::future::try_join(
        engine.collect_with_params(DECISIONS_SQL, params(), principal),
        engine.collect_with_params(ATTEMPTS_SQL, params(), principal),
    )
    .await?;

    let mut tenant = None;
    let mut decisions = Vec::new();
    for b in &decision_batches {
        let c = |n: &str| Col::str(b, n);
        let (at, rid, ten, outcome, rule, kind) = (
            Col::time(b, "occurred_at")?,
            c("request_id")?,
            c("tenant")?,
            c("outcome")?,
            c("rule")?,
            c("rule_kind")?,
        );
        let (ckey, cval, clim, cunit) = (
            c("counter_key")?,
            Col::int(b, "counter_value")?,
            Col::int(b, "counter_limit")?,
            c("counter_unit")?,
        );
        let (ws, we, reset) = (
            Col::time(b, "window_start")?,
            Col::time(b, "window_end")?,
            Col::time(b, "reset_at")?,
        );
        let (rt, rc, reason) = (
            Col::int(b, "reserved_tokens")?,
            Col::int(b, "reserved_cost_micros")?,
            c("reason")?,
        );
        for i in 0..b.num_rows() {
            let rid = rid.get_str(i).unwrap_or_default();
            if !is_request_or_retry(request_id, &rid) {
                continue;
            }
            tenant = tenant.or_else(|| ten.get_str(i));
            decisions.push(WhyDecision {
                occurred_at: at.get_time(i).unwrap_or_default(),
                request_id: rid,
                outcome: outcome.get_str(i).unwrap_or_default(),
                rule: rule.get_str(i).unwrap_or_default(),
                rule_kind: kind.get_str(i).unwrap_or_default(),
                counter_key: ckey.get_str(i),
                counter_value: cval.get_int(i),
                counter_limit: clim.get_int(i),
                counter_unit: cunit.get_str(i),
                window_start: ws.get_time(i),
                window_end: we.get_time(i),
                reset_at: reset.get_time(i),
                reserved_tokens: rt.get_int(i),
                reserved_cost_micros: rc.get_int(i),
                reason: reason.get_str(i).unwrap_or_default(),
            });
        }
    }

    let mut attempts = Vec::new();
    for b in &attempt_batches {
        let s = |n: &str| Col::str(b, n);
        let n = |n: &str| Col::int(b, n);
        let at = Col::time(b, "occurred_at")?;
        let (rid, ten, retry_of, provider, model, upstream, finish, source, creason) = (
            s("request_id")?,
            s("tenant")?,
            s("retry_of")?,
            s("provider")?,
            s("model")?,
            s("upstream")?,
            s("finish_state")?,
            s("usage_source")?,
            s("correction_reason")?,
        );
        let (attempt, status, input, cached, cache_write, output, reasoning, cost, latency) = (
            n("retry_attempt")?,
            n("status_code")?,
            n("input_tokens")?,
            n("cached_input_tokens")?,
            n("cache_write_tokens")?,
            n("output_tokens")?,
            n("reasoning_tokens")?,
            n("cost_micros")?,
            n("latency_ms")?,
        );
        let (streamed, corrected) = (Col::bool(b, "streamed")?, Col::bool(b, "corrected")?);
        for i in 0..b.num_rows() {
            let rid = rid.get_str(i).unwrap_or_default();
            if !is_request_or_retry(request_id, &rid) {
                continue;
            }
            tenant = tenant.or_else(|| ten.get_str(i));
            attempts.push(WhyAttempt {
                occurred_at: at.get_time(i).unwrap_or_default(),
                request_id: rid,
                retry_attempt: attempt.get_int(i).unwrap_or(0),
                retry_of: retry_of.get_str(i),
                provider: provider.get_str(i),
                model: model.get_str(i),
                upstream: upstream.get_str(i),
                status_code: status.get_int(i),
                finish_state: finish.get_str(i).unwrap_or_default(),
                streamed: streamed.get_bool(i).unwrap_or(false),
                input_tokens: input.get_int(i).unwrap_or(0),
                cached_input_tokens: cached.get_int(i).unwrap_or(0),
                cache_write_tokens: cache_write.get_int(i).unwrap_or(0),
                output_tokens: output.get_int(i).unwrap_or(0),
                reasoning_tokens: reasoning.get_int(i).unwrap_or(0),
                usage_source: source.get_str(i).unwrap_or_default(),
                cost_micros: cost.get_int(i).unwrap_or(0),
                latency_ms: latency.get_int(i).unwrap_or(0),
                corrected: corrected.get_bool(i).unwrap_or(false),
                correction_reason: creason.get_str(i),
            });
        }
    }

    if decisions.is_empty() && attempts.is_empty() {
        let whose = match principal {
            Principal::Admin => String::new(),
            Principal::Tenant(t) => format!(" of tenant {t}"),
        };
        return Err(QueryError::NotFound(format!(
            "no events for request id `{request_id}`{whose}. Check the id (it is the x-tally-request-id response header); a request shows up within a second of its decision"
        )));
    }

    let (verdict, summary) = verdict(&decisions, &attempts);
    Ok(WhyReport {
        request_id: request_id.to_owned(),
        tenant,
        verdict,
        summary,
        decisions,
        attempts,
    })
}

/// A quantity in a counter's unit: `99.5M µ$`, `1.2K tokens`, `60 requests`.
fn quantity(v: i64, unit: Option<&str>) -> String {
    match unit {
        Some("usd_micros") => format!("{} µ$", human(v)),
        Some("requests") => format!("{} requests", human(v)),
        Some("tokens") => format!("{} tokens", human(v)),
        Some("input_tokens") => format!("{} input tokens", human(v)),
        Some("output_tokens") => format!("{} output tokens", human(v)),
        Some(other) => format!("{} {other}", human(v)),
        None => human(v),
    }
}

/// `counter 99.5M µ$ of limit 100M µ$ for tenant:acme, resets 2026-12-01T00:00Z`, or
/// the parts the decision has.
fn counter_phrase(d: &WhyDecision) -> Option<String> {
    let unit = d.counter_unit.as_deref();
    let mut parts = Vec::new();
    match (d.counter_value, d.counter_limit) {
        (Some(v), Some(l)) => parts.push(format!(
            "counter {} of limit {}",
            quantity(v, unit),
            quantity(l, unit)
        )),
        (Some(v), None) => parts.push(format!("counter {}", quantity(v, unit))),
        (None, Some(l)) => parts.push(format!("limit {}", quantity(l, unit))),
        (None, None) => {}
    }
    if let Some(k) = &d.counter_key {
        if parts.is_empty() {
            parts.push(format!("counter {k}"));
        } else if let Some(last) = parts.last_mut() {
            last.push_str(&format!(" for {k}"));
        }
    }
    let mut text = parts.join("");
    if let Some(r) = d.reset_at {
        if text.is_empty() {
            text = format!("resets {}", minute(r));
        } else {
            text.push_str(&format!(", resets {}", minute(r)));
        }
    }
    (!text.is_empty()).then_some(text)
}

fn rule_phrase(d: &WhyDecision) -> String {
    let mut s = format!("rule {} ({})", d.rule, d.rule_kind);
    if let Some(c) = counter_phrase(d) {
        s.push_str(": ");
        s.push_str(&c);
    }
    s.push_str(" — reason: ");
    s.push_str(&d.reason);
    s
}

fn verdict(decisions: &[WhyDecision], attempts: &[WhyAttempt]) -> (Verdict, String) {
    if let Some(d) = decisions.iter().find(|d| d.outcome == "deny") {
        return (Verdict::Denied, format!("Denied by {}", rule_phrase(d)));
    }
    if let Some(d) = decisions.iter().find(|d| d.outcome == "shadow_deny") {
        return (
            Verdict::ShadowDenied,
            format!(
                "Allowed, but would have been denied (shadow mode) by {}",
                rule_phrase(d)
            ),
        );
    }
    if let Some(d) = decisions.last() {
        let tries = attempts.len();
        let ending = attempts
            .last()
            .map(|a| format!("; {tries} attempt(s), the last ended {}", a.finish_state))
            .unwrap_or_default();
        return (
            Verdict::Allowed,
            format!(
                "Allowed: no rule denied it (last decision {}){ending}",
                rule_phrase(d)
            ),
        );
    }
    (
        Verdict::NoDecision,
        "No decision was recorded for this request; only its attempts are known".to_owned(),
    )
}

impl WhyReport {
    /// The report as text a person can read.
    pub fn render_text(&self) -> String {
        let mut out = format!("Request {}", self.request_id);
        if let Some(t) = &self.tenant {
            out.push_str(&format!(" (tenant {t})"));
        }
        out.push('\n');
        out.push_str(&self.summary);
        out.push_str("\n\n");

        out.push_str(&format!(
            "Decisions ({}, in time order):\n",
            self.decisions.len()
        ));
        if self.decisions.is_empty() {
            out.push_str("  none recorded\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .decisions
                .iter()
                .map(|d| {
                    vec![
                        second(d.occurred_at),
                        d.outcome.clone(),
                        format!("{} ({})", d.rule, d.rule_kind),
                        counter_phrase(d).unwrap_or_default(),
                        d.reason.clone(),
                    ]
                })
                .collect();
            let table = render_table(
                &["TIME", "OUTCOME", "RULE", "COUNTER", "REASON"],
                &rows,
                &[false; 5],
            );
            for line in table.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');

        out.push_str(&format!("Attempts ({}):\n", self.attempts.len()));
        if self.attempts.is_empty() {
            out.push_str("  none recorded (a denied request is never forwarded)\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .attempts
                .iter()
                .map(|a| {
                    vec![
                        second(a.occurred_at),
                        a.request_id.clone(),
                        a.retry_attempt.to_string(),
                        a.model.clone().unwrap_or_default(),
                        a.status_code.map(|s| s.to_string()).unwrap_or_default(),
                        a.finish_state.clone(),
                        thousands(a.input_tokens),
                        thousands(a.output_tokens),
                        usd(a.cost_micros),
                        if a.corrected {
                            format!("{} (corrected)", a.usage_source)
                        } else {
                            a.usage_source.clone()
                        },
                    ]
                })
                .collect();
            let table = render_table(
                &[
                    "TIME", "REQUEST", "TRY", "MODEL", "STATUS", "FINISH", "INPUT", "OUTPUT",
                    "COST", "SOURCE",
                ],
                &rows,
                &[
                    false, false, true, false, true, false, true, true, true, false,
                ],
            );
            for line in table.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_match_only_numeric_suffixes() {
        assert!(is_request_or_retry("abc", "abc"));
        assert!(is_request_or_retry("abc", "abc-r2"));
        assert!(!is_request_or_retry("abc", "abc-r"));
        assert!(!is_request_or_retry("abc", "abc-rx"));
        assert!(!is_request_or_retry("abc", "abcd"));
    }

    #[test]
    fn the_denial_sentence_reads_like_the_spec() {
        let d = WhyDecision {
            occurred_at: Timestamp::from_micros(0),
            request_id: "r".into(),
            outcome: "deny".into(),
            rule: "monthly".into(),
            rule_kind: "usage_cap".into(),
            counter_key: Some("tenant:acme".into()),
            counter_value: Some(99_500_000),
            counter_limit: Some(100_000_000),
            counter_unit: Some("usd_micros".into()),
            window_start: None,
            window_end: None,
            reset_at: Timestamp::parse("2026-12-01T00:00:00Z").ok(),
            reserved_tokens: None,
            reserved_cost_micros: None,
            reason: "budget spent".into(),
        };
        let (v, s) = verdict(&[d], &[]);
        assert_eq!(v, Verdict::Denied);
        assert_eq!(
            s,
            "Denied by rule monthly (usage_cap): counter 99.5M µ$ of limit 100M µ$ for tenant:acme, resets 2026-12-01T00:00Z — reason: budget spent"
        );
    }
}
