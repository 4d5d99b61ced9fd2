//! Accuracy of the matcher and classifier over a simulated month: the provider side is
//! built by the provider simulator's own report builders (OpenAI usage + costs, the
//! formats its admin endpoints serve) and parsed by tally's importers; the gateway side is
//! what tally would have recorded for the same traffic. Every discrepancy class is
//! injected at a known place; each must be found there with its cause, nothing else may
//! be reported, and the money attribution must sum to the difference to the µ$.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tally_enforcer::pricing::PriceTable;
use tally_reconcile::config::{Account, ReconcileConfig};
use tally_reconcile::figures::Figures;
use tally_reconcile::import::{Parsed, openai};
use tally_reconcile::matcher::{Cause, GatewayBucket, GatewayMinute, Inputs, reconcile};
use tally_simulator::reports::{
    self, OpenAiCostsQuery, OpenAiUsageKind, OpenAiUsageQuery, ReportsConfig,
};
use tally_simulator::{Provider, ServedRecord};

const GATEWAY_KEY: &str = "sk-gateway-openai";
const BYPASS_KEY: &str = "sk-someone-elses-script";

fn at(d: u32, h: u32, m: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(2026, 10, d, h, m, s)
        .unwrap()
        .timestamp_micros()
}

fn fingerprint(key: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..6])
    )
}

/// What tally recorded for one attempt.
#[derive(Clone, Debug)]
struct GatewayEvent {
    at: i64,
    model: String,
    ok: bool,
    figures: Figures,
    aborted: bool,
    failed: bool,
    retry: bool,
}

fn record(at: i64, i: u64, key: &str) -> ServedRecord {
    let (requested, served) = if i.is_multiple_of(2) {
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    } else {
        ("gpt-4o", "gpt-4o")
    };
    let output = 20 + i % 30;
    ServedRecord {
        at,
        provider: Provider::Openai,
        route: "/v1/chat/completions".into(),
        model_requested: requested.into(),
        model_served: served.into(),
        key_fingerprint: Some(fingerprint(key)),
        request_id: format!("req-{i}"),
        streamed: i.is_multiple_of(3),
        status: 200,
        input_tokens: 100 + i % 50,
        output_tokens: output,
        output_tokens_sent: output,
        completed: true,
        ..ServedRecord::default()
    }
}

fn event_of(r: &ServedRecord) -> GatewayEvent {
    GatewayEvent {
        at: r.at,
        // The gateway knows the model as requested (no `model_served` recorded): the
        // provider's snapshot name must be recognized as an alias.
        model: r.model_requested.clone(),
        ok: true,
        figures: Figures {
            requests: 1,
            input: r.input_tokens as i64,
            cached: r.cached_input_tokens as i64,
            output: r.output_tokens_sent as i64,
            ..Figures::default()
        },
        aborted: false,
        failed: false,
        retry: false,
    }
}

struct Month {
    served: Vec<ServedRecord>,
    gateway: Vec<GatewayEvent>,
}

