//! Importer tests: every fixture in `reconcile/fixtures/` parses to figures derived by
//! hand from the file, re-imports are idempotent, revised buckets replace, pulls from an
//! in-test HTTP server page, retry and resume, and bad input gets `reconcile.parse`
//! errors that name the place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tally_events::Timestamp;
use tally_reconcile::import::{self, Format, Period, PullConfig, PullProvider};
use tally_reconcile::model::{ProviderCostRow, ProviderUsageRow};
use tally_reconcile::{ReconStore, UpsertSummary};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn parse(format: Format, name: &str) -> import::Parsed {
    import::parse(format, &bytes(name), name, None).unwrap()
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct UsageTotals {
    rows: usize,
    input: u64,
    cached: u64,
    write: u64,
    output: u64,
    audio_in: u64,
    audio_out: u64,
    requests: u64,
}

fn usage_totals(rows: &[ProviderUsageRow]) -> UsageTotals {
    let mut t = UsageTotals {
        rows: rows.len(),
        ..UsageTotals::default()
    };
    for r in rows {
        t.input += r.input_tokens;
        t.cached += r.cached_input_tokens;
        t.write += r.cache_write_tokens;
        t.output += r.output_tokens;
        t.audio_in += r.audio_input_tokens;
        t.audio_out += r.audio_output_tokens;
        t.requests += r.requests.unwrap_or(0);
    }
    t
}

fn money(rows: &[ProviderCostRow]) -> i64 {
    rows.iter().map(|r| r.amount_micros).sum()
}

fn store() -> (tempfile::TempDir, ReconStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ReconStore::open(&dir.path().join("tables").to_string_lossy(), []).unwrap();
    (dir, store)
}

/// All three completions pages, by hand: 6 rows after the two `user_id` rows of the
/// 01:00 bucket are summed (300+200 input, 60+40 output, 1+1 requests).
fn completions_expected() -> UsageTotals {
    UsageTotals {
        rows: 6,
        input: 1200 + 5000 + 700 + 500 + 1000 + 400,
        cached: 200 + 100 + 500,
        write: 0,
        output: 300 + 800 + 150 + 100 + 250 + 100,
        audio_in: 50,
        audio_out: 20,
        requests: 4 + 10 + 2 + 2 + 3 + 1,
    }
}

#[test]
fn openai_completions_pages_parse_to_hand_figures() {
    let p1 = parse(Format::OpenAiUsage, "openai_usage_completions_p1.json");
    assert_eq!(p1.pages, 1);
    assert_eq!(p1.usage.len(), 4);
    let first = &p1.usage[0];
    assert_eq!(first.provider, "openai");
    assert_eq!(first.source, "openai.usage.completions");
    assert_eq!(first.bucket_start, ts("2026-10-01T00:00:00Z"));
    assert_eq!(first.bucket_end, ts("2026-10-01T01:00:00Z"));
    assert_eq!(first.project_id.as_deref(), Some("proj_alpha"));
    assert_eq!(first.api_key_id.as_deref(), Some("key_a"));
    assert_eq!(first.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(first.batch, Some(false));
    assert_eq!(first.service_tier.as_deref(), Some("default"));
    // OpenAI's input_tokens already include cached tokens: taken as is.
    assert_eq!((first.input_tokens, first.cached_input_tokens), (1200, 200));
    assert_eq!((first.output_tokens, first.requests), (300, Some(4)));
    assert_eq!(p1.usage[1].batch, Some(true));
    // The user-grouped rows of 01:00 become one row.
    let summed = &p1.usage[3];
    assert_eq!(summed.bucket_start, ts("2026-10-01T01:00:00Z"));
    assert_eq!(
        (summed.input_tokens, summed.output_tokens, summed.requests),
        (500, 100, Some(2))
    );
    assert_eq!(
        (
            p1.usage[2].audio_input_tokens,
            p1.usage[2].audio_output_tokens
        ),
        (50, 20)
    );

    let mut all = p1.usage.clone();
    for p in [
        "openai_usage_completions_p2.json",
        "openai_usage_completions_p3.json",
    ] {
        all.extend(parse(Format::OpenAiUsage, p).usage);
    }
    assert_eq!(usage_totals(&all), completions_expected());
}

#[test]
fn openai_embeddings_parse() {
    let p = parse(Format::OpenAiUsage, "openai_usage_embeddings.json");
    assert_eq!(p.usage.len(), 1);
    let r = &p.usage[0];
    assert_eq!(r.source, "openai.usage.embeddings");
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.requests),
        (16000, 0, Some(8))
    );
    assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(r.batch, None);
}

