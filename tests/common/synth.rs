//! Synthetic events for tests that write the event log directly: usage, decisions and
//! corrections with varied tenants, keys, tokens and costs, and the sums of what was
//! written. Must stay deterministic in its figures for a given `i`.
#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tally_events::log::{EventLog, LogConfig, SegmentLog};
use tally_events::{
    CorrectionEvent, DecisionEvent, Event, EventHeader, EventId, FinishState, Outcome, Provider,
    Route, RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource,
};

pub const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

pub fn header(i: u64) -> EventHeader {
    let tenant = TENANTS[(i % 3) as usize];
    let mut h = EventHeader::new("gw-crash", &format!("req-{i}"), tenant);
    h.api_key_id = Some(format!("key-{}", i % 7));
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some("gpt-4o-mini".into());
    h
}

pub fn usage(i: u64) -> Event {
    Event::Usage(UsageEvent {
        header: header(i),
        upstream: Some("openai".into()),
        status_code: Some(200),
        streamed: i.is_multiple_of(2),
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: 100 + i % 97,
            cached_input_tokens: i % 13,
            output_tokens: 20 + i % 31,
            ..TokenCounts::default()
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: 50 + (i % 101) as i64,
        price_version: Some("test".into()),
        latency_ms: 10,
        ttft_ms: None,
        retry_attempt: 0,
        retry_of: None,
    })
}

pub fn decision(i: u64) -> Event {
    Event::Decision(DecisionEvent::new(
        header(i),
        Outcome::Deny,
        "per-key-rpm",
        RuleKind::RateLimit,
        "key over its request rate".into(),
    ))
}

pub fn correction(i: u64, corrects: EventId) -> Event {
    Event::Correction(CorrectionEvent {
        header: header(i),
        corrects_event_id: corrects,
        reason: "provider report differs".into(),
        input_tokens: Some(1),
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: None,
        reasoning_tokens: None,
        cost_micros: Some(3),
        price_version: None,
        usage_source: Some(UsageSource::Mixed),
    })
}

/// What was written: counts per type and usage sums.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub usage: u64,
    pub decisions: u64,
    pub corrections: u64,
    pub input: u64,
    pub output: u64,
    pub cost: u64,
}

/// Append `n` events in small bursts over about `spread`, resending every 50th record.
pub fn write_events(dir: &Path, n: u64, spread: Duration) -> Written {
    write_events_at(dir, n, spread, 0, |_| None)
}

/// [`write_events`] with indexes from `first`, and `occurred_at` overridden by `at(i)`.
pub fn write_events_at(
    dir: &Path,
    n: u64,
    spread: Duration,
    first: u64,
    at: impl Fn(u64) -> Option<Timestamp>,
) -> Written {
    let log = SegmentLog::open(dir, &LogConfig::default()).unwrap();
    let mut w = Written::default();
    let mut last_usage = EventId::new();
    let bursts = 100u64;
    let per_burst = n / bursts;
    let mut receipts = Vec::new();
    for b in 0..bursts {
        for j in 0..per_burst {
            let i = first + b * per_burst + j;
            let mut e = match i % 10 {
                0..=6 => {
                    let e = usage(i);
                    if let Event::Usage(u) = &e {
                        w.usage += 1;
                        w.input += u.tokens.input_tokens;
                        w.output += u.tokens.output_tokens;
                        w.cost += u.cost_micros as u64;
                        last_usage = u.header.event_id;
                    }
                    e
                }
                7 | 8 => {
                    w.decisions += 1;
                    decision(i)
                }
                _ => {
                    w.corrections += 1;
                    correction(i, last_usage)
                }
            };
            if let Some(t) = at(i) {
                set_occurred_at(&mut e, t);
            }
            let bytes = tally_events::encode(&e);
            let tenant = e.header().tenant.clone();
            receipts.push(log.append(&tenant, &bytes).unwrap());
            if i.is_multiple_of(50) {
                // A producer retry: the same event appended again.
                receipts.push(log.append(&tenant, &bytes).unwrap());
            }
        }
        std::thread::sleep(spread / bursts as u32);
    }
    for r in receipts {
        r.wait().unwrap();
    }
    log.close().unwrap();
    w
}

fn set_occurred_at(e: &mut Event, t: Timestamp) {
    match e {
        Event::Usage(u) => u.header.occurred_at = t,
        Event::Decision(d) => d.header.occurred_at = t,
        Event::Correction(c) => c.header.occurred_at = t,
    }
}

impl Written {
    /// The sums of two writes.
    pub fn plus(&self, o: &Written) -> Written {
        Written {
            usage: self.usage + o.usage,
            decisions: self.decisions + o.decisions,
            corrections: self.corrections + o.corrections,
            input: self.input + o.input,
            output: self.output + o.output,
            cost: self.cost + o.cost,
        }
    }
}