/// Regular traffic every 10 minutes (at :03, :13 … :53, never near an hour's end), and
/// the injected discrepancies.
fn month() -> Month {
    let mut served = Vec::new();
    let mut gateway = Vec::new();
    let mut i = 0u64;
    for d in 1..=31 {
        for h in 0..24 {
            for m in [3, 13, 23, 33, 43, 53] {
                i += 1;
                let mut r = record(at(d, h, m, 0), i, GATEWAY_KEY);
                let mut e = event_of(&r);
                // (A) missing gateway events: 10-03 10:00–10:40 never reached the log.
                let dropped = d == 3 && h == 10 && m < 40;
                // (B) an aborted stream, billed in full by the provider.
                if d == 5 && h == 14 && m == 23 {
                    r.streamed = true;
                    r.completed = false;
                    r.output_tokens = 200;
                    r.output_tokens_sent = 50;
                    e = event_of(&r);
                    e.aborted = true;
                }
                // (D) cached tokens the usage report shows as zero.
                if d == 9 && h == 11 && m == 33 {
                    r.cached_input_tokens = 64;
                    e = event_of(&r);
                }
                served.push(r.clone());
                if !dropped {
                    gateway.push(e);
                }
            }
        }
    }
    // (C) retries: the gateway timed out an attempt the provider completed and billed,
    // then retried it successfully.
    let first = record(at(7, 9, 14, 0), 10_001, GATEWAY_KEY);
    let retry = record(at(7, 9, 15, 0), 10_002, GATEWAY_KEY);
    served.push(first.clone());
    served.push(retry.clone());
    gateway.push(GatewayEvent {
        ok: false,
        failed: true,
        figures: Figures::default(),
        ..event_of(&first)
    });
    gateway.push(GatewayEvent {
        retry: true,
        ..event_of(&retry)
    });
    // (G) one request 60 s before midnight; the provider's clock is 90 s ahead.
    let late = record(at(12, 23, 59, 0), 10_003, GATEWAY_KEY);
    served.push(late.clone());
    gateway.push(event_of(&late));
    // (H) bypass traffic: a key tally never saw.
    for (k, m) in [(10_004, 7), (10_006, 17)] {
        served.push(record(at(15, 16, m, 0), k, BYPASS_KEY));
    }
    Month { served, gateway }
}

fn reports_config() -> ReportsConfig {
    let yaml = r#"
bill_aborted_in_full: true          # (B)
zero_cached_tokens: true            # (D)
clock_skew_ms: 90000                # (G)
price_changes:                      # (E) the provider raised gpt-4o prices on 10-20
  - { model: gpt-4o, effective_from: "2026-10-20T00:00:00Z", input: 3.00, output: 12.00 }
credits:                            # (I)
  - { provider: openai, date: "2026-10-25", amount_usd: 5.0, description: "Service credit" }
"#;
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn pages(mut fetch: impl FnMut(Option<&str>) -> Value) -> Parsed {
    let mut all = Parsed::default();
    let mut page: Option<String> = None;
    loop {
        let v = fetch(page.as_deref());
        let bytes = serde_json::to_vec(&v).unwrap();
        let url_like = "simulated";
        let parsed = if v["data"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find_map(|b| b["results"].as_array()?.first().cloned())
            })
            .is_some_and(|r| r["object"] == "organization.costs.result")
        {
            openai::parse_costs(&bytes, url_like).unwrap()
        } else {
            openai::parse_usage(&bytes, url_like).unwrap()
        };
        all.usage.extend(parsed.usage);
        all.costs.extend(parsed.costs);
        all.pages += 1;
        match v["next_page"].as_str() {
            Some(next) if v["has_more"] == true => page = Some(next.to_owned()),
            _ => break,
        }
    }
    all
}

fn gateway_inputs(events: &[GatewayEvent], width: i64) -> (Vec<GatewayBucket>, Vec<GatewayMinute>) {
    let mut buckets: BTreeMap<(String, i64), GatewayBucket> = BTreeMap::new();
    let mut minutes: BTreeMap<i64, i64> = BTreeMap::new();
    for e in events {
        let start = e.at.div_euclid(width) * width;
        let b = buckets
            .entry((e.model.clone(), start))
            .or_insert_with(|| GatewayBucket {
                upstream: Some("openai".into()),
                model: e.model.clone(),
                bucket_start: start,
                ..GatewayBucket::default()
            });
        if e.ok {
            b.figures += e.figures;
        }
        b.aborted += i64::from(e.aborted);
        b.failed += i64::from(e.failed);
        b.retries += i64::from(e.retry);
        *minutes
            .entry(e.at.div_euclid(60_000_000) * 60_000_000)
            .or_default() += 1;
    }
    (
        buckets.into_values().collect(),
        minutes
            .into_iter()
            .map(|(minute, events)| GatewayMinute {
                upstream: Some("openai".into()),
                minute,
                events,
            })
            .collect(),
    )
}