#[test]
fn openai_costs_dollars_become_exact_micros() {
    let p = parse(Format::OpenAiCosts, "openai_costs.json");
    let amounts: Vec<i64> = p.costs.iter().map(|c| c.amount_micros).collect();
    // 0.06 → 60 000; 1.234567 → 1 234 567; 0.0000015 → 1.5 µ$ → 2 (half away from
    // zero); 4.2 → 4 200 000; 0.1 → 100 000; -5 → -5 000 000.
    assert_eq!(
        amounts,
        vec![60_000, 1_234_567, 2, 4_200_000, 100_000, -5_000_000]
    );
    assert_eq!(money(&p.costs), 594_569);
    let input = &p.costs[0];
    assert_eq!(input.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(input.token_type.as_deref(), Some("input"));
    assert_eq!(input.cost_type.as_deref(), Some("tokens"));
    assert_eq!(input.currency, "usd");
    assert_eq!(input.bucket_end, ts("2026-10-02T00:00:00Z"));
    assert_eq!(p.costs[2].token_type.as_deref(), Some("cached_input"));
    assert_eq!(p.costs[3].model, None);
    assert_eq!(p.costs[3].line_item.as_deref(), Some("Image models"));
    assert_eq!(p.costs[5].cost_type.as_deref(), Some("credit"));
}

#[test]
fn anthropic_usage_input_includes_cache_reads_and_writes() {
    let p = parse(Format::AnthropicUsage, "anthropic_usage.json");
    assert_eq!(p.usage.len(), 3);
    let sonnet = &p.usage[0];
    assert_eq!(sonnet.provider, "anthropic");
    assert_eq!(sonnet.source, "anthropic.usage_report.messages");
    assert_eq!(
        sonnet.project_id.as_deref(),
        Some("wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ")
    );
    // Two context windows summed: uncached 1500+100, read 200, creation 500+1000.
    assert_eq!(sonnet.input_tokens, 1600 + 200 + 1500);
    assert_eq!(sonnet.cached_input_tokens, 200);
    assert_eq!(sonnet.cache_write_tokens, 1500);
    assert_eq!(sonnet.output_tokens, 550);
    assert_eq!((sonnet.batch, sonnet.requests), (Some(false), None));
    let haiku = &p.usage[1];
    assert_eq!(haiku.project_id, None);
    assert_eq!(haiku.batch, Some(true));
    assert_eq!(
        (haiku.input_tokens, haiku.cached_input_tokens),
        (5000, 1000)
    );
    assert_eq!(
        usage_totals(&p.usage),
        UsageTotals {
            rows: 3,
            input: 3300 + 5000 + 1200,
            cached: 1500,
            write: 1600,
            output: 2950,
            ..UsageTotals::default()
        }
    );
}

#[test]
fn anthropic_costs_cents_strings_become_micros() {
    let p = parse(Format::AnthropicCosts, "anthropic_costs.json");
    let amounts: Vec<i64> = p.costs.iter().map(|c| c.amount_micros).collect();
    // "480.00" cents = $4.80; "123.45" = $1.2345; "0.06" = 600 µ$; "0.0001" = 1 µ$;
    // "1000" = $10.
    assert_eq!(amounts, vec![4_800_000, 1_234_500, 600, 1, 10_000_000]);
    assert_eq!(money(&p.costs), 16_035_101);
    let kinds: Vec<Option<&str>> = p.costs.iter().map(|c| c.token_type.as_deref()).collect();
    assert_eq!(
        kinds,
        vec![
            Some("input"),
            Some("output"),
            Some("cached_input"),
            Some("cache_write"),
            None
        ]
    );
    assert_eq!(p.costs[0].currency, "usd");
    assert_eq!(p.costs[0].cost_type.as_deref(), Some("tokens"));
    assert_eq!(p.costs[4].cost_type.as_deref(), Some("web_search"));
    assert_eq!(p.costs[4].line_item.as_deref(), Some("Web Search"));
}

#[test]
fn gcp_billing_export_gemini_lines() {
    let p = parse(Format::GcpBilling, "gcp_billing.csv");
    assert_eq!(p.skipped, 1, "the Compute Engine line is not Gemini");
    // 0.3 + 0.0075 + 1.25 − 0.25 (free tier credit) + 0.015 dollars.
    assert_eq!(p.costs.len(), 5);
    assert_eq!(
        money(&p.costs),
        300_000 + 7_500 + 1_250_000 - 250_000 + 15_000
    );
    let credit = p
        .costs
        .iter()
        .find(|c| c.cost_type.as_deref() == Some("credit"))
        .unwrap();
    assert_eq!(credit.amount_micros, -250_000);
    assert!(
        credit
            .line_item
            .as_deref()
            .unwrap()
            .ends_with("credit: Free tier")
    );
    assert_eq!(p.costs[0].model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(p.costs[0].provider, "gemini");
    assert_eq!(p.costs[0].token_type.as_deref(), Some("input"));
    assert_eq!(p.costs[0].bucket_start, ts("2026-10-01T00:00:00Z"));
    assert_eq!(p.usage.len(), 2);
    let flash = &p.usage[0];
    assert_eq!(flash.project_id.as_deref(), Some("gem-proj"));
    assert_eq!(
        (
            flash.input_tokens,
            flash.cached_input_tokens,
            flash.output_tokens
        ),
        (1_100_000, 100_000, 500_000)
    );
    let vertex = &p.usage[1];
    assert_eq!(vertex.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(vertex.input_tokens, 150_000);
}

#[test]
fn generic_csv_with_mapping() {
    let mapping = import::CsvMapping::from_file(&fixture("invoice_mapping.yaml")).unwrap();
    let p = import::parse(
        Format::Csv,
        &bytes("invoice_lines.csv"),
        "invoice_lines.csv",
        Some(&mapping),
    )
    .unwrap();
    // Cents: 250 + 25.5 + 1000 + 500 = 1775.5 cents = $17.755.
    let amounts: Vec<i64> = p.costs.iter().map(|c| c.amount_micros).collect();
    assert_eq!(amounts, vec![2_500_000, 255_000, 10_000_000, 5_000_000]);
    assert_eq!(p.costs[0].source, "csv.acme-invoice");
    assert_eq!(p.costs[0].bucket_start, ts("2026-10-01T00:00:00Z"));
    assert_eq!(p.costs[0].bucket_end, ts("2026-10-02T00:00:00Z"));
    assert_eq!(p.costs[1].token_type.as_deref(), Some("cached_input"));
    assert_eq!(p.costs[3].line_item.as_deref(), Some("Support fee"));
    assert_eq!(p.costs[3].token_type, None);
    assert_eq!(p.usage.len(), 1);
    let u = &p.usage[0];
    assert_eq!(
        (
            u.input_tokens,
            u.cached_input_tokens,
            u.output_tokens,
            u.requests
        ),
        (1_200_000, 200_000, 100_000, Some(120))
    );
}

#[test]
fn formats_are_detected_from_content() {
    let cases = [
        ("openai_usage_completions_p1.json", Format::OpenAiUsage),
        ("openai_usage_embeddings.json", Format::OpenAiUsage),
        ("openai_costs.json", Format::OpenAiCosts),
        ("anthropic_usage.json", Format::AnthropicUsage),
        ("anthropic_costs.json", Format::AnthropicCosts),
        ("gcp_billing.csv", Format::GcpBilling),
        ("invoice_lines.csv", Format::Csv),
    ];
    for (file, format) in cases {
        assert_eq!(
            import::detect(&bytes(file), file).unwrap(),
            format,
            "{file}"
        );
        assert_eq!(format.name().parse::<Format>().unwrap(), format);
    }
    assert_eq!(
        "xml".parse::<Format>().unwrap_err().code(),
        "reconcile.config"
    );
}

#[tokio::test]
async fn importing_the_same_files_twice_changes_nothing() {
    let (_dir, store) = store();
    let mapping = fixture("invoice_mapping.yaml");
    let files: Vec<(&str, Option<PathBuf>)> = vec![
        ("openai_usage_completions_p1.json", None),
        ("openai_usage_completions_p2.json", None),
        ("openai_usage_completions_p3.json", None),
        ("openai_costs.json", None),
        ("anthropic_usage.json", None),
        ("anthropic_costs.json", None),
        ("gcp_billing.csv", None),
        ("invoice_lines.csv", Some(mapping)),
    ];
    let mut first = UpsertSummary::default();
    for (f, m) in &files {
        let s = import::import_file(&store, None, &fixture(f), m.as_deref())
            .await
            .unwrap();
        first = first.plus(s.usage).plus(s.costs);
    }
    assert_eq!(first.replaced + first.unchanged, 0);
    let usage_version = store.version("provider_usage").await.unwrap();
    let costs_version = store.version("provider_costs").await.unwrap();
    let usage = store.read_usage(None, None, None).await.unwrap();
    let costs = store.read_costs(None, None, None).await.unwrap();
    // 6 completions + 3 Anthropic + 2 Gemini + 1 invoice usage rows.
    assert_eq!(usage.len(), 12);
    assert_eq!(costs.len(), 6 + 5 + 5 + 4);
    assert_eq!(first.inserted, 12 + 20);

    for (f, m) in &files {
        let s = import::import_file(&store, None, &fixture(f), m.as_deref())
            .await
            .unwrap();
        assert_eq!(s.usage.inserted + s.usage.replaced, 0, "{f}");
        assert_eq!(s.costs.inserted + s.costs.replaced, 0, "{f}");
    }
    assert_eq!(
        store.version("provider_usage").await.unwrap(),
        usage_version
    );
    assert_eq!(
        store.version("provider_costs").await.unwrap(),
        costs_version
    );
    let again = store.read_usage(None, None, None).await.unwrap();
    assert_eq!(usage_totals(&again), usage_totals(&usage));
    let costs_again = store.read_costs(None, None, None).await.unwrap();
    assert_eq!(costs_again.len(), costs.len());
    assert_eq!(money(&costs_again), money(&costs));
    assert_eq!(money(&costs), 594_569 + 16_035_101 + 1_322_500 + 17_755_000);
    // Filters: by provider and by bucket start.
    // The invoice's provider is openai too: its row has its own source.
    let openai = store.read_usage(Some("openai"), None, None).await.unwrap();
    assert_eq!(openai.len(), 7);
    let completions: Vec<ProviderUsageRow> = openai
        .into_iter()
        .filter(|r| r.source == "openai.usage.completions")
        .collect();
    assert_eq!(usage_totals(&completions), completions_expected());
    let first_hour = store
        .read_usage(
            Some("openai"),
            Some(ts("2026-10-01T00:00:00Z")),
            Some(ts("2026-10-01T01:00:00Z")),
        )
        .await
        .unwrap();
    // Two completions groups, and the invoice's daily row starting at midnight.
    assert_eq!(first_hour.len(), 3);
    assert_eq!(
        first_hour
            .iter()
            .filter(|r| r.source == "csv.acme-invoice")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_revised_bucket_replaces_the_old_row() {
    let (_dir, store) = store();
    let name = "openai_usage_completions_p1.json";
    let s = import::import_bytes(&store, None, &bytes(name), name, None)
        .await
        .unwrap();
    assert_eq!(s.usage.inserted, 4);
    let text = String::from_utf8(bytes(name)).unwrap();
    // The provider revises the first group of the first bucket: 1200 → 1300 input.
    let revised = text.replacen("\"input_tokens\": 1200", "\"input_tokens\": 1300", 1);
    assert_ne!(revised, text);
    let s = import::import_bytes(&store, None, revised.as_bytes(), "revised.json", None)
        .await
        .unwrap();
    assert_eq!(
        s.usage,
        UpsertSummary {
            inserted: 0,
            replaced: 1,
            unchanged: 3
        }
    );
    let rows = store.read_usage(None, None, None).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(usage_totals(&rows).input, 1300 + 5000 + 700 + 500);
}

#[tokio::test]
async fn generic_tables_append_overwrite_read_and_version() {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let (_dir, store) = store();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let batch = |v: Vec<i64>| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
    };
    assert_eq!(store.version("reconciliation_runs").await.unwrap(), None);
    assert!(store.read("reconciliation_runs").await.unwrap().is_empty());
    let v1 = store
        .append(
            "reconciliation_runs",
            schema.clone(),
            vec![batch(vec![1, 2])],
        )
        .await
        .unwrap();
    let v2 = store
        .append("reconciliation_runs", schema.clone(), vec![batch(vec![3])])
        .await
        .unwrap();
    assert!(v2 > v1);
    let rows: usize = store
        .read("reconciliation_runs")
        .await
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 3);
    let v3 = store
        .overwrite("reconciliation_runs", schema.clone(), vec![batch(vec![9])])
        .await
        .unwrap();
    assert_eq!(
        store.version("reconciliation_runs").await.unwrap(),
        Some(v3)
    );
    let read = store.read("reconciliation_runs").await.unwrap();
    let values: Vec<i64> = read
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(values, vec![9]);
    let e = store.read("../escape").await.unwrap_err();
    assert_eq!(e.code(), "reconcile.config");
}

// ---- bad input ----------------------------------------------------------------------

fn parse_err(format: Format, text: &str, name: &str) -> String {
    let e = import::parse(format, text.as_bytes(), name, None).unwrap_err();
    assert_eq!(e.code(), "reconcile.parse", "{e}");
    e.to_string()
}

#[test]
fn bad_files_get_parse_errors_naming_the_place() {
    let e = parse_err(
        Format::OpenAiUsage,
        "{\"object\": \"page\",\n \"data\": [",
        "cut.json",
    );
    assert!(e.contains("cut.json: line 2"), "{e}");

    let text = String::from_utf8(bytes("openai_usage_completions_p2.json"))
        .unwrap()
        .replacen("\"input_tokens\": 1000", "\"input_tokens\": \"many\"", 1);
    let e = parse_err(Format::OpenAiUsage, &text, "p2.json");
    assert!(
        e.contains("p2.json: $.data[0].results[0].input_tokens"),
        "{e}"
    );

    let text = String::from_utf8(bytes("openai_costs.json"))
        .unwrap()
        .replacen("\"value\": 4.2", "\"value\": true", 1);
    let e = parse_err(Format::OpenAiCosts, &text, "costs.json");
    assert!(
        e.contains("costs.json: $.data[0].results[3].amount.value"),
        "{e}"
    );

    let text = String::from_utf8(bytes("anthropic_costs.json"))
        .unwrap()
        .replacen("\"123.45\"", "\"12x\"", 1);
    let e = parse_err(Format::AnthropicCosts, &text, "ac.json");
    assert!(e.contains("ac.json: $.data[0].results[1].amount"), "{e}");

    let text = String::from_utf8(bytes("anthropic_usage.json"))
        .unwrap()
        .replacen("\"2026-10-02T00:00:00Z\"", "\"tomorrow\"", 1);
    let e = parse_err(Format::AnthropicUsage, &text, "au.json");
    assert!(e.contains("au.json: $.data[0].ending_at"), "{e}");

    let text = String::from_utf8(bytes("gcp_billing.csv"))
        .unwrap()
        .replacen(",1.25,", ",1.2.5,", 1);
    let e = parse_err(Format::GcpBilling, &text, "bill.csv");
    assert!(e.contains("bill.csv: line 4, column cost"), "{e}");

    let e = parse_err(Format::GcpBilling, "a,b\n1,2\n", "other.csv");
    assert!(
        e.contains("other.csv: line 1") && e.contains("sku.description"),
        "{e}"
    );

    // A mapping naming a column the file does not have.
    let mapping = import::CsvMapping::from_yaml(
        "name: x\nprovider: openai\ncolumns: {start: Day, amount: Amount (USD)}\n",
        "m.yaml",
    )
    .unwrap();
    let e = import::parse(
        Format::Csv,
        &bytes("invoice_lines.csv"),
        "inv.csv",
        Some(&mapping),
    )
    .unwrap_err();
    assert_eq!(e.code(), "reconcile.parse");
    assert!(
        e.to_string().contains("inv.csv: line 1") && e.to_string().contains("`Day`"),
        "{e}"
    );

    // A generic CSV without a mapping is a configuration error that says what to pass.
    let e = import::parse(Format::Csv, &bytes("invoice_lines.csv"), "inv.csv", None).unwrap_err();
    assert_eq!(e.code(), "reconcile.config");
    assert!(e.to_string().contains("mapping"), "{e}");

    // Bad date in the invoice: line and column named.
    let text = String::from_utf8(bytes("invoice_lines.csv"))
        .unwrap()
        .replacen("02/10/2026", "2026-13-45", 1);
    let mapping = import::CsvMapping::from_file(&fixture("invoice_mapping.yaml")).unwrap();
    let e = import::parse(Format::Csv, text.as_bytes(), "inv.csv", Some(&mapping)).unwrap_err();
    assert!(
        e.to_string().contains("inv.csv: line 5, column Date"),
        "{e}"
    );
}

// ---- pulling ------------------------------------------------------------------------

const KEY: &str = "test-admin-key";

/// An in-test stand-in for OpenAI's completions usage endpoint, serving the buckets of
/// the three fixture pages by `start_time`, `end_time`, `limit` and `page`.
#[derive(Default)]
struct Server {
    buckets: Vec<Value>,
    requests: Mutex<Vec<String>>,
    /// Answer the first request with 429 and `retry-after: 1`.
    rate_limit_once: AtomicBool,
    /// Answer every request for the third page with 500.
    fail_page_3: AtomicBool,
    served: AtomicUsize,
}

impl Server {
    fn new() -> Arc<Self> {
        let mut buckets = Vec::new();
        for p in 1..=3 {
            let page: Value =
                serde_json::from_slice(&bytes(&format!("openai_usage_completions_p{p}.json")))
                    .unwrap();
            buckets.extend(page["data"].as_array().unwrap().iter().cloned());
        }
        Arc::new(Server {
            buckets,
            ..Server::default()
        })
    }
}

async fn completions(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = q.unwrap_or_default();
    s.requests.lock().unwrap().push(q.clone());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            "{\"error\":{\"message\":\"invalid admin key\"}}",
        )
            .into_response();
    }
    if s.rate_limit_once.swap(false, Ordering::SeqCst) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let start: i64 = param("start_time").unwrap().parse().unwrap();
    let end: i64 = param("end_time").unwrap().parse().unwrap();
    let limit: usize = param("limit").unwrap().parse().unwrap();
    let offset: usize = param("page").map_or(0, |p| p.trim_start_matches("idx_").parse().unwrap());
    assert_eq!(param("bucket_width").as_deref(), Some("1h"));
    let selected: Vec<&Value> = s
        .buckets
        .iter()
        .filter(|b| {
            let t = b["start_time"].as_i64().unwrap();
            t >= start && t < end
        })
        .collect();
    if offset > 0 && offset / limit == 2 && s.fail_page_3.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
    }
    let page: Vec<Value> = selected
        .iter()
        .skip(offset)
        .take(limit)
        .map(|v| (*v).clone())
        .collect();
    let next = offset + page.len();
    let has_more = next < selected.len();
    s.served.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "object": "page",
        "data": page,
        "has_more": has_more,
        "next_page": if has_more { Value::String(format!("idx_{next}")) } else { Value::Null },
    }))
    .into_response()
}

