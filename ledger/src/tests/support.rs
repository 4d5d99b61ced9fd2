//! Test fixtures: events of every type, a segment log in a temp dir, a ledger on a temp
//! tables root, reading tables back with DataFusion, and an object store that fails Delta
//! commits on demand (to simulate crashes). Must not be used outside tests.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use tally_events::log::{EventLog, LogConfig, SegmentLog};
use tally_events::{
    CorrectionEvent, CounterUnit, DecisionEvent, Event, EventHeader, EventId, FinishState, Outcome,
    Provider, Route, RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource,
};

use crate::config::LedgerConfig;
use crate::error::LedgerError;
use crate::materializer::Ledger;
use crate::storage::TablesRoot;

pub(crate) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn header(tenant: &str, at: Timestamp) -> EventHeader {
    let mut h = EventHeader::new("gw-1", &format!("req-{}", EventId::new()), tenant);
    h.occurred_at = at;
    h
}

/// A usage event with most optional fields set.
pub(crate) fn usage_at(tenant: &str, micros: i64) -> Event {
    let mut h = header(tenant, Timestamp::from_micros(micros));
    h.api_key_id = Some("key-1".into());
    h.labels = BTreeMap::from([("team".into(), "ml".into()), ("app".into(), "bot".into())]);
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some("gpt-4o".into());
    h.model_served = Some("gpt-4o-2024-08-06".into());
    h.upstream_request_id = Some(format!("up-{}", EventId::new()));
    Event::Usage(UsageEvent {
        header: h,
        upstream: Some("openai-main".into()),
        status_code: Some(200),
        streamed: true,
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: 1200,
            cached_input_tokens: 200,
            cache_write_tokens: 10,
            output_tokens: 300,
            reasoning_tokens: 40,
            audio_input_tokens: 0,
            audio_output_tokens: 5,
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: 4_250,
        price_version: Some("2026-10".into()),
        latency_ms: 812,
        ttft_ms: Some(95),
        retry_attempt: 1,
        retry_of: Some("req-previous".into()),
    })
}

pub(crate) fn usage(tenant: &str) -> Event {
    usage_at(tenant, Timestamp::now().as_micros())
}

/// A usage event with only the required fields.
pub(crate) fn bare_usage(tenant: &str) -> Event {
    Event::Usage(UsageEvent {
        header: header(tenant, Timestamp::now()),
        upstream: None,
        status_code: None,
        streamed: false,
        finish_state: FinishState::ClientAborted,
        tokens: TokenCounts::default(),
        usage_source: UsageSource::Estimated,
        cost_micros: 0,
        price_version: None,
        latency_ms: 3,
        ttft_ms: None,
        retry_attempt: 0,
        retry_of: None,
    })
}

pub(crate) fn decision(tenant: &str) -> Event {
    let now = Timestamp::now();
    let mut h = header(tenant, now);
    h.provider = Some(Provider::Anthropic);
    h.route = Some(Route::Messages);
    Event::Decision(DecisionEvent {
        header: h,
        outcome: Outcome::Deny,
        rule: "daily-tokens".into(),
        rule_kind: RuleKind::UsageCap,
        counter_key: Some(format!("tenant:{tenant}")),
        counter_value: Some(99_000),
        counter_limit: Some(100_000),
        counter_unit: Some(CounterUnit::Tokens),
        window_start: Some(now.plus_micros(-3_600_000_000)),
        window_end: Some(now.plus_micros(3_600_000_000)),
        reset_at: Some(now.plus_micros(3_600_000_000)),
        reserved_tokens: Some(2_000),
        reserved_cost_micros: Some(150),
        reason: "tenant over its daily token cap".into(),
    })
}

pub(crate) fn correction(tenant: &str, corrects: EventId) -> Event {
    Event::Correction(CorrectionEvent {
        header: header(tenant, Timestamp::now()),
        corrects_event_id: corrects,
        reason: "provider report differs".into(),
        input_tokens: Some(1_190),
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: Some(301),
        reasoning_tokens: None,
        cost_micros: Some(4_300),
        price_version: Some("2026-11".into()),
        usage_source: Some(UsageSource::Mixed),
    })
}

/// A data dir with a segment log and a tables root.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) log: Arc<SegmentLog>,
}

impl Env {
    pub(crate) fn new() -> TestResult<Env> {
        let dir = tempfile::tempdir()?;
        let log = Arc::new(SegmentLog::open(
            &dir.path().join("log"),
            &LogConfig::default(),
        )?);
        Ok(Env { dir, log })
    }

    pub(crate) fn tables(&self) -> PathBuf {
        self.dir.path().join("tables")
    }

    pub(crate) fn tables_uri(&self) -> String {
        self.tables().to_string_lossy().into_owned()
    }

    pub(crate) fn log(&self) -> Arc<dyn EventLog> {
        Arc::clone(&self.log) as Arc<dyn EventLog>
    }

    /// Append events and wait until they are durable.
    pub(crate) fn append(&self, events: &[Event]) -> TestResult {
        self.append_raw(events.iter().map(tally_events::encode))
    }

