//! Benchmark: reconcile a month of gateway traffic (10 million usage events by default)
//! against hourly provider buckets. Target: ≤ 10 s on 2 cores.
//!
//! The data set is generated once and cached outside the source tree (under the target
//! directory's `tmp/`, or `TALLY_BENCH_DIR`):
//! - a real `usage` Delta table, written from `UsageEvent`s through the events crate's
//!   Arrow conversion (`usage_to_batch` + the `day` partition column) with the ledger's
//!   Parquet settings, one commit per UTC day of October 2026, partitioned by `day` like
//!   the ledger's, and a handful of `corrections` (so `usage_corrected` joins real rows);
//! - the provider side in the reconciler's own `provider_usage` / `provider_costs` Delta
//!   tables: hourly usage rows per model and key, daily cost lines per model and token
//!   kind, with discrepancies injected (aborted streams billed in full, bypass traffic,
//!   a price change from the 20th, a credit).
//!
//! Each timed iteration is the whole path `tally reconcile` runs once the reports are
//! imported: open the query engine, aggregate the gateway side in SQL, read the provider
//! rows, match and classify, render the Markdown and JSON reports.
//!
//! ```sh
//! cargo bench -p tally-reconcile --bench reconcile_month             # 3 timed runs
//! cargo bench -p tally-reconcile --bench reconcile_month -- --runs 5 --rows 1000000
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use deltalake::DeltaTableBuilder;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use tally_enforcer::pricing::PriceTable;
use tally_events::arrow::{
    PARTITION_COLUMN, Table, corrections_to_batch, usage_to_batch, with_day_column,
};
use tally_events::{
    CorrectionEvent, EventHeader, EventId, FinishState, Provider, Route, Timestamp, TokenCounts,
    UsageEvent, UsageSource,
};
use tally_queries::{QueryConfig, QueryEngine};
use tally_reconcile::config::{Account, ReconcileConfig};
use tally_reconcile::figures::{Figures, pico_to_micros};
use tally_reconcile::matcher::{Cause, Inputs, reconcile};
use tally_reconcile::model::{ProviderCostRow, ProviderUsageRow};
use tally_reconcile::report::{self, ReportFormat};
use tally_reconcile::{ReconStore, gateway};

type Res<T> = Result<T, Box<dyn Error>>;

/// Bump when the generated data changes, so a stale cache is rebuilt.
const DATA_VERSION: u32 = 1;
const DAYS: u32 = 31;
const MODELS: [&str; 4] = [
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
];
const GATEWAY_KEY_ID: &str = "key_5a1e0c9d2b7f";
const BYPASS_KEY_ID: &str = "key_0badc0ffee00";
const PROJECT: &str = "proj_default";
/// Extra output tokens the provider bills for every aborted stream.
const ABORT_EXTRA_OUTPUT: u64 = 50;
/// From this day on the provider charges gpt-4o-mini 25% more than tally's table says.
const PRICE_CHANGE_DAY: u32 = 20;
const CORRECTIONS: usize = 1000;

fn hour_start(day: u32, hour: u32) -> i64 {
    Utc.with_ymd_and_hms(2026, 10, day, hour, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp_micros())
}

/// splitmix64: a small deterministic generator, so every run builds the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Provider-side figures of one (hour, model) cell.
#[derive(Default, Clone, Copy)]
struct ProviderCell {
    requests: u64,
    input: u64,
    cached: u64,
    output: u64,
}

struct Args {
    rows: u64,
    runs: usize,
    dir: PathBuf,
}

fn args() -> Res<Args> {
    let mut a = Args {
        rows: 10_000_000,
        runs: 3,
        dir: std::env::var_os("TALLY_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tally-bench")),
    };
    // `cargo bench` passes --bench; without it (`cargo test --all-targets` runs bench
    // targets too) only check that the bench works, on a small data set.
    if !std::env::args().any(|a| a == "--bench") {
        a.rows = 20_000;
        a.runs = 1;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rows" => a.rows = it.next().ok_or("--rows N")?.parse()?,
            "--runs" => a.runs = it.next().ok_or("--runs N")?.parse()?,
            "--dir" => a.dir = PathBuf::from(it.next().ok_or("--dir PATH")?),
            // cargo bench passes --bench; criterion-style filters are ignored.
            _ => {}
        }
    }
    a.runs = a.runs.max(1);
    Ok(a)
}

