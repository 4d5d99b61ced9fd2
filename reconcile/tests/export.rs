//! Billing exports at the library level, over Delta tables written here the way the
//! ledger writes them (the contract schemas, partitioned by `day`): re-run idempotence,
//! closing a period and late events as adjustment lines, byte-identical re-export of a
//! closed period, exact markup arithmetic, Stripe pre-aggregation with its 35-day and
//! 24-hour rules, the CloudEvents shape, the three-way check, and the pricing example of
//! docs/billing-exports.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use deltalake::DeltaTableBuilder;
use deltalake::protocol::SaveMode;
use tally_events::arrow::{Table, corrections_to_batch, usage_to_batch, with_day_column};
use tally_events::model::{FinishState, Provider, Route, UsageSource};
use tally_events::{CorrectionEvent, EventHeader, Timestamp, TokenCounts, UsageEvent};
use tally_reconcile::export::{
    AdjustmentReason, ExportFormat, ExportOutput, ExportRequest, Granularity, LineKind, Period,
    Pricing, export,
};
use url::Url;

fn at(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn usage(
    tenant: &str,
    model: &str,
    when: &str,
    input: u64,
    cached: u64,
    output: u64,
    cost: i64,
) -> UsageEvent {
    let mut h = EventHeader::new(
        "test",
        &format!("req-{when}-{tenant}-{model}-{input}"),
        tenant,
    );
    h.occurred_at = at(when);
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some(model.to_owned());
    h.api_key_id = Some("k1".into());
    UsageEvent {
        header: h,
        upstream: None,
        status_code: Some(200),
        streamed: false,
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
            ..TokenCounts::default()
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: cost,
        price_version: Some("t1".into()),
        latency_ms: 10,
        ttft_ms: None,
        retry_attempt: 0,
        retry_of: None,
    }
}

fn correction(of: &UsageEvent, when: &str, output: u64, cost: i64) -> CorrectionEvent {
    let mut h = EventHeader::new("test", &of.header.request_id, &of.header.tenant);
    h.occurred_at = at(when);
    CorrectionEvent {
        header: h,
        corrects_event_id: of.header.event_id,
        reason: "provider report".into(),
        input_tokens: None,
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: Some(output),
        reasoning_tokens: None,
        cost_micros: Some(cost),
        price_version: None,
        usage_source: None,
    }
}

async fn append(root: &Path, table: Table, batch: arrow::array::RecordBatch) {
    let dir = root.join(table.name());
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = DeltaTableBuilder::from_url(Url::from_directory_path(&dir).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let _ = t.load().await;
    t.write(vec![with_day_column(table, &batch).unwrap()])
        .with_save_mode(SaveMode::Append)
        .with_partition_columns(["day"])
        .await
        .unwrap();
}

async fn add_usage(root: &Path, rows: &[UsageEvent]) {
    append(root, Table::Usage, usage_to_batch(rows).unwrap()).await;
}

async fn add_corrections(root: &Path, rows: &[CorrectionEvent]) {
    append(
        root,
        Table::Corrections,
        corrections_to_batch(rows).unwrap(),
    )
    .await;
}

fn req(period: &str, format: ExportFormat) -> ExportRequest {
    let mut r = ExportRequest::new(Period::parse(period).unwrap(), format);
    r.now_micros = at("2026-11-05T00:00:00Z").as_micros();
    r.pricing = Pricing::from_yaml(PRICING).unwrap();
    r
}

const PRICING: &str = "
default:
  markup_percent: 20
tenants:
  acme:
    name: Acme Corp
    stripe_customer_id: cus_acme
    markup_percent: 12.5
  globex:
    stripe_customer_id: cus_globex
    prices:
      gpt-priced:
        input: 0.15
        cached_input: 0.075
        output: 0.6
";

async fn run(root: &Path, r: &ExportRequest) -> ExportOutput {
    export(root.to_str().unwrap(), r).await.unwrap()
}

fn text(o: &ExportOutput) -> String {
    String::from_utf8(o.bytes.clone()).unwrap()
}

async fn october(root: &Path) -> Vec<UsageEvent> {
    let rows = vec![
        usage(
            "acme",
            "gpt-4o-mini",
            "2026-10-03T10:15:00Z",
            1000,
            200,
            500,
            333_333,
        ),
        usage("acme", "gpt-4o-mini", "2026-10-03T10:45:00Z", 100, 0, 50, 1),
        usage("acme", "gpt-4o", "2026-10-03T11:05:00Z", 10, 0, 5, 100),
        usage(
            "globex",
            "gpt-priced",
            "2026-10-20T00:00:00Z",
            1000,
            200,
            500,
            999,
        ),
        // Outside the period on both sides.
        usage(
            "acme",
            "gpt-4o-mini",
            "2026-09-30T23:59:59.999999Z",
            7,
            0,
            7,
            7,
        ),
        usage("acme", "gpt-4o-mini", "2026-11-01T00:00:00Z", 9, 0, 9, 9),
    ];
    add_usage(root, &rows).await;
    rows
}

#[tokio::test]
async fn a_rerun_gives_the_same_ids_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    october(tmp.path()).await;
    for f in [
        ExportFormat::Csv,
        ExportFormat::Jsonl,
        ExportFormat::Stripe,
        ExportFormat::CloudEvents,
    ] {
        let a = run(tmp.path(), &req("2026-10", f)).await;
        let b = run(tmp.path(), &req("2026-10", f)).await;
        assert!(!a.bytes.is_empty(), "{f:?}");
        assert_eq!(a.bytes, b.bytes, "{f:?}");
        assert_eq!(a.run.content_sha256, b.run.content_sha256);
    }
    let a = run(tmp.path(), &req("2026-10", ExportFormat::Csv)).await;
    let ids: Vec<&str> = a.lines.iter().map(|l| l.id.as_str()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(unique.len(), 3, "line ids are unique");
    // Every run is recorded.
    let state =
        tally_reconcile::export::ExportState::load(&Url::from_directory_path(tmp.path()).unwrap())
            .await
            .unwrap();
    assert_eq!(state.runs().len(), 9);
}

#[tokio::test]
async fn markup_and_prices_are_exact_to_the_micro_dollar() {
    let tmp = tempfile::tempdir().unwrap();
    october(tmp.path()).await;
    let out = run(tmp.path(), &req("2026-10", ExportFormat::Csv)).await;
    let csv = text(&out);
    let line = |tenant: &str, model: &str| {
        out.lines
            .iter()
            .find(|l| l.tenant == tenant && l.model == model)
            .unwrap()
            .clone()
    };
    // acme, 12.5%: (333_333 + 1) × 1.125 = 375_000.75 → 375_001 (one rounding per line).
    let l = line("acme", "gpt-4o-mini");
    assert_eq!(l.figures.requests, 2);
    assert_eq!(l.figures.input_tokens, 1100);
    assert_eq!(l.figures.cached_input_tokens, 200);
    assert_eq!(l.figures.cost_micros, 333_334);
    assert_eq!(l.billed_micros, 375_001);
    assert_eq!(l.billed_usd, "0.375001");
    assert_eq!(l.pricing, "markup 12.5%");
    assert_eq!(l.customer, "Acme Corp");
    // 100 × 1.125 = 112.5 → 113 (half away from zero).
    assert_eq!(line("acme", "gpt-4o").billed_micros, 113);
    // globex, per-model prices ($/Mtok = µ$/token): 800 × 0.15 + 200 × 0.075 + 500 × 0.6
    // = 120 + 15 + 300 = 435, whatever the gateway cost (999).
    let g = line("globex", "gpt-priced");
    assert_eq!(g.billed_micros, 435);
    assert_eq!(g.pricing, "prices");
    assert_eq!(g.figures.cost_micros, 999);
    assert!(csv.starts_with("id,kind,reason,period,"), "{csv}");
    assert!(csv.contains(",usage,,2026-10,2026-10-01T00:00:00Z,2026-11-01T00:00:00Z,acme,Acme Corp,cus_acme,openai,gpt-4o-mini,2,1100,200,0,550,0,0,0,333334,375001,0.375001,markup 12.5%\n"), "{csv}");
    assert_eq!(csv.lines().count(), 4);
}

#[tokio::test]
async fn corrections_are_applied_and_the_check_adds_up() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = october(tmp.path()).await;
    add_corrections(
        tmp.path(),
        &[correction(&rows[2], "2026-10-03T12:00:00Z", 6, 120)],
    )
    .await;
    let mut r = req("2026-10", ExportFormat::Jsonl);
    r.check = true;
    let out = run(tmp.path(), &r).await;
    let l = out.lines.iter().find(|l| l.model == "gpt-4o").unwrap();
    assert_eq!(l.figures.output_tokens, 6);
    assert_eq!(l.figures.cost_micros, 120);
    let check = out.check.clone().unwrap();
    assert!(check.export_matches_ledger, "{}", check.render_text());
    assert_eq!(check.ledger.cost_micros, 333_334 + 120 + 999);
    assert_eq!(check.ledger.requests, 4);
    assert!(!check.provider_costs_available);
    // JSONL: one object per line item.
    let v: Vec<serde_json::Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["kind"], "usage");
    assert_eq!(v[0]["tenant"], "acme");
    assert!(v[0]["cost_micros"].is_i64());
}

