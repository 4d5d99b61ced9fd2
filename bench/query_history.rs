//! Benchmark: the canned report queries over 100 million usage events, in tally (the
//! query engine `tally sql` and the reports use) and in DuckDB over the same Parquet
//! files, in the same run. Target: each tally query within 1.5× DuckDB's time and under
//! 2 s, on 2 cores.
//!
//! The data set is generated once and cached outside the source tree (under the target
//! directory's `tmp/`, or `TALLY_BENCH_DIR`): Delta tables `usage` (100M rows over 90
//! UTC days, one commit per day, partitioned by `day` like the ledger's, written through
//! the events crate's Arrow conversion with the ledger's Parquet settings), `decisions`
//! (one deny per denied request) and `corrections`. The traffic is skewed like a real
//! platform's: 200 tenants and 2,000 keys with Zipf-distributed volume, ten models of
//! three providers with uneven shares, a daily cycle, traffic growing over the period,
//! streamed and not, retries, aborted streams, upstream errors, timeouts and denials.
//!
//! The statements are the reports' own ([`tally_queries::reports::canned`]): `tally
//! usage --by tenant,model --since 7d` (six statements), `tally top` keys by spend, the
//! HTML report's daily spend per model over 30 days, and `tally why` for one request (a
//! lookup over the whole history). DuckDB gets the same SQL text and parameters over
//! views it builds with the same definitions (`bench/query_history_duckdb.py`), reading
//! the tables' Parquet files with hive partitioning. Each engine runs every statement
//! once untimed, then `--runs` times (median reported); both use 2 threads. Results are
//! compared (row count and the sum of every integer column) so the two engines are shown
//! to compute the same answers.
//!
//! ```sh
//! cargo bench --workspace --bench query_history               # 100M rows, 5 runs
//! cargo bench --workspace --bench query_history -- --rows 10000000 --runs 3
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) it checks itself on 200,000 rows
//! in a temporary directory.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTableBuilder;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use tally_events::arrow::{
    PARTITION_COLUMN, Table, corrections_to_batch, decisions_to_batch, usage_to_batch,
    with_day_column,
};
use tally_events::{
    CorrectionEvent, DecisionEvent, EventHeader, EventId, FinishState, Outcome, Provider, Route,
    RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource,
};
use tally_queries::reports::canned::{CannedQuery, canned_queries};
use tally_queries::views::views;
use tally_queries::{Principal, QueryConfig, QueryEngine};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Bump when the generated data changes, so a stale cache is rebuilt.
const DATA_VERSION: u32 = 2;
const DAYS: i64 = 90;
/// 2026-08-03T00:00:00Z: the first day; the last is 2026-10-31.
const FIRST_DAY_MICROS: i64 = 1_785_715_200_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
const TENANTS: usize = 200;
const KEYS_PER_TENANT: usize = 10;
const CORRECTIONS: usize = 10_000;

/// Model, provider, route, share of requests (‰), price per 1M input / output tokens
/// (micro-USD).
const MODELS: [(&str, Provider, Route, u32, i64, i64); 10] = [
    (
        "gpt-4o-mini-2024-07-18",
        Provider::Openai,
        Route::Chat,
        280,
        150_000,
        600_000,
    ),
    (
        "gpt-4.1-mini-2025-04-14",
        Provider::Openai,
        Route::Responses,
        140,
        400_000,
        1_600_000,
    ),
    (
        "gpt-4o-2024-08-06",
        Provider::Openai,
        Route::Chat,
        100,
        2_500_000,
        10_000_000,
    ),
    (
        "gpt-4.1-2025-04-14",
        Provider::Openai,
        Route::Responses,
        50,
        2_000_000,
        8_000_000,
    ),
    (
        "o3-mini-2025-01-31",
        Provider::Openai,
        Route::Chat,
        30,
        1_100_000,
        4_400_000,
    ),
    (
        "text-embedding-3-small",
        Provider::Openai,
        Route::Embeddings,
        40,
        20_000,
        0,
    ),
    (
        "claude-sonnet-4-20250514",
        Provider::Anthropic,
        Route::Messages,
        120,
        3_000_000,
        15_000_000,
    ),
    (
        "claude-3-5-haiku-20241022",
        Provider::Anthropic,
        Route::Messages,
        80,
        800_000,
        4_000_000,
    ),
    (
        "gemini-2.5-flash",
        Provider::Gemini,
        Route::GenerateContent,
        120,
        300_000,
        2_500_000,
    ),
    (
        "gemini-2.5-pro",
        Provider::Gemini,
        Route::GenerateContent,
        40,
        1_250_000,
        10_000_000,
    ),
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An index drawn from cumulative weights `cdf` (last element = total).
    fn pick(&mut self, cdf: &[u64]) -> usize {
        let total = cdf.last().copied().unwrap_or(1);
        let x = self.below(total);
        cdf.partition_point(|&c| c <= x)
    }
}

