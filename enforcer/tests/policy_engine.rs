//! Policy engine behaviour: access rules, limits, caps, decisions, streams, reloads and
//! rebuilding counters from usage events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tally_enforcer::policy::{
    CounterSnapshot, Evaluation, PolicyEngine, PolicySet, RequestAttrs, Reservation, StreamVerdict,
    Verdict,
};
use tally_events::{
    CounterUnit, EventHeader, FinishState, Outcome, Provider, Route, RuleKind, Timestamp,
    TokenCounts, UsageEvent, UsageSource,
};

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

const NOW: &str = "2026-11-25T10:00:00Z";

fn engine(yaml: &str) -> PolicyEngine {
    PolicyEngine::new(PolicySet::parse(yaml).unwrap())
}

fn req(tenant: &str, key: &str, model: &str) -> RequestAttrs {
    RequestAttrs {
        tenant: tenant.into(),
        key_id: Some(key.into()),
        labels: BTreeMap::new(),
        provider: Some(Provider::Openai),
        route: Some(Route::Chat),
        model: Some(model.into()),
        headers: BTreeMap::new(),
        estimated_input_tokens: 100,
        max_output_tokens: 200,
        estimated_cost_micros: Some(300_000),
    }
}

fn header(r: &RequestAttrs) -> EventHeader {
    let mut h = EventHeader::new("gw-test", "req_1", &r.tenant);
    h.api_key_id = r.key_id.clone();
    h.labels = r.labels.clone();
    h.provider = r.provider;
    h.route = r.route;
    h.model_requested = r.model.clone();
    h
}

fn eval(e: &PolicyEngine, r: &RequestAttrs, now: Timestamp) -> Evaluation {
    e.evaluate(r, &header(r), now)
}

fn allowed(ev: Evaluation) -> Reservation {
    match ev.verdict {
        Verdict::Allow(res) => res,
        Verdict::Deny { message, .. } => panic!("denied: {message}"),
    }
}

fn denied(ev: &Evaluation) -> (&str, u16, &str, Option<u64>) {
    match &ev.verdict {
        Verdict::Deny {
            rule,
            status,
            message,
            retry_after_secs,
        } => (rule, *status, message, *retry_after_secs),
        Verdict::Allow(_) => panic!("allowed, decisions: {:?}", ev.decisions),
    }
}

fn tokens(input: u64, output: u64) -> TokenCounts {
    TokenCounts {
        input_tokens: input,
        output_tokens: output,
        ..TokenCounts::default()
    }
}

fn value_of(e: &PolicyEngine, key: &str, now: Timestamp) -> Option<CounterSnapshot> {
    e.snapshot(now).into_iter().find(|s| s.counter_key == key)
}

#[test]
fn no_rules_allow_everything_and_hold_nothing() {
    let e = PolicyEngine::new(PolicySet::empty());
    let ev = eval(&e, &req("acme", "k1", "gpt-4o"), ts(NOW));
    assert!(ev.decisions.is_empty());
    let res = allowed(ev);
    assert!(res.is_empty());
    assert!(!res.needs_stream_checks());
}

#[test]
fn a_deny_rule_blocks_with_an_explained_decision() {
    let e = engine(
        r#"rules:
  - name: block-leaked-key
    match: key_id == "k-leaked"
    action: deny
    reason: this key was revoked; create a new one
"#,
    );
    let r = req("acme", "k-leaked", "gpt-4o");
    let h = header(&r);
    let ev = e.evaluate(&r, &h, ts(NOW));
    let (rule, status, message, retry) = denied(&ev);
    assert_eq!((rule, status, retry), ("block-leaked-key", 403, None));
    assert_eq!(
        message,
        "this key was revoked; create a new one (policy rule `block-leaked-key`)"
    );
    let [d] = ev.decisions.as_slice() else {
        panic!("{:?}", ev.decisions)
    };
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.rule_kind, RuleKind::Access);
    assert_eq!(d.reason, message);
    assert_eq!(d.header.request_id, "req_1");
    assert_ne!(
        d.header.event_id, h.event_id,
        "each decision gets its own id"
    );
    assert_eq!(d.header.occurred_at, ts(NOW));
    assert!(allowed(eval(&e, &req("acme", "k-ok", "gpt-4o"), ts(NOW))).is_empty());
}