#[tokio::test]
async fn the_check_compares_with_provider_costs() {
    use tally_reconcile::model::{ProviderCostRow, costs_batch};
    let tmp = tempfile::tempdir().unwrap();
    october(tmp.path()).await;
    let cost = |day: &str, amount: i64| ProviderCostRow {
        provider: "openai".into(),
        source: "openai.costs".into(),
        bucket_start: at(&format!("{day}T00:00:00Z")),
        bucket_end: at(&format!("{day}T23:59:59Z")),
        line_item: Some(day.into()),
        amount_micros: amount,
        currency: "usd".into(),
        ..ProviderCostRow::default()
    };
    let batch = costs_batch(
        &[
            cost("2026-10-03", 334_000),
            cost("2026-10-20", 1_000),
            cost("2026-11-01", 5),
        ],
        at("2026-11-02T00:00:00Z"),
    )
    .unwrap();
    let dir = tmp.path().join("provider_costs");
    std::fs::create_dir_all(&dir).unwrap();
    DeltaTableBuilder::from_url(Url::from_directory_path(&dir).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
    let mut r = req("2026-10", ExportFormat::Csv);
    r.check = true;
    let check = run(tmp.path(), &r).await.check.unwrap();
    assert!(check.provider_costs_available);
    assert_eq!(check.providers.len(), 1, "{check:?}");
    let p = &check.providers[0];
    assert_eq!(p.provider, "openai");
    assert_eq!(p.gateway_cost_micros, 333_334 + 100 + 999);
    assert_eq!(p.provider_cost_micros, 335_000);
    assert_eq!(p.difference_micros, 335_000 - 334_433);
    assert!(
        check
            .render_text()
            .contains("openai: gateway $0.334433 provider $0.335000")
    );
}

#[tokio::test]
async fn a_closed_period_is_reproduced_byte_for_byte_and_late_events_become_adjustments() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = october(tmp.path()).await;
    let mut close = req("2026-10", ExportFormat::Csv);
    close.close = true;
    let closed = run(tmp.path(), &close).await;
    assert!(closed.closed && closed.run.closed);
    let mut before = vec![(ExportFormat::Csv, closed.bytes.clone())];
    for f in [ExportFormat::Jsonl, ExportFormat::CloudEvents] {
        before.push((f, run(tmp.path(), &req("2026-10", f)).await.bytes));
    }

    // Adjustments right after the close: none.
    let mut adj = req("2026-10", ExportFormat::Csv);
    adj.adjustments = true;
    assert_eq!(text(&run(tmp.path(), &adj).await).lines().count(), 1);

    // Late: a new October event and a correction, committed after the close.
    add_usage(
        tmp.path(),
        &[usage(
            "acme",
            "gpt-4o",
            "2026-10-31T23:00:00Z",
            20,
            0,
            10,
            200,
        )],
    )
    .await;
    add_corrections(
        tmp.path(),
        &[correction(&rows[3], "2026-11-03T00:00:00Z", 400, 900)],
    )
    .await;
    // And a November event, which does not concern October at all.
    add_usage(
        tmp.path(),
        &[usage("acme", "gpt-4o", "2026-11-02T00:00:00Z", 1, 1, 1, 1)],
    )
    .await;

    for (f, first) in &before {
        let mut at_close = req("2026-10", *f);
        // Closing again changes nothing.
        at_close.close = *f == ExportFormat::Csv;
        let again = run(tmp.path(), &at_close).await;
        assert_eq!(&again.bytes, first, "{f:?}: a closed period is reproduced");
        assert_eq!(again.versions, closed.versions);
        assert!(
            again.notes.iter().any(|n| n.contains("--adjustments")),
            "{:?}",
            again.notes
        );
    }

    let out = run(tmp.path(), &adj).await;
    assert_eq!(out.run.base, Some(closed.versions));
    let lines = &out.lines;
    assert_eq!(lines.len(), 2, "{}", text(&out));
    assert!(lines.iter().all(|l| l.kind == LineKind::Adjustment
        && l.reason == Some(AdjustmentReason::LateEvents)
        && l.period == "2026-10"));
    let acme = lines.iter().find(|l| l.tenant == "acme").unwrap();
    assert_eq!(acme.figures.requests, 1);
    assert_eq!(acme.figures.cost_micros, 200);
    // (100 + 200) × 1.125 = 337.5 → 338, minus the 113 billed at close.
    assert_eq!(acme.billed_micros, 338 - 113);
    let globex = lines.iter().find(|l| l.tenant == "globex").unwrap();
    assert_eq!(globex.figures.requests, 0);
    assert_eq!(globex.figures.output_tokens, -100);
    assert_eq!(globex.figures.cost_micros, -99);
    // Prices: output 400 instead of 500 at 0.6 µ$/token.
    assert_eq!(globex.billed_micros, -60);
    // Adjustment ids differ from the usage lines' and are stable across re-runs.
    assert!(closed.lines.iter().all(|l| l.id != acme.id));
    let again = run(tmp.path(), &adj).await;
    assert_eq!(again.bytes, out.bytes);

    // Sealing the batch: the next adjustments start from there.
    let mut seal = adj.clone();
    seal.close = true;
    assert_eq!(run(tmp.path(), &seal).await.bytes, out.bytes);
    assert_eq!(text(&run(tmp.path(), &adj).await).lines().count(), 1);

    // Adjustments of an open period are refused, with the code.
    let mut open = req("2026-11", ExportFormat::Csv);
    open.adjustments = true;
    let e = export(tmp.path().to_str().unwrap(), &open)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "export.closed");
}

