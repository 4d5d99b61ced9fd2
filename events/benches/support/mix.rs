//! The benchmarks' event mix: a realistic stream of usage and decision events (90% usage,
//! 10% decisions; 50 tenants, 500 keys, six models), generated deterministically.
//! Shared by the ledger's `materialize` bench and the events crate's `decode_rows` bench
//! (included with `#[path]`); must not depend on anything but the events crate.

use std::collections::BTreeMap;

use tally_events::{
    DecisionEvent, Event, EventHeader, FinishState, Outcome, Provider, Route, RuleKind, Timestamp,
    TokenCounts, UsageEvent, UsageSource,
};

const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "text-embedding-3-small",
];

/// A cheap deterministic generator (splitmix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Skewed pick in `0..n`: low indexes are much more frequent.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.next() % n;
        let b = self.next() % n;
        a.min(b)
    }
}

/// One event of a realistic mix: 90% usage, 10% decisions; 50 tenants, 500 keys, six
/// models, spread over three days.
pub(crate) fn event(rng: &mut Rng, i: u64, start: i64) -> Event {
    let tenant = format!("tenant-{:02}", rng.skewed(50));
    let key = rng.skewed(500);
    let model = MODELS[rng.skewed(MODELS.len() as u64) as usize];
    let mut h = EventHeader::new("gw-1", &format!("req-{i:012}"), &tenant);
    h.occurred_at = Timestamp::from_micros(start + (i as i64) * 25_000);
    h.api_key_id = Some(format!("key-{key:03}"));
    h.labels = BTreeMap::from([("team".into(), format!("team-{}", key % 12))]);
    h.provider = Some(match model.as_bytes()[0] {
        b'c' => Provider::Anthropic,
        b'g' if model.starts_with("gemini") => Provider::Gemini,
        _ => Provider::Openai,
    });
    h.route = Some(Route::Chat);
    h.model_requested = Some(model.into());
    h.model_served = Some(model.into());
    if i % 10 == 9 {
        return Event::Decision(DecisionEvent::new(
            h,
            Outcome::Deny,
            "per-key-rpm",
            RuleKind::RateLimit,
            "key over its request rate".into(),
        ));
    }
    let input = 50 + rng.next() % 4_000;
    let output = rng.next() % 1_500;
    Event::Usage(UsageEvent {
        header: h,
        upstream: Some("main".into()),
        status_code: Some(200),
        streamed: i.is_multiple_of(3),
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: input,
            cached_input_tokens: input / 4 * (i % 2),
            output_tokens: output,
            reasoning_tokens: output / 8,
            ..TokenCounts::default()
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: (input * 2 + output * 8) as i64,
        price_version: Some("2026-11".into()),
        latency_ms: 200 + rng.next() % 3_000,
        ttft_ms: Some(80 + rng.next() % 400),
        retry_attempt: 0,
        retry_of: None,
    })
}
