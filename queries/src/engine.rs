//! The query engine: a DataFusion session over the event tables and views, and the one
//! path every query takes — snapshot the tables (Delta at its latest version plus the
//! log tail), plan, check read-only (`safety`), scope to the principal (`scope`),
//! execute under a per-query memory pool and deadline. Must not format results or know
//! about HTTP or the CLI.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::context::SessionContext;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionConfig;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tally_events::arrow::Table;
use tally_events::log::Position;
use tokio::time::{Instant, Sleep};
use url::Url;

use crate::config::QueryConfig;
use crate::error::QueryError;
use crate::safety;
use crate::scope::{self, Principal};
use crate::tables::{
    DeltaHandle, ORG_TABLES, OrgTable, QuerySnapshot, TableSnapshot, TallyTable, normalize_tail,
};
use crate::tail::TailSource;
use crate::views::views;

/// SQL over tally's tables. Cheap to share (`Arc<QueryEngine>`); every method takes
/// `&self` and queries run concurrently.
pub struct QueryEngine {
    config: QueryConfig,
    tables_root: Url,
    /// Session with the tables and views registered; cloned per query.
    base: SessionState,
    /// The same session, for the Delta providers' scan settings.
    provider_session: Arc<SessionState>,
    handles: Vec<(Table, DeltaHandle)>,
    /// Organisation-wide tables (admin only), registered once they exist.
    org: Vec<(&'static str, DeltaHandle)>,
    /// The provider registered last per organisation-wide table (re-registered only when
    /// the table moved to a new version).
    org_registered:
        parking_lot::Mutex<HashMap<&'static str, Arc<dyn datafusion::datasource::TableProvider>>>,
    tail: Option<Arc<dyn TailSource>>,
    object_stores: Arc<dyn ObjectStoreRegistry>,
    /// Parquet footers already parsed, shared by every query's runtime (bounded by
    /// DataFusion's metadata cache limit; the tables' files never change in place).
    metadata_cache: Arc<FileMetadataCache>,
}

impl fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryEngine")
            .field("tables_root", &self.tables_root.as_str())
            .field("config", &self.config)
            .field("has_tail", &self.tail.is_some())
            .finish()
    }
}

/// Whether a limited result was cut off at the row limit. Read it after the stream ended.
#[derive(Clone, Debug, Default)]
pub struct Truncation(Arc<AtomicBool>);