fn events(o: &ExportOutput) -> Vec<serde_json::Value> {
    text(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn stripe_events_are_pre_aggregated_per_customer_and_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    october(tmp.path()).await;
    let hourly = run(tmp.path(), &req("2026-10", ExportFormat::Stripe)).await;
    let ev = events(&hourly);
    // acme: hours 10:00 (two events, one model) and 11:00; globex: 00:00 on the 20th.
    // Three meters each (input, output, billed).
    assert_eq!(ev.len(), 9, "{}", text(&hourly));
    let find = |name: &str, customer: &str, ts: i64| {
        ev.iter()
            .find(|e| {
                e["event_name"] == name
                    && e["payload"]["stripe_customer_id"] == customer
                    && e["timestamp"] == ts
            })
            .unwrap_or_else(|| panic!("{name} {customer} {ts}: {}", text(&hourly)))
            .clone()
    };
    let ten = at("2026-10-03T10:00:00Z").as_micros() / 1_000_000;
    let e = find("tally_input_tokens", "cus_acme", ten);
    assert_eq!(e["payload"]["value"], "1100");
    assert!(e["identifier"].as_str().unwrap().starts_with("tly_"));
    assert_eq!(
        find("tally_billed_micros", "cus_acme", ten)["payload"]["value"],
        "375001"
    );
    assert_eq!(
        find("tally_output_tokens", "cus_acme", ten + 3600)["payload"]["value"],
        "5"
    );

    let mut daily = req("2026-10", ExportFormat::Stripe);
    daily.granularity = Granularity::Day;
    let d = run(tmp.path(), &daily).await;
    let ev = events(&d);
    assert_eq!(ev.len(), 6, "{}", text(&d));
    let day = at("2026-10-03T00:00:00Z").as_micros() / 1_000_000;
    let e = ev
        .iter()
        .find(|e| e["event_name"] == "tally_input_tokens" && e["timestamp"] == day)
        .unwrap();
    assert_eq!(e["payload"]["value"], "1110");
    // Billed per bucket line: 375_001 (gpt-4o-mini) + 113 (gpt-4o).
    let e = ev
        .iter()
        .find(|e| e["event_name"] == "tally_billed_micros" && e["timestamp"] == day)
        .unwrap();
    assert_eq!(e["payload"]["value"], "375114");
    // Identifiers: unique, and different per granularity.
    let mut ids: Vec<String> = events(&hourly)
        .iter()
        .chain(ev.iter())
        .map(|e| e["identifier"].as_str().unwrap().to_owned())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);

    // A tenant without a Stripe customer id is an error that says what to add.
    add_usage(
        tmp.path(),
        &[usage("initech", "m", "2026-10-05T00:00:00Z", 1, 0, 1, 1)],
    )
    .await;
    let e = export(
        tmp.path().to_str().unwrap(),
        &req("2026-10", ExportFormat::Stripe),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "export.format");
    assert!(e.to_string().contains("initech"), "{e}");
}

