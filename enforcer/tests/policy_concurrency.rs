//! The reservation invariant under concurrency: many threads evaluating and settling at
//! once against the same caps, with fixed workloads and as a property (proptest: random
//! thread counts, request sizes, real usages above and below the reservation, failed
//! upstreams and reservations dropped unsettled).
//!
//! Invariant (per cap and period): `settled ≤ limit + Σ max(0, real − reserved)` over the
//! admitted requests, the counter holds exactly the real usage of the admitted requests
//! (nothing lost, nothing counted twice), no reservation is left in flight, and every
//! refusal was justified (`counter_value + reserved > limit` at that instant).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use tally_enforcer::policy::{PolicyEngine, PolicySet, RequestAttrs, Verdict};
use tally_events::{EventHeader, Outcome, Timestamp, TokenCounts};

const THREADS: usize = 8;

fn now() -> Timestamp {
    Timestamp::parse("2026-11-25T10:00:00Z").unwrap()
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn request(tenant: &str, input: u64, output: u64, cost: i64) -> RequestAttrs {
    RequestAttrs {
        tenant: tenant.into(),
        key_id: Some("k1".into()),
        labels: BTreeMap::new(),
        provider: None,
        route: None,
        model: Some("m".into()),
        headers: BTreeMap::new(),
        estimated_input_tokens: input,
        max_output_tokens: output,
        estimated_cost_micros: Some(cost),
    }
}

#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    real_tokens: i64,
    real_cost: i64,
    token_overrun: i64,
    cost_overrun: i64,
}