#[test]
fn a_simulated_month_with_every_discrepancy_class_is_fully_attributed() {
    let m = month();
    let cfg = reports_config();
    let (start, end) = (at(1, 0, 0, 0), at(31, 0, 0, 0) + 86_400_000_000);
    let (s, e) = (start / 1_000_000, end / 1_000_000);
    let usage = pages(|page| {
        let mut q = format!(
            "start_time={s}&end_time={e}&bucket_width=1h&group_by[]=api_key_id&group_by[]=model&limit=168"
        );
        if let Some(p) = page {
            q.push_str(&format!("&page={p}"));
        }
        let q = OpenAiUsageQuery::from_query_string(Some(&q)).unwrap();
        reports::openai_usage(OpenAiUsageKind::Completions, &m.served, &q, &cfg).unwrap()
    });
    let costs = pages(|page| {
        let mut q = format!("start_time={s}&end_time={e}&group_by[]=line_item&limit=31");
        if let Some(p) = page {
            q.push_str(&format!("&page={p}"));
        }
        let q = OpenAiCostsQuery::from_query_string(Some(&q)).unwrap();
        reports::openai_costs(&m.served, &q, &cfg).unwrap()
    });
    assert!(
        usage.pages >= 5,
        "a month of hourly buckets spans several pages"
    );
    assert!(!costs.costs.is_empty());

    let config = ReconcileConfig {
        accounts: vec![Account {
            provider: "openai".into(),
            upstream: "openai".into(),
            api_key_ids: vec![reports::api_key_id(Provider::Openai, GATEWAY_KEY)],
            project_ids: vec![],
        }],
        ..ReconcileConfig::default()
    };
    let (gateway, minutes) = gateway_inputs(&m.gateway, 3_600_000_000);
    let inputs = Inputs {
        provider: "openai".into(),
        start,
        end,
        gateway,
        minutes,
        provider_usage: usage.usage,
        provider_costs: costs.costs.clone(),
    };
    let prices = PriceTable::built_in();
    let r = reconcile(&inputs, &config, &prices);

    // Where each cause was found: (cause, bucket start).
    let found: BTreeSet<(Cause, i64)> = r
        .findings
        .iter()
        .filter(|f| !(f.cause == Cause::Unexplained && f.within_tolerance))
        .map(|f| (f.cause, f.bucket_start.as_micros()))
        .collect();
    let mut expected: BTreeSet<(Cause, i64)> = [
        (Cause::MissingGatewayEvents, at(3, 10, 0, 0)),
        (Cause::AbortedStreamBilled, at(5, 14, 0, 0)),
        (Cause::Retries, at(7, 9, 0, 0)),
        (Cause::CachedTokenReporting, at(9, 11, 0, 0)),
        (Cause::BucketSkew, at(12, 23, 0, 0)),
        (Cause::BucketSkew, at(13, 0, 0, 0)),
        (Cause::BypassTraffic, at(15, 16, 0, 0)),
        (Cause::ProviderCredit, at(25, 0, 0, 0)),
        (Cause::ModelAlias, at(1, 0, 0, 0)),
    ]
    .into_iter()
    .collect();
    for d in 20..=31 {
        expected.insert((Cause::StalePriceTable, at(d, 0, 0, 0)));
    }
    let unexpected: Vec<_> = r
        .findings
        .iter()
        .filter(|f| !expected.contains(&(f.cause, f.bucket_start.as_micros())))
        .filter(|f| !(f.cause == Cause::Unexplained && f.within_tolerance))
        .collect();
    assert!(unexpected.is_empty(), "false positives: {unexpected:#?}");
    let missing: Vec<_> = expected.difference(&found).collect();
    assert!(missing.is_empty(), "not detected: {missing:?}");
    assert_eq!(r.unexplained_over_tolerance, 0);

    // The figures of each finding are the injected ones.
    let one = |c: Cause| r.of(c).next().unwrap().difference;
    // Four requests went missing, across the two models of the traffic (one finding each).
    let missing: Vec<i64> = r
        .of(Cause::MissingGatewayEvents)
        .map(|f| f.difference.requests)
        .collect();
    assert_eq!(missing, [2, 2]);
    assert_eq!(one(Cause::AbortedStreamBilled).output, 150);
    assert_eq!(one(Cause::Retries).requests, 1);
    assert_eq!(one(Cause::CachedTokenReporting).cached, -64);
    assert_eq!(one(Cause::BucketSkew).requests, -1);
    let bypass: i64 = r
        .of(Cause::BypassTraffic)
        .map(|f| f.difference.requests)
        .sum();
    assert_eq!(bypass, 2);
    assert_eq!(
        r.of(Cause::ProviderCredit).next().unwrap().money_micros,
        -5_000_000
    );
    let alias = r.of(Cause::ModelAlias).next().unwrap();
    assert!(
        alias.evidence.contains("gpt-4o-mini-2024-07-18"),
        "{}",
        alias.evidence
    );

    // Money: the provider total is the cost report's, to the µ$; the attribution sums
    // exactly to the difference.
    let provider_total: i64 = costs.costs.iter().map(|c| c.amount_micros).sum();
    assert_eq!(r.provider_totals.money_micros, provider_total);
    let attributed: i64 = r.findings.iter().map(|f| f.money_micros).sum();
    assert_eq!(attributed, r.money_difference_micros);
    // The stale-price money is the price change applied to the gpt-4o tokens billed
    // from 10-20 on (+$0.50/M input, +$2.00/M output), up to the provider's per-line
    // rounding (3 lines a day).
    let (inp, out) = m
        .served
        .iter()
        .filter(|r| r.model_served == "gpt-4o" && r.at + 90_000_000 >= at(20, 0, 0, 0))
        .filter(|r| r.key_fingerprint.as_deref() == Some(fingerprint(GATEWAY_KEY).as_str()))
        .fold((0u64, 0u64), |(i, o), r| {
            (i + r.input_tokens, o + r.output_tokens)
        });
    let price_change = (inp as i64 * 50 + out as i64 * 200 + 50) / 100;
    let stale: i64 = r.of(Cause::StalePriceTable).map(|f| f.money_micros).sum();
    assert!(
        (stale - price_change).abs() <= 12 * 2,
        "stale {stale} µ$ vs price change {price_change} µ$"
    );
}

