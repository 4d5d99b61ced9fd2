//! The policy engine: evaluates the rules of the current `PolicySet` for a request,
//! reserves against every matching limit and cap atomically, settles reservations on
//! real usage, checks running streams against `on_exceed: cut` caps, folds historical
//! usage events into counters, and builds the decision events that explain it all.
//! Owns the order of evaluation and the reservation invariant; must not do I/O, parse
//! the policy file, or know HTTP.
//!
//! Atomicity: the counters a request touches are locked together (ascending id order)
//! while every rule is checked, and reserved only if none refuses, so two concurrent
//! requests can never both pass a cap with room for one, and a refused request leaves
//! no trace in any counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{MutexGuard, RwLock};
use tally_events::{
    DecisionEvent, EventHeader, EventId, Outcome, Timestamp, TokenCounts, UsageEvent,
};

use crate::policy::access::{self, Step};
use crate::policy::counters::{Counter, CounterKey, CounterState, CounterStore, Meter, Shape};
use crate::policy::expr::{Activation, CompiledExpr, Vars};
use crate::policy::file::{Action, Mode, OnError, OnExceed, PolicySet, Rule, Unit};
use crate::policy::period;
use crate::policy::rate_limit::{self, Facts};
use crate::policy::usage_cap;
use crate::policy::{
    CounterSnapshot, Evaluation, Explanation, LimitStatus, RateLimits, RequestAttrs, RuleTrace,
    StreamVerdict, Verdict,
};

/// How often a lookup is retried when a counter was retired under our feet (reload).
const MAX_LOCK_ATTEMPTS: usize = 16;

/// The policy engine: the current rules and their counters. Shared by all requests.
#[derive(Debug)]
pub struct PolicyEngine {
    set: RwLock<Arc<PolicySet>>,
    counters: CounterStore,
}

/// Budget held for a forwarded request until it is settled.
///
/// Settle it exactly once with [`PolicyEngine::settle`]. Dropping it unsettled releases
/// the holds without counting any usage (and logs a warning), so a lost reservation can
/// never shrink a budget forever; it does not move any window or period (it has no
/// clock), so it is also safe in tests with made-up times.
#[derive(Debug)]
pub struct Reservation {
    holds: Vec<Hold>,
    estimated_input: u64,
    max_output: u64,
    settled: AtomicBool,
}

#[derive(Debug)]
struct Hold {
    counter: Arc<Counter>,
    rule: Arc<Rule>,
    subject: String,
    /// Reserved amount in the counter's unit.
    amount: i64,
    shadow_cut_reported: AtomicBool,
}

impl Reservation {
    fn empty() -> Self {
        Self {
            holds: Vec::new(),
            estimated_input: 0,
            max_output: 0,
            settled: AtomicBool::new(false),
        }
    }

    /// Whether the request holds nothing (no token or dollar limit applied).
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Whether `check_stream` can ever cut (or shadow-cut) this request: false lets the
    /// forwarder skip counting tokens while streaming.
    pub fn needs_stream_checks(&self) -> bool {
        self.holds.iter().any(|h| cut_cap(&h.rule).is_some())
    }

    /// Counter keys this reservation holds budget in.
    pub fn counter_keys(&self) -> Vec<&str> {
        self.holds.iter().map(|h| h.counter.key.as_str()).collect()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.holds.is_empty() || self.settled.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!(
            counters = ?self.counter_keys(),
            "policy reservation dropped without settle; releasing it without counting usage"
        );
        self.settled.store(true, Ordering::Release);
        for h in &self.holds {
            let limit = h.rule.limit().map_or(0, |(l, _)| l);
            let mut st = h.counter.state.lock();
            match &mut st.meter {
                Meter::Window(w) => w.release(h.amount),
                Meter::Bucket(b) => b.release(limit, h.amount),
                Meter::Cap(c) => c.release(h.amount),
            }
        }
    }
}

fn cut_cap(rule: &Rule) -> Option<&crate::policy::file::UsageCap> {
    match &rule.action {
        Action::UsageCap(c) if c.on_exceed == OnExceed::Cut => Some(c),
        _ => None,
    }
}

/// A limit or cap that applies to the request, before counters are locked.
struct Plan {
    rule: Arc<Rule>,
    shape: Shape,
    limit: i64,
    key: CounterKey,
    amount: i64,
}