#[test]
fn concurrent_requests_never_overshoot_more_than_their_overruns() {
    const TOKEN_LIMIT: i64 = 150_000;
    const USD_LIMIT: i64 = 40_000_000; // $40
    let set = PolicySet::parse(&format!(
        r#"rules:
  - name: tokens
    action: usage-cap
    limit_tokens: {TOKEN_LIMIT}
    period: month
  - name: dollars
    action: usage-cap
    limit_usd: 40
    period: month
"#
    ))
    .unwrap();
    let engine = Arc::new(PolicyEngine::new(set));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1000_0001));
                let mut tally = Tally::default();
                let header = EventHeader::new("gw", "req", "acme");
                for _ in 0..400 {
                    let input = 10 + rng.below(400);
                    let output = 10 + rng.below(600);
                    let price = |i: u64, o: u64| i64::try_from(i * 100 + o * 400).unwrap();
                    let req = request("acme", input, output, price(input, output));
                    let ev = engine.evaluate(&req, &header, now());
                    match ev.verdict {
                        Verdict::Allow(res) => {
                            tally.allowed += 1;
                            // Real usage: input within ±20% of the estimate, output up to
                            // 130% of the requested maximum (estimates are sometimes low).
                            let real_in = input * (80 + rng.below(41)) / 100;
                            let real_out = rng.below(output * 13 / 10 + 1);
                            if rng.below(3) == 0 {
                                thread::yield_now();
                            }
                            let real_tokens = i64::try_from(real_in + real_out).unwrap();
                            let real_cost = price(real_in, real_out);
                            let reserved_tokens = i64::try_from(input + output).unwrap();
                            tally.real_tokens += real_tokens;
                            tally.real_cost += real_cost;
                            tally.token_overrun += (real_tokens - reserved_tokens).max(0);
                            tally.cost_overrun += (real_cost - price(input, output)).max(0);
                            let actual = TokenCounts {
                                input_tokens: real_in,
                                output_tokens: real_out,
                                ..TokenCounts::default()
                            };
                            engine.settle(&res, &actual, real_cost, now());
                        }
                        Verdict::Deny { .. } => {
                            tally.denied += 1;
                            let [d] = ev.decisions.as_slice() else {
                                panic!("one decision per denial: {:?}", ev.decisions)
                            };
                            assert_eq!(d.outcome, Outcome::Deny);
                            let value = d.counter_value.unwrap();
                            let limit = d.counter_limit.unwrap();
                            let reserved = match d.rule.as_str() {
                                "tokens" => i64::try_from(d.reserved_tokens.unwrap()).unwrap(),
                                _ => d.reserved_cost_micros.unwrap(),
                            };
                            assert!(value + reserved > limit, "unjustified denial: {d:?}");
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for h in handles {
        let t = h.join().unwrap();
        total.allowed += t.allowed;
        total.denied += t.denied;
        total.real_tokens += t.real_tokens;
        total.real_cost += t.real_cost;
        total.token_overrun += t.token_overrun;
        total.cost_overrun += t.cost_overrun;
    }
    assert!(
        total.allowed > 50 && total.denied > 50,
        "allowed {} denied {}",
        total.allowed,
        total.denied
    );
    let snap: BTreeMap<String, (i64, i64)> = engine
        .snapshot(now())
        .into_iter()
        .map(|s| (s.counter_key, (s.value, s.in_flight)))
        .collect();
    let (tokens, tokens_in_flight) = snap["tokens:tenant=acme"];
    let (dollars, dollars_in_flight) = snap["dollars:tenant=acme"];
    // Nothing lost, nothing counted twice, nothing left in flight.
    assert_eq!((tokens, tokens_in_flight), (total.real_tokens, 0));
    assert_eq!((dollars, dollars_in_flight), (total.real_cost, 0));
    // The invariant.
    assert!(
        tokens <= TOKEN_LIMIT + total.token_overrun,
        "{tokens} > {TOKEN_LIMIT} + {}",
        total.token_overrun
    );
    assert!(
        dollars <= USD_LIMIT + total.cost_overrun,
        "{dollars} > {USD_LIMIT} + {}",
        total.cost_overrun
    );
}

#[test]
fn a_cap_with_room_for_n_admits_exactly_n_concurrent_requests() {
    // Every request reserves and uses exactly 10 tokens; the cap has room for 100 of
    // them, the rate limit for 150 requests. 8 threads × 50 requests race for them.
    let set = PolicySet::parse(
        r#"rules:
  - name: rph
    action: rate-limit
    limit: 150
    window: 1h
  - name: cap
    action: usage-cap
    limit_tokens: 1005
    period: day
  - name: cap-other
    action: usage-cap
    limit_tokens: 1000000
    period: day
    key: model
"#,
    )
    .unwrap();
    let engine = Arc::new(PolicyEngine::new(set));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let engine = engine.clone();
            thread::spawn(move || {
                let header = EventHeader::new("gw", "req", "acme");
                let mut allowed = 0;
                for _ in 0..50 {
                    let req = request("acme", 4, 6, 1);
                    if let Verdict::Allow(res) = engine.evaluate(&req, &header, now()).verdict {
                        allowed += 1;
                        let actual = TokenCounts {
                            input_tokens: 4,
                            output_tokens: 6,
                            ..TokenCounts::default()
                        };
                        engine.settle(&res, &actual, 1, now());
                    }
                }
                allowed
            })
        })
        .collect();
    let allowed: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 100);
    let snap: BTreeMap<String, (i64, i64)> = engine
        .snapshot(now())
        .into_iter()
        .map(|s| (s.counter_key, (s.value, s.in_flight)))
        .collect();
    assert_eq!(snap["cap:tenant=acme"], (1000, 0));
    // Refused requests were rolled back everywhere: the rate limit and the other cap
    // counted exactly the admitted ones.
    assert_eq!(snap["rph:tenant=acme"], (100, 0));
    assert_eq!(snap["cap-other:model=m"], (1000, 0));
}

