//! Fuzz target `policy_parse`: the policy file parser (`PolicySet::parse`: YAML, rule
//! validation, CEL compilation) on arbitrary text, and for every policy that loads, the
//! engine deciding, explaining, cutting streams and settling a few requests (ordinary
//! ones, one with nothing set and one with extreme figures). Parsing returns problems,
//! never panics; evaluating a loaded policy never panics either.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tally_enforcer::policy::{PolicyEngine, PolicySet, RequestAttrs, Verdict};
use tally_events::{EventHeader, Provider, Route, Timestamp, TokenCounts};

fn requests() -> Vec<RequestAttrs> {
    let ordinary = RequestAttrs {
        tenant: "acme".into(),
        key_id: Some("k1".into()),
        labels: BTreeMap::from([("team".into(), "ml".into()), ("user".into(), "ada".into())]),
        provider: Some(Provider::Openai),
        route: Some(Route::Chat),
        model: Some("gpt-4o-mini".into()),
        headers: BTreeMap::from([("X-Project".into(), "p1".into())]),
        estimated_input_tokens: 120,
        max_output_tokens: 500,
        estimated_cost_micros: Some(1_500),
    };
    let other = RequestAttrs {
        tenant: "globex".into(),
        provider: Some(Provider::Anthropic),
        route: Some(Route::Messages),
        model: Some("claude-sonnet-4-5".into()),
        ..ordinary.clone()
    };
    let extreme = RequestAttrs {
        estimated_input_tokens: u64::MAX,
        max_output_tokens: u64::MAX,
        estimated_cost_micros: Some(i64::MAX),
        ..ordinary.clone()
    };
    vec![ordinary, other, RequestAttrs::default(), extreme]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = match PolicySet::parse(text) {
        Ok(set) => set,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            for p in e.problems() {
                assert!(!p.code.is_empty());
            }
            return;
        }
    };
    let _ = (set.summary(), set.rule_names(), set.warnings(), set.len());
    let engine = PolicyEngine::new(set);
    // 2026-11-19T12:00:00Z, then 40 days later (another day, month and window).
    let start = Timestamp::from_micros(1_795_089_600_000_000);
    for now in [start, start.plus_micros(40 * 86_400 * 1_000_000)] {
        for req in requests() {
            let header = EventHeader::new("fuzz", "req", &req.tenant);
            let _ = engine.explain(&req, &header, now);
            let evaluation = engine.evaluate(&req, &header, now);
            if let Verdict::Allow(reservation) = &evaluation.verdict {
                for (output, cost) in [(1_000, 2_000), (u64::MAX, i64::MAX)] {
                    let _ = engine.check_stream(reservation, output, cost, &header, now);
                }
                let used = TokenCounts {
                    input_tokens: req.estimated_input_tokens,
                    output_tokens: 7,
                    ..TokenCounts::default()
                };
                engine.settle(reservation, &used, 10, now);
            }
        }
        let _ = engine.snapshot(now);
        let _ = engine.history_start(now);
        let _ = engine.sweep(now);
    }
});