/// What a meter says about a plan.
#[derive(Clone, Copy, Debug)]
struct Reading {
    fits: bool,
    used: i64,
    in_flight: i64,
    window: (Timestamp, Timestamp),
    reset_at: Option<Timestamp>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The amount a request reserves (or counts) in `unit`.
fn request_amount(unit: Unit, req: &RequestAttrs) -> Result<i64, String> {
    let input = to_i64(req.estimated_input_tokens);
    let output = to_i64(req.max_output_tokens);
    Ok(match unit {
        Unit::Requests => 1,
        Unit::Tokens => input.saturating_add(output),
        Unit::InputTokens => input,
        Unit::OutputTokens => output,
        Unit::UsdMicros => match req.estimated_cost_micros {
            Some(c) => c.max(0),
            None => {
                return Err(format!(
                    "the cost of this request cannot be estimated because model `{}` has no price; add it to the price table",
                    req.model.as_deref().unwrap_or("(none)")
                ));
            }
        },
    })
}

/// Real usage in `unit`.
fn actual_amount(unit: Unit, actual: &TokenCounts, cost_micros: i64) -> i64 {
    match unit {
        Unit::Requests => 0,
        Unit::Tokens => to_i64(actual.total()),
        Unit::InputTokens => to_i64(actual.input_tokens),
        Unit::OutputTokens => to_i64(actual.output_tokens),
        Unit::UsdMicros => cost_micros.max(0),
    }
}

/// The counter key of `rule` for the request bound in `act`.
fn counter_key(rule: &Rule, tenant: &str, act: &Activation<'_>) -> Result<CounterKey, String> {
    match rule.key_expr() {
        None => Ok(CounterKey::new(&rule.name, "tenant", tenant)),
        Some(k) => {
            let v = k.eval_string(act).map_err(|e| format!("the key {e}"))?;
            Ok(CounterKey::new(&rule.name, &key_label(k), &v))
        }
    }
}

fn key_label(k: &CompiledExpr) -> String {
    if k.is_simple_path() {
        k.source.trim().to_owned()
    } else {
        "key".to_owned()
    }
}

fn eval_match(rule: &Rule, act: &Activation<'_>) -> Result<bool, String> {
    match &rule.match_ {
        None => Ok(true),
        Some(m) => m
            .eval_bool(act)
            .map_err(|e| format!("the match expression {e}")),
    }
}

fn read(meter: &mut Meter, shape: Shape, limit: i64, amount: i64, now: Timestamp) -> Reading {
    match (meter, shape) {
        (Meter::Window(w), Shape::Window { window_us, .. }) => {
            let window = (now.plus_micros(-window_us), now);
            match w.check(limit, amount, now) {
                Ok(()) => Reading {
                    fits: true,
                    used: w.settled(now).saturating_add(w.in_flight),
                    in_flight: w.in_flight,
                    window,
                    reset_at: None,
                },
                Err(r) => Reading {
                    fits: false,
                    used: r.used,
                    in_flight: r.in_flight,
                    window,
                    reset_at: r.retry_at,
                },
            }
        }
        (Meter::Bucket(b), Shape::Bucket { window_us, .. }) => {
            let window = (now.plus_micros(-window_us), now);
            match b.check(limit, amount, now) {
                Ok(()) => Reading {
                    fits: true,
                    used: b.used(limit, now),
                    in_flight: b.in_flight,
                    window,
                    reset_at: None,
                },
                Err(r) => Reading {
                    fits: false,
                    used: r.used,
                    in_flight: r.in_flight,
                    window,
                    reset_at: r.retry_at,
                },
            }
        }
        (Meter::Cap(c), Shape::Cap { period, tz, .. }) => {
            c.roll(period, tz, now);
            let fits = c.fits(limit, amount);
            Reading {
                fits,
                used: c.settled.saturating_add(c.in_flight),
                in_flight: c.in_flight,
                window: (c.period_start, c.period_end),
                reset_at: (!fits && amount <= limit).then_some(c.period_end),
            }
        }
        // A counter always carries the meter of its shape.
        _ => Reading {
            fits: true,
            used: 0,
            in_flight: 0,
            window: (now, now),
            reset_at: None,
        },
    }
}

/// Count or reserve `amount`; true when it is a reservation to settle later.
fn apply(meter: &mut Meter, unit: Unit, limit: i64, amount: i64, now: Timestamp) -> bool {
    let reserve = unit != Unit::Requests;
    match meter {
        Meter::Window(w) => {
            if reserve {
                w.reserve(amount);
            } else {
                w.add(amount, now);
            }
        }
        Meter::Bucket(b) => b.take(limit, amount, reserve, now),
        Meter::Cap(c) => c.reserve(amount),
    }
    reserve
}

/// Replace every hold of `res` by real usage (once).
fn release(res: &Reservation, actual: &TokenCounts, cost_micros: i64, now: Timestamp) {
    if res.settled.swap(true, Ordering::AcqRel) {
        return;
    }
    for h in &res.holds {
        let real = actual_amount(h.counter.shape.unit(), actual, cost_micros);
        let limit = h.rule.limit().map_or(0, |(l, _)| l);
        let mut st = h.counter.state.lock();
        match (&mut st.meter, h.counter.shape) {
            (Meter::Window(w), _) => w.settle(h.amount, real, now),
            (Meter::Bucket(b), _) => b.settle(limit, h.amount, real, now),
            (Meter::Cap(c), Shape::Cap { period, tz, .. }) => {
                c.roll(period, tz, now);
                c.settle(h.amount, real, now);
            }
            (Meter::Cap(c), _) => c.settle(h.amount, real, now),
        }
    }
}

fn decision(
    header: &EventHeader,
    now: Timestamp,
    rule: &Rule,
    outcome: Outcome,
    reason: String,
) -> DecisionEvent {
    let mut h = header.clone();
    h.event_id = EventId::new();
    h.occurred_at = now;
    DecisionEvent::new(h, outcome, &rule.name, rule.kind(), reason)
}

fn shadow(reason: &str) -> String {
    format!("shadow rule, not enforced: {reason}")
}

/// Reason, decision and retry time of a plan's reading.
fn limit_decision(
    header: &EventHeader,
    now: Timestamp,
    plan: &Plan,
    req: &RequestAttrs,
    r: &Reading,
    outcome: Outcome,
) -> DecisionEvent {
    let unit = plan.shape.unit();
    let facts = Facts {
        subject: &plan.key.subject,
        unit,
        limit: plan.limit,
        used: r.used,
        in_flight: r.in_flight,
        amount: plan.amount,
        now,
        reset_at: r.reset_at,
    };
    let mut reason = match plan.shape {
        Shape::Window { window_us, .. } => rate_limit::reason(&facts, window_us, false, r.fits),
        Shape::Bucket { window_us, .. } => rate_limit::reason(&facts, window_us, true, r.fits),
        Shape::Cap { period, tz, .. } => usage_cap::reason(&facts, period, tz, r.fits),
    };
    if let Some(extra) = &plan.rule.reason {
        reason = format!("{reason} — {extra}");
    }
    if outcome == Outcome::ShadowDeny {
        reason = shadow(&reason);
    }
    let mut d = decision(header, now, &plan.rule, outcome, reason);
    fill_counter(
        &mut d,
        &plan.key.key,
        plan.limit,
        unit,
        r.used,
        r.window,
        r.reset_at,
    );
    fill_reserved(
        &mut d,
        unit,
        plan.amount,
        req.estimated_input_tokens,
        req.max_output_tokens,
        req.estimated_cost_micros,
    );
    d
}

fn fill_counter(
    d: &mut DecisionEvent,
    key: &str,
    limit: i64,
    unit: Unit,
    used: i64,
    window: (Timestamp, Timestamp),
    reset_at: Option<Timestamp>,
) {
    d.counter_key = Some(key.to_owned());
    d.counter_value = Some(used);
    d.counter_limit = Some(limit);
    d.counter_unit = Some(unit.counter_unit());
    d.window_start = Some(window.0);
    d.window_end = Some(window.1);
    d.reset_at = reset_at;
}

/// Tokens and cost this request reserves against a counter of `unit` (nothing for a
/// request count; for a dollar cap, the tokens its cost estimate covers).
fn fill_reserved(
    d: &mut DecisionEvent,
    unit: Unit,
    amount: i64,
    input: u64,
    max_output: u64,
    cost: Option<i64>,
) {
    match unit {
        Unit::Requests => {}
        Unit::UsdMicros => {
            d.reserved_tokens = Some(input.saturating_add(max_output));
            d.reserved_cost_micros = Some(amount);
        }
        Unit::Tokens | Unit::InputTokens | Unit::OutputTokens => {
            d.reserved_tokens = Some(u64::try_from(amount).unwrap_or(0));
            d.reserved_cost_micros = cost;
        }
    }
}

/// A refusal before any counter was touched (access rule, or a rule that failed).
fn refuse(
    header: &EventHeader,
    now: Timestamp,
    rule: &Rule,
    reason: String,
    extra: impl FnOnce(&mut DecisionEvent),
) -> Evaluation {
    let mut d = decision(header, now, rule, Outcome::Deny, reason.clone());
    extra(&mut d);
    Evaluation {
        decisions: vec![d],
        verdict: Verdict::Deny {
            rule: rule.name.to_string(),
            status: rule.status,
            message: reason,
            retry_after_secs: None,
        },
        limits: RateLimits::default(),
    }
}

/// The tightest request and token counters among the enforced plans, after this
/// request (`admitted`: its amount counts against what remains).
fn rate_limits(plans: &[Plan], readings: &[Reading], admitted: bool, now: Timestamp) -> RateLimits {
    let mut out = RateLimits::default();
    for (p, r) in plans.iter().zip(readings) {
        if p.rule.mode != Mode::Enforce {
            continue;
        }
        let slot = match p.shape.unit() {
            Unit::Requests => &mut out.requests,
            Unit::Tokens | Unit::InputTokens | Unit::OutputTokens => &mut out.tokens,
            Unit::UsdMicros => continue,
        };
        let taken = if admitted { p.amount } else { 0 };
        let remaining = p.limit.saturating_sub(r.used).saturating_sub(taken).max(0);
        let reset_at = r.reset_at.unwrap_or(match p.shape {
            Shape::Window { window_us, .. } | Shape::Bucket { window_us, .. } => {
                now.plus_micros(window_us)
            }
            Shape::Cap { .. } => r.window.1,
        });
        let status = LimitStatus {
            limit: p.limit,
            remaining,
            reset_at,
        };
        if slot.is_none_or(|s| status.remaining < s.remaining) {
            *slot = Some(status);
        }
    }
    out
}

impl PolicyEngine {
    /// An engine with `set` and no counters.
    pub fn new(set: PolicySet) -> Self {
        Self {
            set: RwLock::new(Arc::new(set)),
            counters: CounterStore::new(),
        }
    }