#[tokio::test]
async fn stripe_windows_turn_old_usage_and_late_corrections_into_adjustments() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = vec![
        // Older than 35 days at "now" (2026-12-20): not a meter event.
        usage("acme", "gpt-4o", "2026-11-10T08:00:00Z", 100, 0, 10, 1000),
        // Within the window, corrected within 24 hours: the corrected figures are sent.
        usage("acme", "gpt-4o", "2026-11-20T08:00:00Z", 200, 0, 20, 2000),
        // Within the window, corrected 3 days later: the original is sent, the
        // difference becomes an adjustment line.
        usage("acme", "gpt-4o", "2026-11-21T08:00:00Z", 300, 0, 30, 3000),
    ];
    add_usage(tmp.path(), &rows).await;
    add_corrections(
        tmp.path(),
        &[
            correction(&rows[1], "2026-11-20T20:00:00Z", 25, 2500),
            correction(&rows[2], "2026-11-24T08:00:00Z", 40, 4000),
        ],
    )
    .await;
    let mut r = req("2026-11", ExportFormat::Stripe);
    r.now_micros = at("2026-12-20T00:00:00Z").as_micros();
    let out = run(tmp.path(), &r).await;
    let ev = events(&out);
    let out_tokens: Vec<(i64, String)> = ev
        .iter()
        .filter(|e| e["event_name"] == "tally_output_tokens")
        .map(|e| {
            (
                e["timestamp"].as_i64().unwrap(),
                e["payload"]["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let secs = |s: &str| at(s).as_micros() / 1_000_000;
    assert_eq!(
        out_tokens,
        vec![
            (secs("2026-11-20T08:00:00Z"), "25".to_owned()),
            (secs("2026-11-21T08:00:00Z"), "30".to_owned()),
        ],
        "{}",
        text(&out)
    );
    let side = &out.side_adjustments;
    assert_eq!(side.len(), 2, "{side:?}");
    let old = side
        .iter()
        .find(|l| l.reason == Some(AdjustmentReason::StripeWindow))
        .unwrap();
    assert_eq!(old.figures.requests, 1);
    assert_eq!(old.figures.output_tokens, 10);
    assert_eq!(old.billed_micros, 1125);
    let late = side
        .iter()
        .find(|l| l.reason == Some(AdjustmentReason::LateCorrection))
        .unwrap();
    assert_eq!(late.figures.requests, 0);
    assert_eq!(late.figures.output_tokens, 10);
    assert_eq!(late.figures.cost_micros, 1000);
    assert_eq!(late.billed_micros, 1125);
    assert!(
        out.notes.iter().any(|n| n.contains("35-day")),
        "{:?}",
        out.notes
    );
    // The CSV/JSONL line items carry the corrected figures in full.
    let lines = run(tmp.path(), &{
        let mut c = r.clone();
        c.format = ExportFormat::Csv;
        c
    })
    .await;
    assert_eq!(lines.lines[0].figures.output_tokens, 10 + 25 + 40);
}

#[tokio::test]
async fn cloudevents_have_the_1_0_shape() {
    let tmp = tempfile::tempdir().unwrap();
    october(tmp.path()).await;
    let mut r = req("2026-10", ExportFormat::CloudEvents);
    r.granularity = Granularity::Day;
    let out = run(tmp.path(), &r).await;
    let ev = events(&out);
    assert_eq!(ev.len(), 3);
    for e in &ev {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
        ] {
            assert!(keys.contains(&k), "{k} missing in {e}");
        }
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "tally");
        assert_eq!(e["type"], "tally.usage");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).is_ok());
    }
    let acme = ev
        .iter()
        .find(|e| e["subject"] == "acme" && e["data"]["model"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(acme["time"], "2026-10-03T00:00:00Z");
    assert_eq!(acme["data"]["input_tokens"], 1100);
    assert_eq!(acme["data"]["cost_micros"], 333_334);
    assert_eq!(acme["data"]["billed_micros"], 375_001);
    assert_eq!(acme["data"]["bucket_end"], "2026-10-04T00:00:00Z");
    let mut ids: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[test]
fn the_pricing_example_in_the_docs_parses_and_prices_as_documented() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/billing-exports.md"),
    )
    .unwrap();
    let start = doc
        .find("```yaml pricing.yaml\n")
        .expect("the pricing example block");
    let rest = &doc[start + "```yaml pricing.yaml\n".len()..];
    let yaml = &rest[..rest.find("```").unwrap()];
    let p = Pricing::from_yaml(yaml).unwrap();
    assert_eq!(p.customer_name("acme"), "Acme Corp");
    assert_eq!(p.stripe_customer_id("acme"), Some("cus_Q3acme"));
    let f = tally_reconcile::export::Figures {
        requests: 1,
        input_tokens: 1_000_000,
        cached_input_tokens: 200_000,
        output_tokens: 100_000,
        cost_micros: 1_234_567,
        ..Default::default()
    };
    // The worked examples of the doc.
    assert_eq!(p.bill("acme", "gpt-4o", &f).micros, 1_388_888);
    assert_eq!(p.bill("globex", "gpt-4o", &f).micros, 1_481_480);
    assert_eq!(p.bill("acme", "gpt-4o-mini", &f).micros, 195_000);
}