#[test]
fn allow_lists_stop_access_rules_but_not_limits() {
    let e = engine(
        r#"rules:
  - name: acme-models
    match: tenant == "acme" && model in ["gpt-4o-mini", "claude-haiku-4-5"]
    action: allow
  - name: acme-other-models
    match: tenant == "acme"
    action: deny
  - name: rpm
    action: rate-limit
    limit: 1
    window: 1m
"#,
    );
    let now = ts(NOW);
    let ev = eval(&e, &req("acme", "k1", "gpt-4o"), now);
    let (rule, _, message, _) = denied(&ev);
    assert_eq!(rule, "acme-other-models");
    assert!(
        message.contains("because the request matches `tenant == \"acme\"`"),
        "{message}"
    );
    allowed(eval(&e, &req("acme", "k1", "gpt-4o-mini"), now));
    // The allow rule matched, yet the rate limit still applies.
    let ev = eval(&e, &req("acme", "k1", "gpt-4o-mini"), now);
    assert_eq!(denied(&ev).0, "rpm");
    // Other tenants are not affected by the allow-list.
    allowed(eval(&e, &req("globex", "k9", "gpt-4o"), now));
}

#[test]
fn shadow_rules_record_but_never_deny() {
    let e = engine(
        r#"rules:
  - name: would-block
    match: model.startsWith("gpt-4o")
    action: deny
    mode: shadow
  - name: trial-rpm
    action: rate-limit
    limit: 1
    window: 1m
    mode: shadow
"#,
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    let ev = eval(&e, &r, now);
    let outcomes: Vec<(&str, Outcome)> = ev
        .decisions
        .iter()
        .map(|d| (d.rule.as_str(), d.outcome))
        .collect();
    assert_eq!(outcomes, [("would-block", Outcome::ShadowDeny)]);
    assert!(
        ev.decisions[0]
            .reason
            .starts_with("shadow rule, not enforced: ")
    );
    allowed(ev);
    let ev = eval(&e, &r, now);
    let d = &ev.decisions[1];
    assert_eq!(
        (d.rule.as_str(), d.outcome),
        ("trial-rpm", Outcome::ShadowDeny)
    );
    assert_eq!(d.counter_key.as_deref(), Some("trial-rpm:tenant=acme"));
    assert_eq!((d.counter_value, d.counter_limit), (Some(1), Some(1)));
    allowed(ev);
    // Shadow counters count real traffic: two requests went through.
    assert_eq!(value_of(&e, "trial-rpm:tenant=acme", now).unwrap().value, 2);
}

#[test]
fn on_error_fails_closed_by_default_and_open_when_asked() {
    let yaml = |on_error: &str| {
        format!(
            "rules:\n  - name: ml-only\n    match: labels.team == 'ml'\n    action: deny\n    {on_error}\n  - name: budget\n    action: usage-cap\n    limit_usd: 10\n    period: day\n    {on_error}\n"
        )
    };
    let mut r = req("acme", "k1", "gpt-4o");
    let now = ts(NOW);
    let closed = engine(&yaml(""));
    let ev = eval(&closed, &r, now);
    let (rule, status, message, _) = denied(&ev);
    assert_eq!((rule, status), ("ml-only", 403));
    assert!(message.contains("could not be evaluated"), "{message}");
    assert!(message.contains("has(labels.team)"), "{message}");
    assert!(message.contains("on_error: fail_open"), "{message}");
    // An unpriced model cannot be checked against a dollar cap.
    r.labels.insert("team".into(), "web".into());
    r.estimated_cost_micros = None;
    let ev = eval(&closed, &r, now);
    let (rule, status, message, _) = denied(&ev);
    assert_eq!((rule, status), ("budget", 429));
    assert!(message.contains("model `gpt-4o` has no price"), "{message}");
    assert_eq!(ev.decisions[0].counter_unit, Some(CounterUnit::UsdMicros));

    let open = engine(&yaml("on_error: fail_open"));
    r.labels.clear();
    let ev = eval(&open, &r, now);
    assert!(ev.decisions.is_empty());
    assert!(allowed(ev).is_empty());
}

#[test]
fn a_dollar_cap_reserves_settles_and_explains() {
    let e = engine(
        r#"rules:
  - name: acme-monthly
    action: usage-cap
    limit_usd: 1.00
    period: month
    reason: ask billing to raise it
"#,
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o"); // reserves $0.30
    let held: Vec<Reservation> = (0..3).map(|_| allowed(eval(&e, &r, now))).collect();
    let snap = value_of(&e, "acme-monthly:tenant=acme", now).unwrap();
    assert_eq!(
        (snap.value, snap.in_flight, snap.limit),
        (0, 900_000, 1_000_000)
    );
    assert_eq!(snap.unit, CounterUnit::UsdMicros);
    assert_eq!(
        (snap.window_start, snap.window_end),
        (ts("2026-11-01T00:00:00Z"), ts("2026-12-01T00:00:00Z"))
    );

    // $0.90 in flight + $0.30 > $1.00.
    let ev = eval(&e, &r, now);
    let (rule, status, message, retry) = denied(&ev);
    assert_eq!((rule, status), ("acme-monthly", 429));
    assert_eq!(
        message,
        "the monthly budget of $1.00 for tenant acme would be exceeded: $0.00 spent + $0.90 reserved by requests in flight + $0.30 reserved by this request (estimated input + max output) > $1.00; resets 2026-12-01T00:00:00Z — ask billing to raise it"
    );
    assert_eq!(retry, Some(5 * 86_400 + 14 * 3_600));
    let d = &ev.decisions[0];
    assert_eq!(d.rule_kind, RuleKind::UsageCap);
    assert_eq!(d.counter_key.as_deref(), Some("acme-monthly:tenant=acme"));
    assert_eq!(d.counter_value, Some(900_000));
    assert_eq!(d.counter_limit, Some(1_000_000));
    assert_eq!(d.counter_unit, Some(CounterUnit::UsdMicros));
    assert_eq!(d.window_start, Some(ts("2026-11-01T00:00:00Z")));
    assert_eq!(d.window_end, Some(ts("2026-12-01T00:00:00Z")));
    assert_eq!(d.reset_at, Some(ts("2026-12-01T00:00:00Z")));
    assert_eq!(d.reserved_cost_micros, Some(300_000));
    assert_eq!(d.reserved_tokens, Some(300));

    // Settling on less than reserved makes room; settling twice changes nothing.
    e.settle(&held[0], &tokens(100, 20), 50_000, now);
    e.settle(&held[0], &tokens(100, 20), 50_000, now);
    let snap = value_of(&e, "acme-monthly:tenant=acme", now).unwrap();
    assert_eq!((snap.value, snap.in_flight), (50_000, 600_000));
    let fourth = allowed(eval(&e, &r, now));
    // Settling on more than reserved is counted in full.
    e.settle(&held[1], &tokens(100, 900), 700_000, now);
    e.settle(&held[2], &TokenCounts::default(), 0, now);
    e.settle(&fourth, &tokens(1, 1), 250_000, now);
    let snap = value_of(&e, "acme-monthly:tenant=acme", now).unwrap();
    assert_eq!((snap.value, snap.in_flight), (1_000_000, 0));
    let ev = eval(&e, &r, now);
    assert!(
        denied(&ev).2.starts_with(
            "the monthly budget of $1.00 for tenant acme is exhausted: $1.00 spent + $0.30"
        ),
        "{}",
        denied(&ev).2
    );
    // Next month the budget is fresh.
    allowed(eval(&e, &r, ts("2026-12-01T00:00:00Z")));
}

#[test]
fn sequential_requests_stop_exactly_at_the_limit() {
    let e = engine(
        r#"rules:
  - name: rpm
    action: rate-limit
    limit: 5
    window: 1m
    key: key_id
  - name: daily-tokens
    action: usage-cap
    limit_tokens: 3000
    period: day
"#,
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o"); // 300 tokens reserved
    for _ in 0..5 {
        let res = allowed(eval(&e, &r, now));
        e.settle(&res, &tokens(100, 200), 1, now);
    }
    let ev = eval(&e, &r, now);
    let (rule, _, message, retry) = denied(&ev);
    assert_eq!(rule, "rpm");
    assert_eq!(
        message,
        "the rate limit of 5 requests per 1m for key_id k1 is reached: 5 requests in the last 1m + 1 for this request > 5 requests; retry in 63s (at 2026-11-25T10:01:03Z)"
    );
    assert_eq!(retry, Some(63));
    let d = &ev.decisions[0];
    assert_eq!(d.counter_key.as_deref(), Some("rpm:key_id=k1"));
    assert_eq!(d.counter_unit, Some(CounterUnit::Requests));
    assert_eq!(
        (d.window_start, d.window_end),
        (Some(ts("2026-11-25T09:59:00Z")), Some(now))
    );
    assert_eq!(d.reset_at, Some(ts("2026-11-25T10:01:03Z")));
    assert_eq!((d.reserved_tokens, d.reserved_cost_micros), (None, None));
    // The refused request left no trace: the token cap holds exactly 5 × 300.
    assert_eq!(
        value_of(&e, "daily-tokens:tenant=acme", now).unwrap().value,
        1500
    );

    // Other keys have their own window; the tenant's token cap stops exactly at 3000.
    for i in 0..5 {
        let r = req("acme", &format!("k{}", i + 2), "gpt-4o");
        let res = allowed(eval(&e, &r, now));
        e.settle(&res, &tokens(100, 200), 1, now);
    }
    let ev = eval(&e, &req("acme", "k9", "gpt-4o"), now);
    assert_eq!(denied(&ev).0, "daily-tokens");
    assert_eq!(ev.decisions[0].counter_value, Some(3000));
    assert_eq!(
        value_of(&e, "daily-tokens:tenant=acme", now).unwrap().value,
        3000
    );
    // After the window slides the key may send again (the cap still refuses).
    let later = ts("2026-11-25T10:01:03Z");
    assert_eq!(denied(&eval(&e, &r, later)).0, "daily-tokens");
}

#[test]
fn token_rate_limits_reserve_the_estimate_and_settle_to_real_usage() {
    let e = engine(
        r#"rules:
  - name: tpm
    action: rate-limit
    limit: 1000
    unit: tokens
    window: 1m
"#,
    );
    let now = ts(NOW);
    let mut r = req("acme", "k1", "gpt-4o");
    r.estimated_input_tokens = 400;
    r.max_output_tokens = 400;
    let a = allowed(eval(&e, &r, now));
    let ev = eval(&e, &r, now);
    let (_, _, message, retry) = denied(&ev);
    assert!(
        message.contains("800 tokens in the last 1m (of which 800 tokens reserved by requests in flight) + 800 tokens reserved by this request (estimated input + max output) > 1,000 tokens"),
        "{message}"
    );
    assert!(retry.is_some());
    assert_eq!(ev.decisions[0].reserved_tokens, Some(800));
    e.settle(&a, &tokens(150, 50), 10, now);
    let _b = allowed(eval(&e, &r, now));
    let s = value_of(&e, "tpm:tenant=acme", now).unwrap();
    assert_eq!((s.value, s.in_flight), (200, 800));
}

#[test]
fn token_buckets_refill_continuously() {
    let e = engine(
        r#"rules:
  - name: burst
    action: rate-limit
    algorithm: token_bucket
    limit: 3
    window: 3s
"#,
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    for _ in 0..3 {
        allowed(eval(&e, &r, now));
    }
    let ev = eval(&e, &r, now);
    let (_, _, message, retry) = denied(&ev);
    assert_eq!(
        message,
        "the rate limit of 3 requests per 3s (token bucket) for tenant acme is reached: 0 requests available, 1 for this request; retry in 1s (at 2026-11-25T10:00:01Z)"
    );
    assert_eq!(retry, Some(1));
    assert!(matches!(
        eval(&e, &r, now.plus_micros(999_999)).verdict,
        Verdict::Deny { .. }
    ));
    allowed(eval(&e, &r, now.plus_micros(1_000_000)));
}

#[test]
fn caps_follow_the_calendar_of_their_time_zone() {
    let e = engine(
        r#"rules:
  - name: paris-daily
    action: usage-cap
    limit_tokens: 300
    period: day
    timezone: Europe/Paris
"#,
    );
    // 23:30 UTC on Nov 25 is already Nov 26 in Paris.
    let now = ts("2026-11-25T23:30:00Z");
    let r = req("acme", "k1", "gpt-4o");
    let res = allowed(eval(&e, &r, now));
    e.settle(&res, &tokens(100, 200), 1, now);
    let ev = eval(&e, &r, now);
    let d = &ev.decisions[0];
    assert_eq!(d.window_start, Some(ts("2026-11-25T23:00:00Z")));
    assert_eq!(d.reset_at, Some(ts("2026-11-26T23:00:00Z")));
    assert!(
        d.reason.ends_with("resets 2026-11-27T00:00:00+01:00"),
        "{}",
        d.reason
    );
}

#[test]
fn streams_are_cut_when_a_cut_cap_would_be_exceeded() {
    let e = engine(
        r#"rules:
  - name: daily-tokens
    action: usage-cap
    limit_tokens: 1000
    period: day
    on_exceed: cut
  - name: daily-tokens-finish
    action: usage-cap
    limit_tokens: 1000
    period: day
  - name: daily-trial
    action: usage-cap
    limit_tokens: 1000
    period: day
    on_exceed: cut
    mode: shadow
"#,
    );
    let now = ts(NOW);
    let mut small = req("acme", "k1", "gpt-4o");
    small.estimated_input_tokens = 50;
    small.max_output_tokens = 50;
    let mut big = req("acme", "k2", "gpt-4o");
    big.estimated_input_tokens = 100;
    big.max_output_tokens = 500;
    let a = allowed(eval(&e, &small, now));
    let b = allowed(eval(&e, &big, now));
    assert!(b.needs_stream_checks());
    let hb = header(&big);
    // `a` used far more than it reserved (e.g. the output limit was unknown).
    e.settle(&a, &tokens(50, 450), 1, now);
    // settled 500 + b's running 100 + 300 = 900 ≤ 1000: continue.
    assert!(matches!(
        e.check_stream(&b, 300, 0, &hb, now),
        StreamVerdict::Continue
    ));
    // settled 500 + running 100 + 401 > 1000: the first cut cap in file order cuts.
    match e.check_stream(&b, 401, 0, &hb, now) {
        StreamVerdict::Cut { decision, message } => {
            assert_eq!(decision.outcome, Outcome::Deny);
            assert_eq!(decision.rule, "daily-tokens");
            assert_eq!(decision.counter_value, Some(500));
            assert_eq!(decision.reserved_tokens, Some(600));
            assert_eq!(
                message,
                "the daily token budget of 1,000 tokens for tenant acme ran out while this response was streaming: 500 tokens used + 501 tokens used by this response so far > 1,000 tokens; the stream was cut at 401 output tokens (on_exceed: cut); resets 2026-11-26T00:00:00Z"
            );
        }
        other => panic!("{other:?}"),
    }
    // Without the enforced cut cap, only the shadow one reports (once).
    e.replace(
        PolicySet::parse(
            "rules:\n  - name: daily-trial\n    action: usage-cap\n    limit_tokens: 1000\n    period: day\n    on_exceed: cut\n    mode: shadow\n",
        )
        .unwrap(),
    );
    match e.check_stream(&b, 401, 0, &hb, now) {
        StreamVerdict::ShadowCut { decision } => {
            assert_eq!(decision.outcome, Outcome::ShadowDeny);
            assert_eq!(decision.rule, "daily-trial");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.check_stream(&b, 402, 0, &hb, now),
        StreamVerdict::Continue
    ));
    e.settle(&b, &tokens(100, 401), 1, now);
}

#[test]
fn finish_caps_let_streams_run_and_deny_the_next_request() {
    let e = engine(
        "rules:\n  - name: cap\n    action: usage-cap\n    limit_tokens: 400\n    period: day\n",
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    let a = allowed(eval(&e, &r, now));
    assert!(!a.needs_stream_checks());
    assert!(matches!(
        e.check_stream(&a, 10_000, 0, &header(&r), now),
        StreamVerdict::Continue
    ));
    e.settle(&a, &tokens(100, 10_000), 1, now);
    assert_eq!(denied(&eval(&e, &r, now)).0, "cap");
}

#[test]
fn a_refusal_by_one_rule_reserves_nothing_in_the_others() {
    let e = engine(
        r#"rules:
  - name: big
    action: usage-cap
    limit_tokens: 100000
    period: day
  - name: small
    action: usage-cap
    limit_tokens: 500
    period: day
    key: model
"#,
    );
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    let _held = allowed(eval(&e, &r, now));
    assert_eq!(denied(&eval(&e, &r, now)).0, "small");
    let big = value_of(&e, "big:tenant=acme", now).unwrap();
    assert_eq!(big.in_flight, 300, "the refused request holds nothing");
    assert_eq!(
        value_of(&e, "small:model=gpt-4o", now).unwrap().in_flight,
        300
    );
}

#[test]
fn allow_decisions_are_written_when_asked() {
    let e = engine(
        r#"emit_allow_decisions: true
rules:
  - name: ok
    match: tenant == "acme"
    action: allow
  - name: cap
    action: usage-cap
    limit_usd: 10
    period: month
"#,
    );
    let ev = eval(&e, &req("acme", "k1", "gpt-4o"), ts(NOW));
    let got: Vec<(&str, Outcome)> = ev
        .decisions
        .iter()
        .map(|d| (d.rule.as_str(), d.outcome))
        .collect();
    assert_eq!(got, [("ok", Outcome::Allow), ("cap", Outcome::Allow)]);
    assert_eq!(
        ev.decisions[1].reason,
        "within the monthly budget of $10.00 for tenant acme: $0.00 spent, $0.30 reserved by this request (estimated input + max output)"
    );
    assert_eq!(ev.decisions[1].counter_value, Some(0));
}

#[test]
fn reload_keeps_counters_of_rules_that_kept_name_and_shape() {
    let yaml = |limit: u32, window: &str| {
        format!(
            "rules:\n  - name: rpm\n    action: rate-limit\n    limit: {limit}\n    window: {window}\n  - name: cap\n    action: usage-cap\n    limit_tokens: 10000\n    period: day\n"
        )
    };
    let e = engine(&yaml(2, "1m"));
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    let held = allowed(eval(&e, &r, now));
    allowed(eval(&e, &r, now));
    assert_eq!(denied(&eval(&e, &r, now)).0, "rpm");
    // A higher limit applies at once and the count is kept.
    e.replace(PolicySet::parse(&yaml(3, "1m")).unwrap());
    allowed(eval(&e, &r, now));
    assert_eq!(value_of(&e, "rpm:tenant=acme", now).unwrap().value, 3);
    // A new window is a new counter.
    e.replace(PolicySet::parse(&yaml(3, "1h")).unwrap());
    assert_eq!(value_of(&e, "rpm:tenant=acme", now), None);
    // Only `held` is still in flight: the other reservations were dropped (released).
    assert_eq!(value_of(&e, "cap:tenant=acme", now).unwrap().in_flight, 300);
    // A removed rule's counters go; settling into them later is harmless.
    e.replace(PolicySet::parse(&yaml(3, "1h").replace("name: cap", "name: cap2")).unwrap());
    assert_eq!(value_of(&e, "cap:tenant=acme", now), None);
    e.settle(&held, &tokens(1, 1), 1, now);
    assert_eq!(e.policy().rule_names(), ["rpm", "cap2"]);
}

#[test]
fn an_unsettled_reservation_is_released_when_dropped() {
    let e = engine("- name: cap\n  action: usage-cap\n  limit_tokens: 1000\n  period: day\n");
    let now = ts(NOW);
    let r = req("acme", "k1", "gpt-4o");
    {
        let _res = allowed(eval(&e, &r, now));
        assert_eq!(value_of(&e, "cap:tenant=acme", now).unwrap().in_flight, 300);
    }
    let s = value_of(&e, "cap:tenant=acme", now).unwrap();
    assert_eq!((s.value, s.in_flight), (0, 0));
}

#[test]
fn sweep_drops_idle_counters_only() {
    let e = engine(
        "rules:\n  - name: rpm\n    action: rate-limit\n    limit: 10\n    window: 1m\n    key: headers['x-user']\n",
    );
    let now = ts(NOW);
    for user in ["ann", "bob", "cy"] {
        let mut r = req("acme", "k1", "gpt-4o");
        r.headers.insert("X-User".into(), user.into());
        allowed(eval(&e, &r, now));
    }
    assert_eq!(e.snapshot(now).len(), 3);
    assert_eq!(e.sweep(now), 0);
    assert_eq!(e.sweep(ts("2026-11-25T10:05:00Z")), 3);
    assert!(e.snapshot(now).is_empty());
}

/// A usage event as the forwarder writes it.
fn usage(
    r: &RequestAttrs,
    t: TokenCounts,
    cost: i64,
    at: Timestamp,
    attempt: u32,
    finish: FinishState,
) -> UsageEvent {
    let mut h = header(r);
    h.occurred_at = at;
    UsageEvent {
        header: h,
        upstream: Some("openai".into()),
        status_code: Some(200),
        streamed: false,
        finish_state: finish,
        tokens: t,
        usage_source: UsageSource::ProviderReported,
        cost_micros: cost,
        price_version: None,
        latency_ms: 1,
        ttft_ms: None,
        retry_attempt: attempt,
        retry_of: None,
    }
}

#[test]
fn counters_rebuilt_from_usage_events_equal_live_counters() {
    let yaml = r#"rules:
  - name: block
    match: key_id == "k-bad"
    action: deny
  - name: tenant-budget
    action: usage-cap
    limit_usd: 5
    period: month
  - name: team-tokens
    match: has(labels.team)
    action: usage-cap
    limit_tokens: 4000
    period: day
    key: labels.team
  - name: key-rph
    action: rate-limit
    limit: 4
    window: 1h
    key: key_id
  - name: model-tph
    action: rate-limit
    algorithm: token_bucket
    unit: output_tokens
    limit: 100000
    window: 1d
    key: tenant + "/" + model
    mode: shadow
"#;
    let live = engine(yaml);
    let mut events = Vec::new();
    let mut now = ts(NOW);
    let mut rng = 7u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for i in 0..60 {
        now = now.plus_micros(1_000_000 + i * 10_000);
        let tenant = ["acme", "globex"][next(2) as usize];
        let key = ["k1", "k2", "k3", "k-bad"][next(4) as usize];
        let model = ["gpt-4o", "gpt-4o-mini"][next(2) as usize];
        let mut r = req(tenant, key, model);
        if next(2) == 0 {
            r.labels
                .insert("team".into(), ["ml", "web"][next(2) as usize].into());
        }
        r.estimated_input_tokens = 50 + next(100);
        r.max_output_tokens = 50 + next(200);
        r.estimated_cost_micros =
            Some(i64::try_from(r.estimated_input_tokens + 3 * r.max_output_tokens).unwrap() * 100);
        let ev = live.evaluate(&r, &header(&r), now);
        match ev.verdict {
            Verdict::Deny { .. } => events.push(usage(
                &r,
                TokenCounts::default(),
                0,
                now,
                0,
                FinishState::Denied,
            )),
            Verdict::Allow(res) => {
                // Some requests take a retry: two attempts, settled once with the sum.
                let first = tokens(
                    next(r.estimated_input_tokens + 20),
                    next(r.max_output_tokens + 50),
                );
                let cost1 = i64::try_from(first.total()).unwrap() * 100;
                if next(4) == 0 {
                    let second = tokens(next(80), next(120));
                    let cost2 = i64::try_from(second.total()).unwrap() * 100;
                    let sum = tokens(
                        first.input_tokens + second.input_tokens,
                        first.output_tokens + second.output_tokens,
                    );
                    live.settle(&res, &sum, cost1 + cost2, now);
                    events.push(usage(&r, first, cost1, now, 0, FinishState::UpstreamError));
                    events.push(usage(&r, second, cost2, now, 1, FinishState::Completed));
                } else {
                    live.settle(&res, &first, cost1, now);
                    events.push(usage(&r, first, cost1, now, 0, FinishState::Completed));
                }
            }
        }
    }
    let rebuilt = engine(yaml);
    for u in &events {
        rebuilt.rebuild(u);
    }
    let view = |e: &PolicyEngine| {
        let mut v: Vec<(String, i64, i64)> = e
            .snapshot(now)
            .into_iter()
            .filter(|s| s.value != 0 || s.in_flight != 0)
            .map(|s| (s.counter_key, s.value, s.in_flight))
            .collect();
        v.sort();
        v
    };
    let (a, b) = (view(&live), view(&rebuilt));
    assert!(
        a.iter()
            .any(|(k, _, _)| k.starts_with("team-tokens:labels.team=")),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|(k, _, _)| k.starts_with("model-tph:key=acme/")),
        "{a:?}"
    );
    assert!(events.iter().any(|u| u.finish_state == FinishState::Denied));
    assert_eq!(a, b);
}