#[test]
fn identical_sides_report_nothing() {
    let m = month();
    let cfg = ReportsConfig::default();
    let (start, end) = (at(1, 0, 0, 0), at(2, 0, 0, 0));
    let served: Vec<ServedRecord> = m.served.into_iter().filter(|r| r.at < end).collect();
    let events: Vec<GatewayEvent> = served.iter().map(event_of).collect();
    let q = OpenAiUsageQuery::from_query_string(Some(&format!(
        "start_time={}&end_time={}&bucket_width=1h&group_by[]=model&limit=168",
        start / 1_000_000,
        end / 1_000_000
    )))
    .unwrap();
    let usage = reports::openai_usage(OpenAiUsageKind::Completions, &served, &q, &cfg).unwrap();
    let usage = openai::parse_usage(&serde_json::to_vec(&usage).unwrap(), "t").unwrap();
    let (gateway, minutes) = gateway_inputs(&events, 3_600_000_000);
    let r = reconcile(
        &Inputs {
            provider: "openai".into(),
            start,
            end,
            gateway,
            minutes,
            provider_usage: usage.usage,
            provider_costs: vec![],
        },
        &ReconcileConfig::default(),
        &PriceTable::built_in(),
    );
    let real: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.cause != Cause::ModelAlias)
        .collect();
    assert!(real.is_empty(), "{real:#?}");
    assert_eq!(r.gateway.figures, r.provider_totals.figures);
    assert_eq!(r.gateway.figures.requests, 144);
}