#[test]
fn concurrent_rate_limit_admits_exactly_the_limit() {
    let set = PolicySet::parse(
        "rules:\n  - name: rpm\n    action: rate-limit\n    limit: 77\n    window: 1m\n  - name: burst\n    action: rate-limit\n    algorithm: token_bucket\n    limit: 1000\n    window: 1m\n",
    )
    .unwrap();
    let engine = Arc::new(PolicyEngine::new(set));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let engine = engine.clone();
            thread::spawn(move || {
                let header = EventHeader::new("gw", "req", "acme");
                (0..40)
                    .filter(|_| {
                        matches!(
                            engine
                                .evaluate(&request("acme", 1, 1, 1), &header, now())
                                .verdict,
                            Verdict::Allow(_)
                        )
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 77);
    let snap: BTreeMap<String, i64> = engine
        .snapshot(now())
        .into_iter()
        .map(|s| (s.counter_key, s.value))
        .collect();
    assert_eq!(snap["rpm:tenant=acme"], 77);
    assert_eq!(snap["burst:tenant=acme"], 77);
}

/// How an admitted request ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Settled with real usage: input `in_pct`% of the estimate, output `out_pct`% of
    /// the requested maximum (above 100: more than reserved).
    Used { in_pct: u64, out_pct: u64 },
    /// The upstream failed before any usage: settled with zeros.
    Failed,
    /// The reservation was dropped without settling (a bug path): released, nothing
    /// counted.
    Dropped,
}

fn end_strategy() -> impl proptest::strategy::Strategy<Value = End> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (50u64..=150, 0u64..=160).prop_map(|(in_pct, out_pct)| End::Used { in_pct, out_pct }),
        1 => Just(End::Failed),
        1 => Just(End::Dropped),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

    /// The reservation invariant with random concurrency, request sizes, real usages and
    /// failures: per cap, `settled ≤ limit + Σ max(0, real − reserved)` over admitted
    /// requests; the counter holds exactly the real usage of the admitted requests; no
    /// reservation is left in flight; every refusal was justified when it was made.
    #[test]
    fn the_reservation_invariant_holds_for_any_interleaving(
        token_limit in 200i64..20_000,
        usd_limit_cents in 1i64..500,
        work in proptest::collection::vec(
            proptest::collection::vec((1u64..400, 1u64..800, end_strategy()), 1..40),
            2..6,
        ),
    ) {
        let usd_limit = usd_limit_cents * 10_000;
        let set = PolicySet::parse(&format!(
            "rules:\n  - name: tokens\n    action: usage-cap\n    limit_tokens: {token_limit}\n    period: month\n  - name: dollars\n    action: usage-cap\n    limit_usd: {}\n    period: month\n",
            usd_limit_cents as f64 / 100.0
        ))
        .unwrap();
        let engine = Arc::new(PolicyEngine::new(set));
        let barrier = Arc::new(std::sync::Barrier::new(work.len()));
        let price = |i: u64, o: u64| i64::try_from(i * 100 + o * 400).unwrap();
        let handles: Vec<_> = work
            .into_iter()
            .map(|requests| {
                let engine = engine.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let header = EventHeader::new("gw", "req", "acme");
                    let mut tally = Tally::default();
                    barrier.wait();
                    for (input, output, end) in requests {
                        let req = request("acme", input, output, price(input, output));
                        let ev = engine.evaluate(&req, &header, now());
                        let res = match ev.verdict {
                            Verdict::Allow(res) => res,
                            Verdict::Deny { .. } => {
                                tally.denied += 1;
                                let d = &ev.decisions[0];
                                let reserved = match d.rule.as_str() {
                                    "tokens" => i64::try_from(d.reserved_tokens.unwrap()).unwrap(),
                                    _ => d.reserved_cost_micros.unwrap(),
                                };
                                assert!(
                                    d.counter_value.unwrap() + reserved > d.counter_limit.unwrap(),
                                    "unjustified denial: {d:?}"
                                );
                                continue;
                            }
                        };
                        tally.allowed += 1;
                        thread::yield_now();
                        let (real_in, real_out) = match end {
                            End::Used { in_pct, out_pct } => (input * in_pct / 100, output * out_pct / 100),
                            End::Failed | End::Dropped => (0, 0),
                        };
                        if let End::Dropped = end {
                            drop(res);
                            continue;
                        }
                        let (tokens, cost) = (i64::try_from(real_in + real_out).unwrap(), price(real_in, real_out));
                        tally.real_tokens += tokens;
                        tally.real_cost += cost;
                        tally.token_overrun += (tokens - i64::try_from(input + output).unwrap()).max(0);
                        tally.cost_overrun += (cost - price(input, output)).max(0);
                        let actual = TokenCounts {
                            input_tokens: real_in,
                            output_tokens: real_out,
                            ..TokenCounts::default()
                        };
                        engine.settle(&res, &actual, cost, now());
                    }
                    tally
                })
            })
            .collect();
        let mut total = Tally::default();
        for h in handles {
            let t = h.join().unwrap();
            total.allowed += t.allowed;
            total.real_tokens += t.real_tokens;
            total.real_cost += t.real_cost;
            total.token_overrun += t.token_overrun;
            total.cost_overrun += t.cost_overrun;
        }
        let snap: BTreeMap<String, (i64, i64)> = engine
            .snapshot(now())
            .into_iter()
            .map(|s| (s.counter_key, (s.value, s.in_flight)))
            .collect();
        if total.allowed > 0 {
            let (tokens, tokens_in_flight) = snap["tokens:tenant=acme"];
            let (dollars, dollars_in_flight) = snap["dollars:tenant=acme"];
            proptest::prop_assert_eq!((tokens, tokens_in_flight), (total.real_tokens, 0));
            proptest::prop_assert_eq!((dollars, dollars_in_flight), (total.real_cost, 0));
            proptest::prop_assert!(tokens <= token_limit + total.token_overrun);
            proptest::prop_assert!(dollars <= usd_limit + total.cost_overrun);
        }
    }
}