    pub(crate) fn append_raw(&self, payloads: impl IntoIterator<Item = Vec<u8>>) -> TestResult {
        let mut last = None;
        for p in payloads {
            last = Some(self.log.append("t", &p)?);
        }
        if let Some(r) = last {
            r.wait()?;
        }
        Ok(())
    }

    pub(crate) async fn ledger(&self, config: LedgerConfig) -> Result<Ledger, LedgerError> {
        Ledger::open(config, &self.tables_uri(), self.log()).await
    }

    /// A ledger whose table stores go through `fail`.
    pub(crate) async fn failing_ledger(
        &self,
        config: LedgerConfig,
        fail: Arc<FailCommits>,
    ) -> Result<Ledger, LedgerError> {
        let mut root = TablesRoot::open(&self.tables_uri(), [], true)?;
        root.wrap_store = Some(Arc::new(move |inner| {
            Arc::new(FailStore {
                inner,
                fail: Arc::clone(&fail),
            }) as Arc<dyn ObjectStore>
        }));
        Ledger::open_root(config, root, self.log()).await
    }
}

/// A test config: small batches are fine, nothing runs in the background by surprise.
pub(crate) fn config() -> LedgerConfig {
    LedgerConfig {
        optimize_every_commits: 0,
        optimize_max_small_files: 0,
        vacuum_every_hours: 0,
        ..LedgerConfig::default()
    }
}

/// `SELECT ...` over the tables (registered under their names) with a fresh DataFusion
/// session, as any reader would.
pub(crate) async fn query(tables: &Path, sql: &str) -> TestResult<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for table in tally_events::arrow::Table::ALL {
        let url = url::Url::from_directory_path(tables.join(table.name()).canonicalize()?)
            .map_err(|()| "not absolute")?;
        let delta = deltalake::open_table(url).await?;
        delta.update_datafusion_session(&ctx.state())?;
        ctx.register_table(table.name(), delta.table_provider().await?)?;
    }
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The single i64 of a `SELECT count(*) ...`-like query.
pub(crate) async fn count(tables: &Path, sql: &str) -> TestResult<i64> {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Int64Type;
    let batches = query(tables, sql).await?;
    let batch = batches.first().ok_or("no result")?;
    Ok(batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or("not an i64")?
        .value(0))
}

pub(crate) async fn rows(tables: &Path, table: &str) -> TestResult<i64> {
    count(tables, &format!("SELECT count(*) FROM {table}")).await
}

pub(crate) async fn distinct_ids(tables: &Path, table: &str) -> TestResult<i64> {
    count(
        tables,
        &format!("SELECT count(DISTINCT event_id) FROM {table}"),
    )
    .await
}

/// Data files (`*.parquet`, excluding the Delta log) under a table directory.
pub(crate) fn parquet_files(table_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("_delta_log") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(table_dir, &mut out);
    out.sort();
    out
}

/// How [`FailStore`] fails a Delta commit (the put of `_delta_log/<version>.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailMode {
    /// The commit file is not written: the data files are orphans (crash before commit).
    Before,
    /// The commit file is written, then an error is returned (crash after commit).
    After,
}

/// Which commits fail: the next `remaining` commits to tables whose path contains
/// `table`.
#[derive(Debug)]
pub(crate) struct FailCommits {
    pub(crate) table: String,
    pub(crate) mode: FailMode,
    pub(crate) remaining: AtomicUsize,
    pub(crate) failed: AtomicUsize,
}

impl FailCommits {
    pub(crate) fn new(table: &str, mode: FailMode, times: usize) -> Arc<Self> {
        Arc::new(Self {
            table: format!("/{table}/"),
            mode,
            remaining: AtomicUsize::new(times),
            failed: AtomicUsize::new(0),
        })
    }

    fn should_fail(&self, location: &ObjPath) -> bool {
        let path = format!("/{}", location.as_ref());
        let is_commit = path.contains("/_delta_log/")
            && path.ends_with(".json")
            && path
                .rsplit('/')
                .next()
                .map(|f| f.trim_end_matches(".json"))
                // Not version 0: table creation is not what these tests break.
                .is_some_and(|v| {
                    v.bytes().all(|b| b.is_ascii_digit()) && v.bytes().any(|b| b != b'0')
                });
        is_commit
            && path.contains(&self.table)
            && self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// An object store that fails selected Delta commits (see [`FailCommits`]).
#[derive(Debug)]
pub(crate) struct FailStore {
    inner: Arc<dyn ObjectStore>,
    fail: Arc<FailCommits>,
}

impl std::fmt::Display for FailStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailStore({})", self.inner)
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "FailStore",
        source: "injected failure (simulated crash)".into(),
    }
}

#[async_trait]
impl ObjectStore for FailStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail.should_fail(location) {
            self.fail.failed.fetch_add(1, Ordering::SeqCst);
            if self.fail.mode == FailMode::After {
                self.inner.put_opts(location, payload, opts).await?;
            }
            return Err(injected());
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjPath>,
        offset: &ObjPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