fn cdf(weights: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut acc = 0;
    weights
        .into_iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

/// Zipf weights (exponent 1.1) for `n` ranks, scaled to integers.
fn zipf(n: usize) -> Vec<u64> {
    cdf((1..=n).map(|r| (1e9 / (r as f64).powf(1.1)) as u64))
}

struct Args {
    rows: u64,
    runs: usize,
    dir: PathBuf,
    full: bool,
}

fn args() -> Res<Args> {
    let full = std::env::args().any(|a| a == "--bench");
    let mut rows = if full { 100_000_000 } else { 200_000 };
    let mut runs = if full { 5 } else { 1 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => rows = it.next().ok_or("--rows N")?.parse()?,
            "--runs" => runs = it.next().ok_or("--runs N")?.parse()?,
            _ => {}
        }
    }
    let dir = match std::env::var_os("TALLY_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("tmp")
        }
    };
    Ok(Args {
        rows,
        runs: runs.max(1),
        dir,
        full,
    })
}

async fn create_partitioned(root: &Path, table: Table) -> Res<deltalake::DeltaTable> {
    let path = root.join(table.name());
    std::fs::create_dir_all(&path)?;
    let url = url::Url::from_directory_path(&path).map_err(|()| "table path")?;
    let kernel: StructType = table.table_schema().as_ref().try_into_kernel()?;
    Ok(DeltaTableBuilder::from_url(url)?
        .build()?
        .create()
        .with_table_name(table.name())
        .with_columns(kernel.fields().cloned())
        .with_partition_columns([PARTITION_COLUMN])
        .with_save_mode(SaveMode::ErrorIfExists)
        .await?)
}

async fn append(
    table: deltalake::DeltaTable,
    kind: Table,
    batch: &RecordBatch,
) -> Res<deltalake::DeltaTable> {
    let batch = with_day_column(kind, batch)?;
    let table = table
        .write(vec![batch])
        .with_partition_columns([PARTITION_COLUMN])
        .with_writer_properties(tally_ledger::parquet_writer_properties())
        .await?;
    // A Delta checkpoint every `checkpoint_interval` commits, as the ledger writes them:
    // without one, every query replays the whole JSON log (and parses each file's stats)
    // to plan its scans, which a table the ledger keeps never asks of it.
    let interval = tally_ledger::LedgerConfig::default().checkpoint_interval;
    if interval > 0
        && let Some(v) = table.version()
        && v > 0
        && v.is_multiple_of(interval)
    {
        deltalake::checkpoints::create_checkpoint(&table, None).await?;
    }
    Ok(table)
}

/// One generated day: its usage rows, the denials among them and a few events to correct.
struct Day {
    usage: RecordBatch,
    decisions: Vec<DecisionEvent>,
    to_correct: Vec<UsageEvent>,
}

/// Rows of each day: traffic grows by half over the period.
fn rows_per_day(total: u64) -> Vec<u64> {
    let weights: Vec<f64> = (0..DAYS)
        .map(|d| 1.0 + 0.5 * d as f64 / DAYS as f64)
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| (total as f64 * w / sum) as u64)
        .collect();
    let short = total - out.iter().sum::<u64>();
    if let Some(last) = out.last_mut() {
        *last += short;
    }
    out
}