impl Truncation {
    /// True once the stream dropped rows past the limit.
    pub fn is_truncated(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The URL of the tables root: a URL as given (`file:///…`, `memory:///…`), or a local
/// path (need not exist yet).
pub fn tables_root_url(root: &str) -> Result<Url, QueryError> {
    let mut url = if root.contains("://") {
        Url::parse(root)
            .map_err(|e| QueryError::Config(format!("tables root `{root}` is not a URL: {e}")))?
    } else {
        let abs = std::path::absolute(root).map_err(|e| {
            QueryError::Config(format!("tables root `{root}` is not a usable path: {e}"))
        })?;
        Url::from_directory_path(&abs).map_err(|()| {
            QueryError::Config(format!(
                "tables root `{}` is not an absolute path",
                abs.display()
            ))
        })?
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

impl QueryEngine {
    /// An engine over the Delta tables under `tables_root` (a path or URL; tables that do
    /// not exist yet read as empty), with the not-yet-committed `tail` unioned in.
    pub async fn new(
        config: QueryConfig,
        tables_root: &str,
        tail: Option<Arc<dyn TailSource>>,
    ) -> Result<Self, QueryError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(QueryError::Config(problems.join("; ")));
        }
        let root = tables_root_url(tables_root)?;
        let mut handles = Vec::new();
        for t in Table::ALL {
            let url = root
                .join(&format!("{}/", t.name()))
                .map_err(|e| QueryError::Config(format!("tables root `{root}`: {e}")))?;
            handles.push((t, DeltaHandle::new(t.name(), url)));
        }
        let mut org = Vec::new();
        for name in ORG_TABLES {
            let url = root
                .join(&format!("{name}/"))
                .map_err(|e| QueryError::Config(format!("tables root `{root}`: {e}")))?;
            org.push((name, DeltaHandle::new(name, url)));
        }

        let partitions = if config.target_partitions == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.target_partitions
        };
        let mut session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(partitions);
        {
            let opts = session_config.options_mut();
            // Plain Utf8 strings everywhere: the tables' declared types, and what the
            // tail and the views produce.
            opts.execution.parquet.schema_force_view_types = false;
            opts.sql_parser.map_string_types_to_utf8view = false;
        }
        let object_stores: Arc<dyn ObjectStoreRegistry> =
            Arc::new(DefaultObjectStoreRegistry::new());
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(object_stores.clone())
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let metadata_cache = runtime.cache_manager.get_file_metadata_cache();
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        for t in Table::ALL {
            ctx.register_table(t.name(), Arc::new(TallyTable::new(t)))
                .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        #[cfg(feature = "postgres")]
        {
            // The Postgres catalog (pg_class, pg_namespace, ...) and functions psql and
            // drivers use to list tables; metadata only.
            use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
                context::EmptyContextProvider, setup_pg_catalog,
            };
            let catalog = ctx
                .state()
                .config()
                .options()
                .catalog
                .default_catalog
                .clone();
            setup_pg_catalog(&ctx, &catalog, EmptyContextProvider)
                .map_err(|e| QueryError::Internal(format!("pg_catalog: {e}")))?;
        }
        for v in views() {
            ctx.sql(&format!("CREATE VIEW {} AS {}", v.name, v.sql))
                .await
                .map_err(|e| QueryError::Internal(format!("view {}: {e}", v.name)))?;
        }
        let base = ctx.state();
        Ok(Self {
            config,
            tables_root: root,
            provider_session: Arc::new(base.clone()),
            base,
            handles,
            org,
            org_registered: parking_lot::Mutex::new(HashMap::new()),
            tail,
            object_stores,
            metadata_cache,
        })
    }

    /// The settings the engine runs with.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// The tables root as a URL.
    pub fn tables_root(&self) -> &Url {
        &self.tables_root
    }

    fn df_error(&self, e: DataFusionError) -> QueryError {
        QueryError::from_datafusion(e, self.config.memory_limit_bytes)
    }

    fn timeout_error(&self) -> QueryError {
        QueryError::Timeout {
            timeout_ms: self.config.timeout_ms,
        }
    }

    /// Snapshot every table for one query: Delta at its latest version first, then the
    /// log tail from the position that version records for the ledger's app id. The two
    /// meet exactly: an event the ledger commits meanwhile is in the tail (read from the
    /// older position) and not in the table version already chosen, so it is counted
    /// once. Without an app id (a tail that cannot say), the tail's own committed
    /// positions are used.
    async fn snapshot(&self, principal: &Principal) -> Result<QuerySnapshot, QueryError> {
        if principal.tenant().is_none() {
            self.register_org_tables().await?;
        }
        let app_id = self
            .tail
            .as_ref()
            .and_then(|t| t.ledger_app_id().map(str::to_owned));
        let refreshed = futures_util::future::join_all(
            self.handles
                .iter()
                .map(|(_, h)| h.refresh(&self.provider_session, app_id.as_deref())),
        )
        .await;
        let mut deltas = Vec::new();
        for ((t, _), r) in self.handles.iter().zip(refreshed) {
            deltas.push((*t, r?));
        }
        let mut tails: HashMap<Table, Vec<RecordBatch>> = HashMap::new();
        if let Some(tail) = &self.tail {
            let tail = tail.clone();
            let from: Vec<(Table, Option<Position>)> =
                deltas.iter().map(|(t, r)| (*t, r.covered)).collect();
            let read = tokio::task::spawn_blocking(move || {
                from.into_iter()
                    .map(|(t, pos)| (t, tail.tail_from(t, pos)))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| QueryError::Internal(format!("reading the log tail: {e}")))?;
            for (t, batches) in read {
                tails.insert(t, normalize_tail(t, batches)?);
            }
        }
        let mut tables = HashMap::new();
        for (t, r) in deltas {
            tables.insert(
                t,
                TableSnapshot {
                    delta: r.provider,
                    tail: tails.remove(&t).unwrap_or_default(),
                },
            );
        }
        Ok(QuerySnapshot {
            tables,
            tenant: principal.tenant().map(str::to_owned),
        })
    }

    /// Register (or move to their latest version) the organisation-wide tables that
    /// exist. They are read at their latest version, not pinned per query.
    async fn register_org_tables(&self) -> Result<(), QueryError> {
        // One listing per table (a LIST each on S3): all at once.
        let refreshed = futures_util::future::join_all(
            self.org
                .iter()
                .map(|(_, h)| h.refresh(&self.provider_session, None)),
        )
        .await;
        for ((name, _), r) in self.org.iter().zip(refreshed) {
            let Some(provider) = r?.provider else {
                continue;
            };
            if self
                .org_registered
                .lock()
                .get(name)
                .is_some_and(|p| Arc::ptr_eq(p, &provider))
            {
                continue;
            }
            let schema = self
                .base
                .schema_for_ref(*name)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            // Registering replaces nothing: drop the previous version's provider first.
            schema
                .deregister_table(name)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            schema
                .register_table(
                    (*name).to_owned(),
                    Arc::new(OrgTable::new(provider.clone())),
                )
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            self.org_registered.lock().insert(name, provider);
        }
        Ok(())
    }

    /// A session for one query: the shared catalog, a fresh memory pool, the snapshot.
    fn session(&self, snapshot: QuerySnapshot) -> Result<SessionState, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.config.memory_limit_bytes)))
            .with_object_store_registry(self.object_stores.clone())
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(self.metadata_cache.clone())),
            )
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let mut state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_runtime_env(runtime)
            .build();
        state.config_mut().set_extension(Arc::new(snapshot));
        Ok(state)
    }

    /// Parse and plan `sql`, check it is read-only and scope it to `principal`.
    async fn plan_checked(
        &self,
        state: &SessionState,
        sql: &str,
        principal: &Principal,
    ) -> Result<LogicalPlan, QueryError> {
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| self.df_error(e))?;
        safety::check(&plan, principal)?;
        scope::apply(plan, principal)
    }

    /// The plan `sql` runs as for `principal`: checked and scoped, before optimization.
    /// Useful to see (and test) the tenant filters.
    pub async fn logical_plan(
        &self,
        sql: &str,
        principal: &Principal,
    ) -> Result<LogicalPlan, QueryError> {
        let state = self.session(QuerySnapshot::default())?;
        self.plan_checked(&state, sql, principal).await
    }

    /// Run `sql` for `principal`. The stream ends with a `query.timeout` error when the
    /// deadline (`timeout_ms` from now) passes; map stream errors with
    /// [`QueryError::from_datafusion`].
    pub async fn execute(
        &self,
        sql: &str,
        principal: &Principal,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        self.run(sql, Vec::new(), principal, None)
            .await
            .map(|(s, _)| s)
    }

    /// Like [`QueryEngine::execute`], with `$1, $2, …` placeholders bound to `params`.
    pub async fn execute_with_params(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        principal: &Principal,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        self.run(sql, params, principal, None).await.map(|(s, _)| s)
    }

    /// Like [`QueryEngine::execute`], returning at most `max_rows` rows; the
    /// [`Truncation`] tells, once the stream has ended, whether rows were left out.
    pub async fn execute_limited(
        &self,
        sql: &str,
        principal: &Principal,
        max_rows: usize,
    ) -> Result<(SendableRecordBatchStream, Truncation), QueryError> {
        let (s, t) = self.run(sql, Vec::new(), principal, Some(max_rows)).await?;
        Ok((s, t.unwrap_or_default()))
    }

    /// Run `sql` and collect every batch.
    pub async fn collect(
        &self,
        sql: &str,
        principal: &Principal,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        self.collect_with_params(sql, Vec::new(), principal).await
    }

    /// Run `sql` with bound parameters and collect every batch.
    pub async fn collect_with_params(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        principal: &Principal,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let stream = self.execute_with_params(sql, params, principal).await?;
        stream
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.df_error(e))
    }

    async fn run(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        principal: &Principal,
        max_rows: Option<usize>,
    ) -> Result<(SendableRecordBatchStream, Option<Truncation>), QueryError> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let deadline = Instant::now() + timeout;
        let prepare = async {
            let snapshot = self.snapshot(principal).await?;
            let state = self.session(snapshot)?;
            let mut plan = self.plan_checked(&state, sql, principal).await?;
            if !params.is_empty() {
                plan = plan
                    .with_param_values(params)
                    .map_err(|e| self.df_error(e))?;
            }
            if let Some(max) = max_rows
                && !matches!(
                    plan,
                    LogicalPlan::Explain(_)
                        | LogicalPlan::Analyze(_)
                        | LogicalPlan::DescribeTable(_)
                )
            {
                // One row more than the limit tells whether anything was cut off.
                plan = LogicalPlanBuilder::from(plan)
                    .limit(0, Some(max.saturating_add(1)))
                    .and_then(|b| b.build())
                    .map_err(|e| self.df_error(e))?;
            }
            DataFrame::new(state, plan)
                .execute_stream()
                .await
                .map_err(|e| self.df_error(e))
        };
        let stream = tokio::time::timeout_at(deadline, prepare)
            .await
            .map_err(|_| self.timeout_error())??;
        let stream: SendableRecordBatchStream = Box::pin(DeadlineStream {
            inner: stream,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            error: Some(self.timeout_error()),
            memory_limit_bytes: self.config.memory_limit_bytes,
        });
        Ok(match max_rows {
            None => (stream, None),
            Some(max) => {
                let truncation = Truncation::default();
                let limited: SendableRecordBatchStream = Box::pin(RowLimitStream {
                    inner: stream,
                    remaining: max,
                    truncation: truncation.clone(),
                    done: false,
                });
                (limited, Some(truncation))
            }
        })
    }
}