    /// Swap in a new policy (hot reload). Counters of rules that kept their name and
    /// shape (action, unit, window or period and time zone, algorithm) keep their
    /// values; a changed limit applies at once. Other counters are dropped; requests in
    /// flight settle into the dropped counters harmlessly.
    pub fn replace(&self, set: PolicySet) {
        let shapes: std::collections::HashMap<String, Shape> = set
            .rules
            .iter()
            .filter_map(|r| Shape::of(r).map(|s| (r.name.to_string(), s)))
            .collect();
        *self.set.write() = Arc::new(set);
        self.counters
            .retain(|c, _| shapes.get(&*c.rule).is_some_and(|s| *s == c.shape));
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<PolicySet> {
        self.set.read().clone()
    }

    /// Decide a request and, if it is allowed, reserve its estimated usage against every
    /// matching limit and cap. Access rules decide first (the first matching `deny` or
    /// `allow`); then every matching limit and cap is checked with its counter locked;
    /// the first refusing rule in file order denies.
    pub fn evaluate(&self, req: &RequestAttrs, header: &EventHeader, now: Timestamp) -> Evaluation {
        let set = self.policy();
        if set.rules.is_empty() {
            return Evaluation {
                decisions: Vec::new(),
                verdict: Verdict::Allow(Reservation::empty()),
                limits: RateLimits::default(),
            };
        }
        let vars = Vars::from_request(req, now);
        let act = Activation::new(&set.env, &vars, &set.vars);
        let mut notes: Vec<DecisionEvent> = Vec::new();
        let mut access_decided = false;
        let mut plans: Vec<Plan> = Vec::new();
        for rule in &set.rules {
            let enforce = rule.mode == Mode::Enforce;
            match &rule.action {
                Action::Deny | Action::Allow => {
                    if access_decided {
                        continue;
                    }
                    match access::step(rule, eval_match(rule, &act)) {
                        Step::Pass => {}
                        Step::Allowed => {
                            access_decided = true;
                            if set.emit_allow_decisions {
                                let reason = access::allow_reason(rule);
                                notes.push(decision(header, now, rule, Outcome::Allow, reason));
                            }
                        }
                        Step::Denied(reason) if enforce => {
                            return refuse(header, now, rule, reason, |_| {});
                        }
                        Step::Denied(reason) => {
                            notes.push(decision(
                                header,
                                now,
                                rule,
                                Outcome::ShadowDeny,
                                shadow(&reason),
                            ));
                        }
                    }
                }
                Action::RateLimit(_) | Action::UsageCap(_) => {
                    let planned = eval_match(rule, &act).and_then(|m| {
                        if !m {
                            return Ok(None);
                        }
                        let key = counter_key(rule, &req.tenant, &act)?;
                        let (limit, unit) = rule.limit().unwrap_or((0, Unit::Requests));
                        let amount = request_amount(unit, req)?;
                        Ok(Shape::of(rule).map(|shape| Plan {
                            rule: rule.clone(),
                            shape,
                            limit,
                            key,
                            amount,
                        }))
                    });
                    match planned {
                        Ok(Some(p)) => plans.push(p),
                        Ok(None) => {}
                        Err(e) if rule.on_error == OnError::FailOpen => {
                            tracing::debug!(rule = %rule.name, error = %e, "policy rule skipped (fail_open)");
                        }
                        Err(e) => {
                            let reason = access::error_reason(rule, &e);
                            let fill = |d: &mut DecisionEvent| {
                                if let Some((limit, unit)) = rule.limit() {
                                    d.counter_limit = Some(limit);
                                    d.counter_unit = Some(unit.counter_unit());
                                }
                            };
                            if enforce {
                                return refuse(header, now, rule, reason, fill);
                            }
                            let mut d =
                                decision(header, now, rule, Outcome::ShadowDeny, shadow(&reason));
                            fill(&mut d);
                            notes.push(d);
                        }
                    }
                }
            }
        }
        self.check_and_reserve(&set, plans, notes, req, header, now)
    }

    fn check_and_reserve(
        &self,
        set: &PolicySet,
        plans: Vec<Plan>,
        mut notes: Vec<DecisionEvent>,
        req: &RequestAttrs,
        header: &EventHeader,
        now: Timestamp,
    ) -> Evaluation {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let counters: Vec<Arc<Counter>> = plans
                .iter()
                .map(|p| {
                    self.counters
                        .get_or_create(&p.rule.name, &p.key.key, p.shape, p.limit, now)
                })
                .collect();
            // Lock in ascending id order (no deadlock), then index by plan.
            let mut order: Vec<usize> = (0..counters.len()).collect();
            order.sort_by_key(|&i| counters[i].id);
            let mut locked: Vec<(usize, MutexGuard<'_, CounterState>)> = order
                .into_iter()
                .map(|i| (i, counters[i].state.lock()))
                .collect();
            locked.sort_by_key(|(i, _)| *i);
            let mut guards: Vec<MutexGuard<'_, CounterState>> =
                locked.into_iter().map(|(_, g)| g).collect();
            if attempt < MAX_LOCK_ATTEMPTS && guards.iter().any(|g| g.retired) {
                continue;
            }
            let mut readings = Vec::with_capacity(plans.len());
            let mut refused: Option<usize> = None;
            for (i, (p, g)) in plans.iter().zip(guards.iter_mut()).enumerate() {
                let r = read(&mut g.meter, p.shape, p.limit, p.amount, now);
                if !r.fits && p.rule.mode == Mode::Enforce && refused.is_none() {
                    refused = Some(i);
                }
                readings.push(r);
            }
            if let Some(i) = refused {
                drop(guards);
                let (p, r) = (&plans[i], &readings[i]);
                let d = limit_decision(header, now, p, req, r, Outcome::Deny);
                let message = d.reason.clone();
                return Evaluation {
                    limits: rate_limits(&plans, &readings, false, now),
                    decisions: vec![d],
                    verdict: Verdict::Deny {
                        rule: p.rule.name.to_string(),
                        status: p.rule.status,
                        message,
                        retry_after_secs: r
                            .reset_at
                            .map(|at| rate_limit::retry_after_secs(now, at)),
                    },
                };
            }
            let mut holds = Vec::new();
            for (i, (p, g)) in plans.iter().zip(guards.iter_mut()).enumerate() {
                if apply(&mut g.meter, p.shape.unit(), p.limit, p.amount, now) {
                    holds.push(Hold {
                        counter: counters[i].clone(),
                        rule: p.rule.clone(),
                        subject: p.key.subject.clone(),
                        amount: p.amount,
                        shadow_cut_reported: AtomicBool::new(false),
                    });
                }
            }
            drop(guards);
            for (p, r) in plans.iter().zip(&readings) {
                if !r.fits {
                    notes.push(limit_decision(header, now, p, req, r, Outcome::ShadowDeny));
                } else if set.emit_allow_decisions {
                    notes.push(limit_decision(header, now, p, req, r, Outcome::Allow));
                }
            }
            return Evaluation {
                limits: rate_limits(&plans, &readings, true, now),
                decisions: notes,
                verdict: Verdict::Allow(Reservation {
                    holds,
                    estimated_input: req.estimated_input_tokens,
                    max_output: req.max_output_tokens,
                    settled: AtomicBool::new(false),
                }),
            };
        }
    }

    /// Replace a reservation by the real usage of the request (all attempts together;
    /// zeros if it consumed nothing). Settling twice has no effect.
    pub fn settle(
        &self,
        reservation: &Reservation,
        actual: &TokenCounts,
        actual_cost_micros: i64,
        now: Timestamp,
    ) {
        release(reservation, actual, actual_cost_micros, now);
    }

    /// Check a streaming response against the caps with `on_exceed: cut`: cut when
    /// `settled + other requests' reservations + this response's usage so far > limit`.
    /// `output_tokens_so_far` and `cost_so_far_micros` are this request's running
    /// figures (cost including its input).
    pub fn check_stream(
        &self,
        reservation: &Reservation,
        output_tokens_so_far: u64,
        cost_so_far_micros: i64,
        header: &EventHeader,
        now: Timestamp,
    ) -> StreamVerdict {
        for h in &reservation.holds {
            let Some(cap) = cut_cap(&h.rule) else {
                continue;
            };
            let shadow_mode = h.rule.mode == Mode::Shadow;
            if shadow_mode && h.shadow_cut_reported.load(Ordering::Acquire) {
                continue;
            }
            let input = to_i64(reservation.estimated_input);
            let output = to_i64(output_tokens_so_far);
            let running = match cap.unit {
                Unit::Tokens | Unit::Requests => input.saturating_add(output),
                Unit::InputTokens => input,
                Unit::OutputTokens => output,
                Unit::UsdMicros => cost_so_far_micros.max(0),
            };
            let (exceeds, used, others, window) = {
                let mut st = h.counter.state.lock();
                if st.retired {
                    // The rule was removed or changed by a reload.
                    continue;
                }
                let Meter::Cap(c) = &mut st.meter else {
                    continue;
                };
                c.roll(cap.period, cap.tz, now);
                let others = c.in_flight.saturating_sub(h.amount).max(0);
                (
                    c.stream_exceeds(cap.limit, h.amount, running),
                    c.settled.saturating_add(others),
                    others,
                    (c.period_start, c.period_end),
                )
            };
            if !exceeds {
                continue;
            }
            let facts = Facts {
                subject: &h.subject,
                unit: cap.unit,
                limit: cap.limit,
                used,
                in_flight: others,
                amount: h.amount,
                now,
                reset_at: Some(window.1),
            };
            let mut reason =
                usage_cap::cut_reason(&facts, cap.period, cap.tz, running, output_tokens_so_far);
            if let Some(extra) = &h.rule.reason {
                reason = format!("{reason} — {extra}");
            }
            let outcome = if shadow_mode {
                reason = shadow(&reason);
                Outcome::ShadowDeny
            } else {
                Outcome::Deny
            };
            let mut d = decision(header, now, &h.rule, outcome, reason.clone());
            fill_counter(
                &mut d,
                &h.counter.key,
                cap.limit,
                cap.unit,
                used,
                window,
                Some(window.1),
            );
            let est_cost = (cap.unit == Unit::UsdMicros).then_some(h.amount);
            fill_reserved(
                &mut d,
                cap.unit,
                h.amount,
                reservation.estimated_input,
                reservation.max_output,
                est_cost,
            );
            if shadow_mode {
                if h.shadow_cut_reported.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return StreamVerdict::ShadowCut { decision: d };
            }
            return StreamVerdict::Cut {
                decision: d,
                message: reason,
            };
        }
        StreamVerdict::Continue
    }

    /// Fold one historical usage event into the counters (on restart, replaying the
    /// log in order). Every limit and cap whose match and key evaluate on the event's
    /// fields counts it at its `occurred_at`: requests once per request (attempt 0),
    /// tokens and cost of every attempt. Denied requests count nowhere. Rules reading
    /// `headers` see none; `input_tokens` and `max_output_tokens` are the real input
    /// and output tokens.
    pub fn rebuild(&self, usage: &UsageEvent) {
        if Vars::was_denied(usage) {
            return;
        }
        let set = self.policy();
        let vars = Vars::from_usage(usage);
        let act = Activation::new(&set.env, &vars, &set.vars);
        let at = usage.header.occurred_at;
        for rule in &set.rules {
            let (Some((limit, unit)), Some(shape)) = (rule.limit(), Shape::of(rule)) else {
                continue;
            };
            if !matches!(eval_match(rule, &act), Ok(true)) {
                continue;
            }
            let Ok(key) = counter_key(rule, &usage.header.tenant, &act) else {
                continue;
            };
            let amount = match unit {
                Unit::Requests if usage.retry_attempt == 0 => 1,
                Unit::Requests => continue,
                _ => actual_amount(unit, &usage.tokens, usage.cost_micros),
            };
            for attempt in 1..=MAX_LOCK_ATTEMPTS {
                let c = self
                    .counters
                    .get_or_create(&rule.name, &key.key, shape, limit, at);
                let mut st = c.state.lock();
                if st.retired && attempt < MAX_LOCK_ATTEMPTS {
                    continue;
                }
                match (&mut st.meter, shape) {
                    (Meter::Window(w), _) => w.add(amount, at),
                    (Meter::Bucket(b), _) => b.take(limit, amount, false, at),
                    (Meter::Cap(m), Shape::Cap { period, tz, .. }) => {
                        m.roll(period, tz, at);
                        m.settle(0, amount, at);
                    }
                    (Meter::Cap(_), _) => {}
                }
                break;
            }
        }
    }

    /// Evaluate `req` like [`PolicyEngine::evaluate`] (reserving when allowed) and report
    /// every rule's part: whether its `match` held, the counter the request falls in, and
    /// that counter before and after. For `tally policy test`; the proxy uses `evaluate`.
    pub fn explain(&self, req: &RequestAttrs, header: &EventHeader, now: Timestamp) -> Explanation {
        let set = self.policy();
        let vars = Vars::from_request(req, now);
        let act = Activation::new(&set.env, &vars, &set.vars);
        let level = |snap: Vec<CounterSnapshot>| -> std::collections::HashMap<String, i64> {
            snap.into_iter()
                .map(|c| (c.counter_key, c.value.saturating_add(c.in_flight)))
                .collect()
        };
        let before = level(self.snapshot(now));
        let mut access_decided = false;
        let mut rules: Vec<RuleTrace> = Vec::with_capacity(set.rules.len());
        for rule in &set.rules {
            let mut t = RuleTrace {
                rule: rule.name.to_string(),
                kind: rule.kind(),
                mode: if rule.mode == Mode::Enforce {
                    "enforce"
                } else {
                    "shadow"
                },
                matched: None,
                error: None,
                counter_key: None,
                unit: None,
                limit: None,
                amount: None,
                before: None,
                after: None,
            };
            let access = matches!(rule.action, Action::Deny | Action::Allow);
            if !(access && access_decided) {
                match eval_match(rule, &act) {
                    Ok(m) => t.matched = Some(m),
                    Err(e) => t.error = Some(e),
                }
            }
            if access && t.matched == Some(true) && rule.mode == Mode::Enforce {
                access_decided = true;
            }
            if let (Some(true), Some((limit, unit))) = (t.matched, rule.limit()) {
                t.limit = Some(limit);
                t.unit = Some(unit.counter_unit());
                match counter_key(rule, &req.tenant, &act) {
                    Ok(k) => {
                        t.before = Some(before.get(&k.key).copied().unwrap_or(0));
                        t.counter_key = Some(k.key);
                    }
                    Err(e) => t.error = Some(e),
                }
                match request_amount(unit, req) {
                    Ok(a) => t.amount = Some(a),
                    Err(e) => t.error = Some(e),
                }
            }
            rules.push(t);
        }
        let evaluation = self.evaluate(req, header, now);
        let after = level(self.snapshot(now));
        for t in &mut rules {
            if let Some(k) = &t.counter_key {
                t.after = Some(after.get(k).copied().unwrap_or(0));
            }
        }
        Explanation { rules, evaluation }
    }

    /// The oldest instant whose usage can still count in some counter at `now`: the start
    /// of each cap's current period (in its time zone) and `now − window` of each rate
    /// limit, whichever is earliest. `None` when no rule counts anything. Rebuilding
    /// folds the usage since then ([`PolicyEngine::rebuild`]); older usage cannot matter.
    pub fn history_start(&self, now: Timestamp) -> Option<Timestamp> {
        let set = self.policy();
        set.rules
            .iter()
            .filter_map(|rule| match Shape::of(rule)? {
                Shape::Window { window_us, .. } | Shape::Bucket { window_us, .. } => {
                    Some(now.plus_micros(-window_us))
                }
                Shape::Cap { period, tz, .. } => Some(period::bounds(period, tz, now).0),
            })
            .min()
    }

    /// Every counter's state at `now`, in creation order.
    pub fn snapshot(&self, now: Timestamp) -> Vec<CounterSnapshot> {
        let set = self.policy();
        self.counters
            .all()
            .into_iter()
            .filter_map(|c| {
                let (limit, unit) = set
                    .rules
                    .iter()
                    .find(|r| *r.name == *c.rule)
                    .and_then(|r| r.limit())?;
                let mut st = c.state.lock();
                let (value, in_flight, window) = match (&mut st.meter, c.shape) {
                    (Meter::Window(w), Shape::Window { window_us, .. }) => (
                        w.settled(now),
                        w.in_flight,
                        (now.plus_micros(-window_us), now),
                    ),
                    (Meter::Bucket(b), Shape::Bucket { window_us, .. }) => {
                        let used = b.used(limit, now);
                        (
                            used.saturating_sub(b.in_flight),
                            b.in_flight,
                            (now.plus_micros(-window_us), now),
                        )
                    }
                    (Meter::Cap(m), Shape::Cap { period, tz, .. }) => {
                        m.roll(period, tz, now);
                        (m.settled, m.in_flight, (m.period_start, m.period_end))
                    }
                    _ => return None,
                };
                Some(CounterSnapshot {
                    rule: c.rule.to_string(),
                    counter_key: c.key.clone(),
                    unit: unit.counter_unit(),
                    limit,
                    value,
                    in_flight,
                    window_start: window.0,
                    window_end: window.1,
                })
            })
            .collect()
    }

    /// Drop counters with nothing settled in their current window or period and nothing
    /// in flight (a new request simply starts them again). Call it now and then (every
    /// minute) so counters keyed by client-controlled values cannot grow without bound.
    /// Returns how many were dropped.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let set = self.policy();
        self.counters.retain(|c, st| {
            let limit = set
                .rules
                .iter()
                .find(|r| *r.name == *c.rule)
                .and_then(|r| r.limit())
                .map_or(0, |(l, _)| l);
            let idle = match (&mut st.meter, c.shape) {
                (Meter::Window(w), _) => w.idle(now),
                (Meter::Bucket(b), _) => b.idle(limit, now),
                (Meter::Cap(m), Shape::Cap { period, tz, .. }) => {
                    m.roll(period, tz, now);
                    m.idle()
                }
                (Meter::Cap(m), _) => m.idle(),
            };
            !idle
        })
    }
}
