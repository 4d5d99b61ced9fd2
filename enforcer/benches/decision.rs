//! Policy decision cost: `evaluate` plus `settle` per request against a policy of 100
//! rules of which 10 match (an allow rule, request and token rate limits, token and
//! dollar caps keyed by tenant, key, label and model), and how counter updates scale
//! across threads (no global lock on the hot path).
//!
//! ```sh
//! cargo bench --workspace --bench decision                 # 1,000,000 timed decisions
//! TALLY_BENCH_DECISIONS=200000 cargo bench --workspace --bench decision
//! ```
//!
//! Each decision is timed alone (`Instant` around evaluate + settle, on one thread) to
//! report p50/p99/p99.9; the scaling part runs the same loop on 1 and on N threads
//! (N = available cores), once with every thread on its own tenant (separate counters)
//! and once with all threads on one tenant (shared counters), and reports decisions/s.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a few thousand
//! decisions, checks that nothing was refused, and prints the same report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tally_enforcer::policy::{PolicyEngine, PolicySet, RequestAttrs, Verdict};
use tally_events::{EventHeader, Provider, Route, Timestamp, TokenCounts};

const TENANTS: usize = 64;

/// 100 rules: for a request of tenant `t-*` with key `k-*`, label `team` and model
/// `gpt-4o-mini`, exactly 10 match.
fn policy() -> String {
    let mut y = String::from("rules:\n");
    // 90 rules that never match this traffic: access rules for other tenants and
    // models, limits scoped to other tenants, labels and routes.
    for i in 0..30 {
        let _ = write!(
            y,
            "  - name: deny-other-{i}\n    match: 'tenant == \"other-{i}\" && model.startsWith(\"gpt-4\")'\n    action: deny\n    reason: not for you\n"
        );
    }
    for i in 0..30 {
        let _ = write!(
            y,
            "  - name: rpm-other-{i}\n    match: 'labels.team == \"other-{i}\"'\n    action: rate-limit\n    limit: 100\n    window: 1m\n    key: key_id\n"
        );
    }
    for i in 0..30 {
        let _ = write!(
            y,
            "  - name: cap-other-{i}\n    match: 'route == \"embeddings\" && tenant == \"e-{i}\"'\n    action: usage-cap\n    limit_usd: 5\n    period: day\n"
        );
    }
    // 10 that match: one access rule and nine limits.
    y.push_str(
        r#"  - name: allow-mini
    match: 'model == "gpt-4o-mini"'
    action: allow
  - name: tenant-rpm
    action: rate-limit
    limit: 1000000000
    window: 1m
  - name: key-rpm
    action: rate-limit
    limit: 1000000000
    window: 1m
    key: key_id
  - name: key-bucket
    action: rate-limit
    algorithm: token_bucket
    limit: 1000000000
    window: 1m
    key: key_id
  - name: tenant-tpm
    action: rate-limit
    limit: 1000000000000
    unit: tokens
    window: 1m
  - name: model-tpm
    action: rate-limit
    limit: 1000000000000
    unit: tokens
    window: 1h
    key: model
  - name: tenant-daily-tokens
    action: usage-cap
    limit_tokens: 1000000000000
    unit: tokens
    period: day
  - name: team-monthly-tokens
    match: has(labels.team)
    action: usage-cap
    limit_tokens: 1000000000000
    unit: output_tokens
    period: month
    timezone: Europe/Berlin
    key: labels.team
  - name: tenant-monthly-usd
    action: usage-cap
    limit_usd: 1000000000
    period: month
  - name: key-daily-usd
    action: usage-cap
    limit_usd: 1000000000
    period: day
    key: key_id
    on_exceed: cut
"#,
    );
    y
}

fn request(tenant: usize, key: usize) -> RequestAttrs {
    RequestAttrs {
        tenant: format!("t-{tenant}"),
        key_id: Some(format!("k-{tenant}-{key}")),
        labels: BTreeMap::from([("team".to_owned(), format!("team-{}", tenant % 8))]),
        provider: Some(Provider::Openai),
        route: Some(Route::Chat),
        model: Some("gpt-4o-mini".into()),
        headers: BTreeMap::new(),
        estimated_input_tokens: 350,
        max_output_tokens: 512,
        estimated_cost_micros: Some(360),
    }
}

fn decide(engine: &PolicyEngine, req: &RequestAttrs, header: &EventHeader) {
    let now = Timestamp::now();
    let ev = engine.evaluate(req, header, now);
    let Verdict::Allow(res) = ev.verdict else {
        panic!("the benchmark's limits never refuse: {:?}", ev.decisions)
    };
    let used = TokenCounts {
        input_tokens: 350,
        output_tokens: 200,
        ..TokenCounts::default()
    };
    engine.settle(&res, &used, 170, now);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Decisions per second with `threads` threads; `shared`: all on one tenant and key.
fn throughput(engine: &Arc<PolicyEngine>, threads: usize, per_thread: usize, shared: bool) -> f64 {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let tenant = if shared { 0 } else { t + 1 };
                let reqs: Vec<RequestAttrs> = (0..16).map(|k| request(tenant, k)).collect();
                let header = EventHeader::new("bench", "req", &reqs[0].tenant);
                barrier.wait();
                for i in 0..per_thread {
                    decide(&engine, &reqs[i % reqs.len()], &header);
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    (threads * per_thread) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("TALLY_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 5_000 });
    let set = PolicySet::parse(&policy()).expect("benchmark policy parses");
    assert_eq!(set.rule_names().len(), 100);
    let engine = Arc::new(PolicyEngine::new(set));

    // Latency on one thread, over many tenants and keys (64 tenants × 16 keys).
    let reqs: Vec<RequestAttrs> = (0..TENANTS)
        .flat_map(|t| (0..16).map(move |k| request(t, k)))
        .collect();
    let header = EventHeader::new("bench", "req", "t-0");
    for r in reqs.iter().take(2_000) {
        decide(&engine, r, &header); // warm-up: counters created, caches warm
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let r = &reqs[i % reqs.len()];
        let t = Instant::now();
        decide(&engine, r, &header);
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(u32::MAX);
    println!(
        "decision (evaluate + settle), 100 rules, 10 matching, {n} requests on one thread:\n  \
         p50 {:.2} µs   p99 {:.2} µs   p99.9 {:.2} µs   max {:.2} µs   mean {:.2} µs   (target: p99 ≤ 20 µs)",
        us(percentile(&times, 0.50)),
        us(percentile(&times, 0.99)),
        us(percentile(&times, 0.999)),
        us(*times.last().unwrap()),
        us(mean),
    );

    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let per_thread = (n / 2).max(1_000);
    for shared in [false, true] {
        let one = throughput(&engine, 1, per_thread, shared);
        let many = throughput(&engine, cores, per_thread, shared);
        println!(
            "throughput, {}: 1 thread {:.0}/s, {cores} threads {:.0}/s (×{:.2})",
            if shared {
                "all threads on one tenant and key (shared counters)"
            } else {
                "one tenant per thread (separate counters)"
            },
            one,
            many,
            many / one
        );
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