/// Ends a stream with a timeout error once its deadline passes (dropping the inner
/// stream cancels the query's tasks).
struct DeadlineStream {
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<Sleep>>,
    /// Taken when the deadline fires; `None` afterwards (the stream is over).
    error: Option<QueryError>,
    memory_limit_bytes: usize,
}

impl Stream for DeadlineStream {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(_) = &this.error else {
            return Poll::Ready(None);
        };
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(this.error.take().map(|e| Err(e.into_datafusion())));
        }
        match this.inner.poll_next_unpin(cx) {
            // Classify errors here, where the memory limit is known.
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(QueryError::from_datafusion(
                e,
                this.memory_limit_bytes,
            )
            .into_datafusion()))),
            other => other,
        }
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// Passes at most `remaining` rows, then marks the truncation if more arrive.
struct RowLimitStream {
    inner: SendableRecordBatchStream,
    remaining: usize,
    truncation: Truncation,
    done: bool,
}

impl Stream for RowLimitStream {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                if batch.num_rows() <= this.remaining {
                    this.remaining -= batch.num_rows();
                    return Poll::Ready(Some(Ok(batch)));
                }
                this.truncation.0.store(true, Ordering::Release);
                this.done = true;
                let keep = this.remaining;
                this.remaining = 0;
                Poll::Ready(Some(Ok(batch.slice(0, keep))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl RecordBatchStream for RowLimitStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}