fn generate_day(day: i64, rows: u64) -> Res<Day> {
    let mut rng = Rng(0x7a11_0000 + day as u64);
    let tenants = zipf(TENANTS);
    let keys = zipf(KEYS_PER_TENANT);
    let models = cdf(MODELS.iter().map(|m| u64::from(m.3)));
    // A daily cycle: the busiest hour has about four times the traffic of the quietest.
    let hours = cdf((0..24).map(|h| {
        let phase = (f64::from(h) - 15.0) / 24.0 * std::f64::consts::TAU;
        (1000.0 * (2.5 + 1.5 * phase.cos())) as u64
    }));
    let start = FIRST_DAY_MICROS + day * DAY_MICROS;
    let mut events = Vec::with_capacity(rows as usize);
    let mut decisions = Vec::new();
    let mut to_correct = Vec::new();
    for i in 0..rows {
        let hour = rng.pick(&hours) as i64;
        let at = start + hour * 3_600_000_000 + rng.below(3_600_000_000) as i64;
        let t = rng.pick(&tenants);
        let tenant = format!("tenant-{t:03}");
        let key = format!("{tenant}-key-{}", rng.pick(&keys));
        let (model, provider, route, _, price_in, price_out) = MODELS[rng.pick(&models)];
        let embedding = route == Route::Embeddings;
        let roll = rng.below(10_000);
        let input = 20 + rng.below(if embedding { 400 } else { 3_000 });
        let cached = if !embedding && rng.below(3) == 0 {
            input * rng.below(80) / 100
        } else {
            0
        };
        let output = if embedding { 0 } else { 5 + rng.below(900) };
        let reasoning = if model.starts_with("o3") {
            output / 2
        } else {
            0
        };
        let streamed = !embedding && rng.below(2) == 0;
        let (finish, status, tokens, source) = match roll {
            0..150 => (
                FinishState::Denied,
                Some(429),
                TokenCounts::default(),
                UsageSource::Estimated,
            ),
            150..250 => (
                FinishState::ClientAborted,
                Some(200),
                TokenCounts {
                    input_tokens: input,
                    cached_input_tokens: cached,
                    output_tokens: output / 3,
                    ..TokenCounts::default()
                },
                UsageSource::Estimated,
            ),
            250..330 => (
                FinishState::UpstreamError,
                Some(500),
                TokenCounts::default(),
                UsageSource::ProviderReported,
            ),
            330..350 => (
                FinishState::Timeout,
                None,
                TokenCounts::default(),
                UsageSource::Estimated,
            ),
            _ => (
                FinishState::Completed,
                Some(200),
                TokenCounts {
                    input_tokens: input,
                    cached_input_tokens: cached,
                    output_tokens: output,
                    reasoning_tokens: reasoning,
                    ..TokenCounts::default()
                },
                UsageSource::ProviderReported,
            ),
        };
        let retry_attempt = u32::from(roll % 50 == 7);
        let base_id = format!("req_{day:02}_{i:08x}");
        let request_id = if retry_attempt > 0 {
            format!("{base_id}-r1")
        } else {
            base_id.clone()
        };
        let cost = (tokens.input_tokens - tokens.cached_input_tokens / 2) as i64 * price_in
            / 1_000_000
            + tokens.output_tokens as i64 * price_out / 1_000_000;
        let mut header = EventHeader::new(
            if i % 2 == 0 { "gw-a" } else { "gw-b" },
            &request_id,
            &tenant,
        );
        header.event_id = EventId::new();
        header.occurred_at = Timestamp::from_micros(at);
        header.api_key_id = Some(key);
        header.provider = Some(provider);
        header.route = Some(route);
        header.model_requested = Some(model.split("-20").next().unwrap_or(model).to_owned());
        header.model_served = (finish != FinishState::Denied).then(|| model.to_owned());
        if finish == FinishState::Denied {
            let (rule, kind) = match roll % 3 {
                0 => ("tenant-daily-budget", RuleKind::UsageCap),
                1 => ("key-rpm", RuleKind::RateLimit),
                _ => ("no-pro-models-for-trial", RuleKind::Access),
            };
            let mut h = header.clone();
            h.event_id = EventId::new();
            decisions.push(DecisionEvent::new(
                h,
                Outcome::Deny,
                rule,
                kind,
                format!("{rule} refused the request"),
            ));
        }
        let e = UsageEvent {
            header,
            upstream: (finish != FinishState::Denied).then(|| provider.as_str().to_owned()),
            status_code: status,
            streamed,
            finish_state: finish,
            tokens,
            usage_source: source,
            cost_micros: cost,
            price_version: Some("2026-11-01".to_owned()),
            latency_ms: 150 + rng.below(6_000),
            ttft_ms: streamed.then(|| 80 + rng.below(900)),
            retry_attempt,
            retry_of: (retry_attempt > 0).then(|| base_id.clone()),
        };
        if to_correct.len() < CORRECTIONS / DAYS as usize
            && finish == FinishState::Completed
            && i % 4_999 == 11
        {
            to_correct.push(e.clone());
        }
        events.push(e);
    }
    Ok(Day {
        usage: usage_to_batch(&events)?,
        decisions,
        to_correct,
    })
}