async fn serve(server: Arc<Server>) -> String {
    let app = axum::Router::new()
        .route("/v1/organization/usage/completions", get(completions))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn pull_config(base: &str) -> PullConfig {
    let mut c = PullConfig::new(PullProvider::OpenAi);
    c.base_url = Some(base.to_owned());
    c.admin_key = Some(KEY.to_owned());
    c.costs = false;
    c.openai_endpoints = vec!["completions".to_owned()];
    c.page_limit = Some(2);
    c.max_retries = 2;
    c.initial_backoff = Duration::from_millis(10);
    c
}

fn october() -> Period {
    Period::month("2026-10").unwrap()
}

#[tokio::test]
async fn pull_imports_every_page() {
    let server = Server::new();
    let base = serve(server.clone()).await;
    let (_dir, store) = store();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut config = pull_config(&base);
    let log = seen.clone();
    config.progress = Some(Arc::new(move |p| {
        log.lock().unwrap().push((p.pages, p.rows))
    }));
    let s = import::pull(&store, config, october()).await.unwrap();
    // Five buckets, two per page: three pages.
    assert_eq!(s.pages, 3);
    assert_eq!(s.usage.inserted, 6);
    assert_eq!(s.formats, vec![Format::OpenAiUsage]);
    assert_eq!(*seen.lock().unwrap(), vec![(1, 4), (2, 5), (3, 6)]);
    let rows = store.read_usage(None, None, None).await.unwrap();
    assert_eq!(usage_totals(&rows), completions_expected());
    let first = server.requests.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("start_time=1790812800&end_time=1793491200"),
        "{first}"
    );
}