fn recon_config() -> ReconcileConfig {
    ReconcileConfig {
        accounts: vec![Account {
            provider: "openai".into(),
            upstream: "openai".into(),
            api_key_ids: vec![GATEWAY_KEY_ID.into()],
            project_ids: vec![],
        }],
        ..ReconcileConfig::default()
    }
}

async fn create_partitioned(root: &Path, table: Table) -> Res<deltalake::DeltaTable> {
    let path = root.join(table.name());
    std::fs::create_dir_all(&path)?;
    let url = url::Url::from_directory_path(&path).map_err(|()| "table path")?;
    let kernel: StructType = table.table_schema().as_ref().try_into_kernel()?;
    let t = DeltaTableBuilder::from_url(url)?
        .build()?
        .create()
        .with_table_name(table.name())
        .with_columns(kernel.fields().cloned())
        .with_partition_columns([PARTITION_COLUMN])
        .with_save_mode(SaveMode::ErrorIfExists)
        .await?;
    Ok(t)
}

/// Generate the month: gateway `usage` (+ a few `corrections`) and the provider tables.
async fn generate(dir: &Path, rows: u64) -> Res<()> {
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let tables = dir.join("tables");
    std::fs::create_dir_all(&tables)?;
    let prices = PriceTable::built_in();
    let mut rng = Rng(0x7a11_7a11);
    let mut usage = create_partitioned(&tables, Table::Usage).await?;
    let mut cells: BTreeMap<(i64, usize), ProviderCell> = BTreeMap::new();
    let per_hour = rows / u64::from(DAYS * 24);
    let mut extra = rows % u64::from(DAYS * 24);
    let mut corrected: Vec<UsageEvent> = Vec::new();
    let mut written = 0u64;
    for day in 1..=DAYS {
        let mut events: Vec<UsageEvent> = Vec::with_capacity((per_hour as usize + 1) * 24);
        for hour in 0..24 {
            let start = hour_start(day, hour);
            let n = per_hour + u64::from(extra > 0);
            extra = extra.saturating_sub(1);
            for i in 0..n {
                let at = start + (i * 3_600_000_000 / n) as i64 + rng.below(1_000) as i64;
                let m = rng.below(MODELS.len() as u64) as usize;
                let model = MODELS[m];
                let roll = rng.below(10_000);
                let input = 50 + rng.below(2_000);
                let cached = if rng.below(4) == 0 { input / 2 } else { 0 };
                let output = 10 + rng.below(800);
                let (finish, status, tokens, source) = match roll {
                    // A stream the client aborted: the gateway counts what was delivered.
                    0..5 => (
                        FinishState::ClientAborted,
                        Some(200),
                        TokenCounts {
                            input_tokens: input,
                            cached_input_tokens: cached,
                            output_tokens: output,
                            ..TokenCounts::default()
                        },
                        UsageSource::Estimated,
                    ),
                    // An upstream failure: nothing billed.
                    5..15 => (
                        FinishState::UpstreamError,
                        Some(500),
                        TokenCounts::default(),
                        UsageSource::ProviderReported,
                    ),
                    _ => (
                        FinishState::Completed,
                        Some(200),
                        TokenCounts {
                            input_tokens: input,
                            cached_input_tokens: cached,
                            output_tokens: output,
                            ..TokenCounts::default()
                        },
                        UsageSource::ProviderReported,
                    ),
                };
                let figures = Figures {
                    input: tokens.input_tokens as i64,
                    cached: tokens.cached_input_tokens as i64,
                    output: tokens.output_tokens as i64,
                    ..Figures::default()
                };
                let cost = figures.cost_pico(&prices, model).map_or(0, pico_to_micros);
                let request_id = format!("req_{day:02}{hour:02}{i:08x}");
                let mut header = EventHeader::new("gw-1", &request_id, "acme");
                header.event_id = EventId::new();
                header.occurred_at = Timestamp::from_micros(at);
                header.api_key_id = Some(format!("k{}", i % 16));
                header.provider = Some(Provider::Openai);
                header.route = Some(Route::Chat);
                header.model_requested = Some(model.split("-20").next().unwrap_or(model).into());
                header.model_served = Some(model.into());
                header.upstream_request_id = Some(format!("chatcmpl-{i:x}"));
                let failed = finish == FinishState::UpstreamError;
                let e = UsageEvent {
                    header,
                    upstream: Some("openai".into()),
                    status_code: status,
                    streamed: roll < 5 || i % 3 == 0,
                    finish_state: finish,
                    tokens,
                    usage_source: source,
                    cost_micros: cost,
                    price_version: Some(prices.version().to_owned()),
                    latency_ms: 200 + rng.below(3_000),
                    ttft_ms: Some(100 + rng.below(500)),
                    retry_attempt: 0,
                    retry_of: None,
                };
                if !failed {
                    let c = cells.entry((start, m)).or_default();
                    c.requests += 1;
                    c.input += tokens.input_tokens;
                    c.cached += tokens.cached_input_tokens;
                    c.output +=
                        tokens.output_tokens + if roll < 5 { ABORT_EXTRA_OUTPUT } else { 0 };
                }
                if corrected.len() < CORRECTIONS && !failed && i % 997 == 13 {
                    corrected.push(e.clone());
                }
                events.push(e);
            }
        }
        written += events.len() as u64;
        let batch = with_day_column(Table::Usage, &usage_to_batch(&events)?)?;
        drop(events);
        usage = usage
            .write(vec![batch])
            .with_partition_columns([PARTITION_COLUMN])
            .with_writer_properties(tally_ledger::parquet_writer_properties())
            .await?;
        eprint!("\rgenerating: day {day}/{DAYS}, {written} usage rows   ");
    }
    eprintln!();

    // Corrections that restate an event's figures unchanged (the gateway and the
    // provider agree either way), so `usage_corrected` has real rows to join.
    let mut corrections_table = create_partitioned(&tables, Table::Corrections).await?;
    let corrections: Vec<CorrectionEvent> = corrected
        .iter()
        .map(|u| {
            let mut h = u.header.clone();
            h.event_id = EventId::new();
            CorrectionEvent {
                header: h,
                corrects_event_id: u.header.event_id,
                reason: "restated by the provider".into(),
                input_tokens: Some(u.tokens.input_tokens),
                cached_input_tokens: Some(u.tokens.cached_input_tokens),
                cache_write_tokens: None,
                output_tokens: Some(u.tokens.output_tokens),
                reasoning_tokens: None,
                cost_micros: Some(u.cost_micros),
                price_version: u.price_version.clone(),
                usage_source: Some(u.usage_source),
            }
        })
        .collect();
    let batch = with_day_column(Table::Corrections, &corrections_to_batch(&corrections)?)?;
    corrections_table = corrections_table
        .write(vec![batch])
        .with_partition_columns([PARTITION_COLUMN])
        .with_writer_properties(tally_ledger::parquet_writer_properties())
        .await?;
    let _ = corrections_table;

    // The provider side.
    let mut usage_rows = Vec::new();
    let mut day_tokens: BTreeMap<(u32, usize), ProviderCell> = BTreeMap::new();
    for (&(start, m), c) in &cells {
        usage_rows.push(provider_usage(start, Some(GATEWAY_KEY_ID), MODELS[m], *c));
        let day = ((start - hour_start(1, 0)) / 86_400_000_000) as u32 + 1;
        let d = day_tokens.entry((day, m)).or_default();
        d.input += c.input;
        d.cached += c.cached;
        d.output += c.output;
    }
    // Bypass traffic: a script's own key, every 97th hour.
    for h in (0..DAYS * 24).step_by(97) {
        let start = hour_start(1 + h / 24, h % 24);
        let c = ProviderCell {
            requests: 40,
            input: 40_000,
            cached: 0,
            output: 12_000,
        };
        usage_rows.push(provider_usage(start, Some(BYPASS_KEY_ID), MODELS[0], c));
        let day = 1 + h / 24;
        let d = day_tokens.entry((day, 0)).or_default();
        d.input += c.input;
        d.output += c.output;
    }
    let mut cost_rows = Vec::new();
    for (&(day, m), c) in &day_tokens {
        let model = MODELS[m];
        let start = hour_start(day, 0);
        let surcharge = |pico: i128| {
            if m == 0 && day >= PRICE_CHANGE_DAY {
                pico * 5 / 4
            } else {
                pico
            }
        };
        let price = |f: Figures| surcharge(f.cost_pico(&prices, model).unwrap_or(0));
        for (kind, label, f) in [
            (
                "input",
                "input",
                Figures {
                    input: (c.input - c.cached) as i64,
                    ..Figures::default()
                },
            ),
            (
                "cached_input",
                "cached input",
                Figures {
                    input: c.cached as i64,
                    cached: c.cached as i64,
                    ..Figures::default()
                },
            ),
            (
                "output",
                "output",
                Figures {
                    output: c.output as i64,
                    ..Figures::default()
                },
            ),
        ] {
            cost_rows.push(ProviderCostRow {
                provider: "openai".into(),
                source: "openai.costs".into(),
                bucket_start: Timestamp::from_micros(start),
                bucket_end: Timestamp::from_micros(start + 86_400_000_000),
                project_id: Some(PROJECT.into()),
                line_item: Some(format!("{model}, {label}")),
                model: Some(model.into()),
                token_type: Some(kind.into()),
                cost_type: None,
                amount_micros: pico_to_micros(price(f)),
                currency: "usd".into(),
            });
        }
    }
    let credit_day = hour_start(15, 0);
    cost_rows.push(ProviderCostRow {
        provider: "openai".into(),
        source: "openai.costs".into(),
        bucket_start: Timestamp::from_micros(credit_day),
        bucket_end: Timestamp::from_micros(credit_day + 86_400_000_000),
        project_id: Some(PROJECT.into()),
        line_item: Some("Outage credit".into()),
        model: None,
        token_type: None,
        cost_type: Some("credit".into()),
        amount_micros: -25_000_000,
        currency: "usd".into(),
    });
    let store = ReconStore::open(&tables.to_string_lossy(), Vec::<(String, String)>::new())?;
    store.upsert_usage(&usage_rows).await?;
    store.upsert_costs(&cost_rows).await?;
    std::fs::write(dir.join("READY"), format!("{DATA_VERSION} {rows}\n"))?;
    eprintln!(
        "generated {written} usage rows, {} corrections, {} provider usage rows, {} cost rows in {:.1} s",
        corrections.len(),
        usage_rows.len(),
        cost_rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn provider_usage(start: i64, key: Option<&str>, model: &str, c: ProviderCell) -> ProviderUsageRow {
    ProviderUsageRow {
        provider: "openai".into(),
        source: "openai.usage.completions".into(),
        bucket_start: Timestamp::from_micros(start),
        bucket_end: Timestamp::from_micros(start + 3_600_000_000),
        project_id: Some(PROJECT.into()),
        api_key_id: key.map(str::to_owned),
        model: Some(model.into()),
        batch: Some(false),
        service_tier: Some("default".into()),
        input_tokens: c.input,
        cached_input_tokens: c.cached,
        cache_write_tokens: 0,
        output_tokens: c.output,
        audio_input_tokens: 0,
        audio_output_tokens: 0,
        requests: Some(c.requests),
    }
}

struct Timings {
    total: Duration,
    engine: Duration,
    gateway_sql: Duration,
    provider_read: Duration,
    matcher: Duration,
    render: Duration,
}

/// One reconciliation of the month, as `tally reconcile` runs it after the import.
async fn reconcile_once(tables: &str) -> Res<(Timings, tally_reconcile::matcher::Reconciliation)> {
    let t0 = Instant::now();
    let engine = QueryEngine::new(QueryConfig::default(), tables, None).await?;
    let t1 = Instant::now();
    let (start, end) = (
        Timestamp::from_micros(hour_start(1, 0)),
        Timestamp::from_micros(hour_start(1, 0) + i64::from(DAYS) * 86_400_000_000),
    );
    let config = recon_config();
    let (gw, minutes) =
        gateway::gateway_side(&engine, "openai", start, end, config.bucket_seconds).await?;
    let t2 = Instant::now();
    let store = ReconStore::open(tables, Vec::<(String, String)>::new())?;
    let provider_usage = store
        .read_usage(Some("openai"), Some(start), Some(end))
        .await?;
    let provider_costs = store
        .read_costs(Some("openai"), Some(start), Some(end))
        .await?;
    let t3 = Instant::now();
    let inputs = Inputs {
        provider: "openai".into(),
        start: start.as_micros(),
        end: end.as_micros(),
        gateway: gw,
        minutes,
        provider_usage,
        provider_costs,
    };
    let r = reconcile(&inputs, &config, &PriceTable::built_in());
    let t4 = Instant::now();
    let md = report::render(&r, ReportFormat::Markdown);
    let json = report::render(&r, ReportFormat::Json);
    std::hint::black_box((md.len(), json.len()));
    let t5 = Instant::now();
    Ok((
        Timings {
            total: t5 - t0,
            engine: t1 - t0,
            gateway_sql: t2 - t1,
            provider_read: t3 - t2,
            matcher: t4 - t3,
            render: t5 - t4,
        },
        r,
    ))
}

fn main() -> Res<()> {
    let args = args()?;
    let dir = args.dir.join(format!("reconcile-month-{}", args.rows));
    let ready = std::fs::read_to_string(dir.join("READY")).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if ready.trim() != format!("{DATA_VERSION} {}", args.rows) {
        eprintln!("generating the data set in {} (once)", dir.display());
        rt.block_on(generate(&dir, args.rows))?;
    }
    let tables = dir.join("tables").to_string_lossy().into_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "reconcile a month: {} gateway usage rows vs hourly provider buckets ({cores} cores, {})",
        args.rows,
        dir.display()
    );
    let mut totals = Vec::new();
    for i in 0..args.runs {
        let (t, r) = rt.block_on(reconcile_once(&tables))?;
        if i == 0 {
            let count = |c: Cause| r.of(c).count();
            println!(
                "  {} cells, {} findings: {} aborted_stream_billed, {} bypass_traffic, {} stale_price_table, {} provider_credit, {} unexplained ({} over tolerance); gateway requests {}",
                r.cells,
                r.findings.len(),
                count(Cause::AbortedStreamBilled),
                count(Cause::BypassTraffic),
                count(Cause::StalePriceTable),
                count(Cause::ProviderCredit),
                count(Cause::Unexplained),
                r.unexplained_over_tolerance,
                r.gateway.figures.requests,
            );
            if r.unexplained_over_tolerance > 0 {
                return Err(
                    "the generated month should reconcile without unexplained differences".into(),
                );
            }
        }
        println!(
            "  run {}: {:.2} s (engine {:.2}, gateway SQL {:.2}, provider rows {:.2}, matcher {:.2}, reports {:.2})",
            i + 1,
            t.total.as_secs_f64(),
            t.engine.as_secs_f64(),
            t.gateway_sql.as_secs_f64(),
            t.provider_read.as_secs_f64(),
            t.matcher.as_secs_f64(),
            t.render.as_secs_f64()
        );
        totals.push(t.total);
    }
    totals.sort();
    let median = totals[totals.len() / 2];
    println!(
        "median of {} run(s): {:.2} s (target ≤ 10 s)",
        totals.len(),
        median.as_secs_f64()
    );
    Ok(())
}