/// Generate the tables: two threads generate days while this task writes them.
async fn generate(dir: &Path, rows: u64) -> Res<()> {
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let tables = dir.join("tables");
    std::fs::create_dir_all(&tables)?;
    let mut usage = create_partitioned(&tables, Table::Usage).await?;
    let mut decisions = create_partitioned(&tables, Table::Decisions).await?;
    let per_day = rows_per_day(rows);
    let (tx, rx) = mpsc::sync_channel::<Res<Day>>(1);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let tx = tx.clone();
            let per_day = per_day.clone();
            std::thread::spawn(move || {
                for day in (t..DAYS).step_by(2) {
                    if tx.send(generate_day(day, per_day[day as usize])).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut to_correct = Vec::new();
    let (mut written, mut denied) = (0u64, 0u64);
    let mut done = 0;
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    loop {
        let rx = rx.clone();
        let next =
            tokio::task::spawn_blocking(move || rx.lock().map(|r| r.recv().ok()).ok().flatten())
                .await?;
        let Some(day) = next else { break };
        let day = day?;
        written += day.usage.num_rows() as u64;
        denied += day.decisions.len() as u64;
        usage = append(usage, Table::Usage, &day.usage).await?;
        if !day.decisions.is_empty() {
            decisions = append(
                decisions,
                Table::Decisions,
                &decisions_to_batch(&day.decisions)?,
            )
            .await?;
        }
        to_correct.extend(day.to_correct);
        done += 1;
        eprint!(
            "\rgenerating: day {done}/{DAYS}, {written} usage rows, {denied} decisions, {:.0} s   ",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    for t in threads {
        t.join().map_err(|_| "a generator thread panicked")?;
    }
    if written != rows {
        return Err(format!("generated {written} rows, expected {rows}").into());
    }
    // Corrections that restate the provider's figures a day later (a few tokens more).
    let corrections: Vec<CorrectionEvent> = to_correct
        .iter()
        .map(|u| {
            let mut h = u.header.clone();
            h.event_id = EventId::new();
            h.occurred_at = Timestamp::from_micros(u.header.occurred_at.as_micros() + DAY_MICROS);
            CorrectionEvent {
                header: h,
                corrects_event_id: u.header.event_id,
                reason: "restated by the provider".into(),
                input_tokens: Some(u.tokens.input_tokens + 3),
                cached_input_tokens: None,
                cache_write_tokens: None,
                output_tokens: None,
                reasoning_tokens: None,
                usage_source: None,
                cost_micros: Some(u.cost_micros + 1),
                price_version: None,
            }
        })
        .collect();
    let c = create_partitioned(&tables, Table::Corrections).await?;
    if !corrections.is_empty() {
        append(c, Table::Corrections, &corrections_to_batch(&corrections)?).await?;
    }
    eprintln!(
        "generated {written} usage rows, {denied} decisions, {} corrections in {:.0} s ({} MiB)",
        corrections.len(),
        started.elapsed().as_secs_f64(),
        dir_bytes(&tables) >> 20
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// Row count and the sum of every integer column: what both engines must agree on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    rows: u64,
    int_sum: i128,
}

fn digest(batches: &[RecordBatch]) -> Digest {
    let mut d = Digest::default();
    for b in batches {
        d.rows += b.num_rows() as u64;
        for col in b.columns() {
            match col.data_type() {
                DataType::Int64 => {
                    let a = col.as_primitive::<Int64Type>();
                    d.int_sum += a.iter().flatten().map(i128::from).sum::<i128>();
                }
                DataType::UInt64 => {
                    let a = col.as_primitive::<UInt64Type>();
                    d.int_sum += a.iter().flatten().map(i128::from).sum::<i128>();
                }
                DataType::Int32 | DataType::UInt32 | DataType::Int16 | DataType::UInt16 => {
                    let a =
                        arrow::compute::cast(col, &DataType::Int64).unwrap_or_else(|_| col.clone());
                    if let Some(a) = a.as_primitive_opt::<Int64Type>() {
                        d.int_sum += a.iter().flatten().map(i128::from).sum::<i128>();
                    }
                }
                _ => {}
            }
        }
    }
    d
}

struct Timed {
    first: Duration,
    median: Duration,
    digest: Digest,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run_tally(
    tables: &str,
    queries: &[CannedQuery],
    runs: usize,
) -> Res<(Duration, Vec<Timed>)> {
    let t = Instant::now();
    let engine = QueryEngine::new(QueryConfig::default(), tables, None).await?;
    let open = t.elapsed();
    let mut out = Vec::new();
    for q in queries {
        let t = Instant::now();
        let batches = engine
            .collect_with_params(&q.sql, q.params.clone(), &Principal::Admin)
            .await?;
        let first = t.elapsed();
        let digest = digest(&batches);
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let b = engine
                .collect_with_params(&q.sql, q.params.clone(), &Principal::Admin)
                .await?;
            times.push(t.elapsed());
            std::hint::black_box(b);
        }
        out.push(Timed {
            first,
            median: median(times),
            digest,
        });
    }
    Ok((open, out))
}

fn param_json(p: &ScalarValue) -> Res<serde_json::Value> {
    Ok(match p {
        ScalarValue::TimestampMicrosecond(Some(v), _) => {
            serde_json::json!({"type": "timestamp_us", "value": v})
        }
        ScalarValue::Date32(Some(d)) => serde_json::json!({"type": "date_days", "value": d}),
        ScalarValue::Utf8(Some(s)) => serde_json::json!({"type": "str", "value": s}),
        other => return Err(format!("unsupported parameter {other:?}").into()),
    })
}

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("TALLY_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tally/venv")))?;
    let p = venv.join("bin/python");
    p.is_file().then_some(p)
}

/// DuckDB's timings and digests, by the same statements (None: no DuckDB installed).
fn run_duckdb(
    tables: &Path,
    queries: &[CannedQuery],
    runs: usize,
    work: &Path,
) -> Res<Option<Vec<Timed>>> {
    let Some(py) = python() else {
        eprintln!("DuckDB skipped: no Python venv with duckdb (bash scripts/setup-test-deps.sh)");
        return Ok(None);
    };
    let spec = serde_json::json!({
        "tables": tables,
        "views": views().iter().map(|v| serde_json::json!({"name": v.name, "sql": v.sql})).collect::<Vec<_>>(),
        "queries": queries.iter().map(|q| Ok(serde_json::json!({
            "name": q.name,
            "sql": q.sql,
            "params": q.params.iter().map(param_json).collect::<Res<Vec<_>>>()?,
        }))).collect::<Res<Vec<_>>>()?,
        "runs": runs,
        "threads": 2,
    });
    let spec_path = work.join("duckdb-spec.json");
    let out_path = work.join("duckdb-out.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/query_history_duckdb.py");
    let o = Command::new(py)
        .arg(script)
        .arg(&spec_path)
        .arg(&out_path)
        .output()?;
    if !o.status.success() {
        return Err(format!(
            "DuckDB run failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .into());
    }
    let results: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&out_path)?)?;
    let secs = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0));
    let mut out = Vec::new();
    for r in results {
        let times: Vec<Duration> = r["times"]
            .as_array()
            .map(|a| a.iter().map(secs).collect())
            .unwrap_or_default();
        out.push(Timed {
            first: secs(&r["first"]),
            median: median(if times.is_empty() {
                vec![Duration::ZERO]
            } else {
                times
            }),
            digest: Digest {
                rows: r["rows"].as_u64().unwrap_or(0),
                int_sum: r["int_sum"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(i128::MIN),
            },
        });
    }
    Ok(Some(out))
}

fn main() -> Res<()> {
    let args = args()?;
    let scratch;
    let dir = if args.full {
        args.dir.join(format!("query-history-{}", args.rows))
    } else {
        scratch = tempfile::tempdir()?;
        scratch.path().join("data")
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ready = std::fs::read_to_string(dir.join("READY")).unwrap_or_default();
    let stamp = format!("{DATA_VERSION} {}", args.rows);
    if ready.trim() != stamp {
        eprintln!("generating the data set in {} (once)", dir.display());
        rt.block_on(generate(&dir, args.rows))?;
        std::fs::write(dir.join("READY"), &stamp)?;
    }
    let tables = dir.join("tables");
    let last_day = FIRST_DAY_MICROS + (DAYS - 1) * DAY_MICROS;
    let since_7d = Timestamp::from_micros(last_day + DAY_MICROS - 7 * DAY_MICROS);
    let since_30d = Timestamp::from_micros(last_day + DAY_MICROS - 30 * DAY_MICROS);
    // A request from the middle of the period (`tally why` scans the whole history).
    let request = format!("req_45_{:08x}", rows_per_day(args.rows)[45] / 2);
    let mut queries = canned_queries(since_7d, &request);
    for q in &mut queries {
        if q.name == "html.daily_spend" || q.name == "top.keys_by_spend" {
            q.params = canned_queries(since_30d, &request)
                .into_iter()
                .find(|c| c.name == q.name)
                .map(|c| c.params)
                .unwrap_or_default();
        }
    }
    // What every statement pays before reading data (snapshot of the tables, planning):
    // shown, not held to the targets.
    queries.push(CannedQuery {
        name: "floor",
        report: "SELECT 1 (per-query floor)",
        sql: "SELECT 1 AS one".to_owned(),
        params: Vec::new(),
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "canned report queries over {} usage rows ({} MiB of tables, {cores} cores, {}), {} timed run(s) each",
        args.rows,
        dir_bytes(&tables) >> 20,
        dir.display(),
        args.runs
    );
    let (open, tally) = rt.block_on(run_tally(&tables.to_string_lossy(), &queries, args.runs))?;
    let duck = run_duckdb(&tables, &queries, args.runs, &dir)?;

    println!(
        "\nopening the query engine (Delta logs of 3 tables): {:.3} s\n",
        open.as_secs_f64()
    );
    println!(
        "| query | report | tally first / median | DuckDB first / median | tally ÷ DuckDB | rows |"
    );
    println!("|---|---|---|---|---|---|");
    let mut mismatches = Vec::new();
    let (mut worst_ratio, mut slowest) = (0.0f64, Duration::ZERO);
    for (i, q) in queries.iter().enumerate() {
        let t = &tally[i];
        let (d_cell, ratio) = match duck.as_ref().map(|d| &d[i]) {
            Some(d) => {
                if d.digest != t.digest {
                    mismatches.push(format!(
                        "{}: tally {:?}, DuckDB {:?}",
                        q.name, t.digest, d.digest
                    ));
                }
                let r = t.median.as_secs_f64() / d.median.as_secs_f64().max(1e-6);
                if q.name != "floor" {
                    worst_ratio = worst_ratio.max(r);
                }
                (
                    format!(
                        "{:.3} / {:.3} s",
                        d.first.as_secs_f64(),
                        d.median.as_secs_f64()
                    ),
                    format!("{r:.2}×"),
                )
            }
            None => ("—".to_owned(), "—".to_owned()),
        };
        slowest = slowest.max(t.median);
        println!(
            "| `{}` | `{}` | {:.3} / {:.3} s | {d_cell} | {ratio} | {} |",
            q.name,
            q.report,
            t.first.as_secs_f64(),
            t.median.as_secs_f64(),
            t.digest.rows
        );
    }
    println!(
        "\nslowest tally median {:.3} s (target < 2 s); worst tally ÷ DuckDB {worst_ratio:.2}× (target ≤ 1.5×)",
        slowest.as_secs_f64()
    );
    if !mismatches.is_empty() {
        return Err(format!("the engines disagree:\n  {}", mismatches.join("\n  ")).into());
    }
    let found = tally
        .iter()
        .zip(&queries)
        .find(|(_, q)| q.name == "why.attempts")
        .map_or(0, |(t, _)| t.digest.rows);
    if found == 0 {
        return Err(
            format!("`tally why {request}` found no attempt: the generator changed?").into(),
        );
    }
    if duck.is_some() {
        println!("every result agrees between tally and DuckDB (row counts and integer sums)");
    }
    Ok(())
}