#[tokio::test]
async fn pull_honours_retry_after_on_429() {
    let server = Server::new();
    server.rate_limit_once.store(true, Ordering::SeqCst);
    let base = serve(server.clone()).await;
    let (_dir, store) = store();
    let mut config = pull_config(&base);
    // If retry-after were ignored, the wait would be this backoff.
    config.initial_backoff = Duration::from_secs(5);
    let t0 = Instant::now();
    let s = import::pull(&store, config, october()).await.unwrap();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert_eq!(s.usage.inserted, 6);
    // The first page was asked for twice.
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0], reqs[1]);
}

#[tokio::test]
async fn an_interrupted_pull_resumes_without_duplicates_or_gaps() {
    let server = Server::new();
    server.fail_page_3.store(true, Ordering::SeqCst);
    let base = serve(server.clone()).await;
    let (_dir, store) = store();
    let e = import::pull(&store, pull_config(&base), october())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "reconcile.http");
    assert!(e.to_string().contains("500"), "{e}");
    // Pages 1 and 2 were committed: the buckets of 00:00, 01:00 and 02:00.
    let partial = store.read_usage(None, None, None).await.unwrap();
    assert_eq!(partial.len(), 5);
    // 1 try + 2 retries of page 3.
    assert_eq!(server.requests.lock().unwrap().len(), 2 + 3);

    server.fail_page_3.store(false, Ordering::SeqCst);
    server.requests.lock().unwrap().clear();
    let s = import::pull(&store, pull_config(&base), october())
        .await
        .unwrap();
    // Resumed at the last stored bucket (02:00), fetched again and left unchanged.
    let first = server.requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("start_time=1790820000&"), "{first}");
    assert_eq!(
        s.usage,
        UpsertSummary {
            inserted: 1,
            replaced: 0,
            unchanged: 1
        }
    );
    let rows = store.read_usage(None, None, None).await.unwrap();
    assert_eq!(usage_totals(&rows), completions_expected());
    let mut ids: Vec<String> = rows.iter().map(ProviderUsageRow::row_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
}

#[tokio::test]
async fn pull_with_a_refused_key_is_an_auth_error() {
    let server = Server::new();
    let base = serve(server).await;
    let (_dir, store) = store();
    let mut config = pull_config(&base);
    config.admin_key = Some("wrong".to_owned());
    let e = import::pull(&store, config, october()).await.unwrap_err();
    assert_eq!(e.code(), "reconcile.auth");
    assert!(e.to_string().contains("OPENAI_ADMIN_KEY"), "{e}");
}
