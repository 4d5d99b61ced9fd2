//! The event tables as DataFusion table providers. Each [`TallyTable`] has the canonical
//! schema (`Table::table_schema()`) and, at scan time, unions the committed Delta table
//! with the not-yet-committed tail, both taken from the per-query [`QuerySnapshot`].
//! [`DeltaHandle`] keeps one Delta table open and refreshes it to the latest version.
//! Must not decide who may see what (it only applies the snapshot's tenant as a second,
//! physical guard) and must not write to the tables.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tally_events::arrow::Table;
use tally_events::log::Position;
use url::Url;

use crate::error::QueryError;
use crate::scope::TENANT_COLUMN;

/// What one query sees: per table the Delta provider at the version read when the query
/// started (absent while the table does not exist) and the tail batches; plus the tenant
/// the query is limited to. Travels in the session config as an extension, so every scan
/// of a table in one query (self-joins, views) reads the same data.
#[derive(Debug, Default)]
pub(crate) struct QuerySnapshot {
    pub(crate) tables: HashMap<Table, TableSnapshot>,
    pub(crate) tenant: Option<String>,
}

/// One table's data for one query.
#[derive(Debug, Default)]
pub(crate) struct TableSnapshot {
    pub(crate) delta: Option<Arc<dyn TableProvider>>,
    pub(crate) tail: Vec<RecordBatch>,
}

/// `usage`, `decisions` or `corrections` as seen by SQL.
#[derive(Debug)]
pub(crate) struct TallyTable {
    table: Table,
    schema: SchemaRef,
}

impl TallyTable {
    pub(crate) fn new(table: Table) -> Self {
        Self {
            table,
            schema: table.table_schema(),
        }
    }
}

#[async_trait]
impl TableProvider for TallyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters are used to prune Delta files; DataFusion still applies them above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = state
            .config()
            .get_extension::<QuerySnapshot>()
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "table {} scanned outside a tally query",
                    self.table.name()
                ))
            })?;
        let empty = TableSnapshot::default();
        let data = snapshot.tables.get(&self.table).unwrap_or(&empty);
        let tenant = snapshot.tenant.as_deref();

        // Columns to read: the projection, plus `tenant` when the scan is scoped.
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let tenant_index = self.schema.index_of(TENANT_COLUMN)?;
        let mut read = wanted.clone();
        if tenant.is_some() && !read.contains(&tenant_index) {
            read.push(tenant_index);
        }
        let read_schema = Arc::new(self.schema.project(&read)?);
        // With a tenant filter still to apply, a limit must not cut rows before it.
        let limit = if tenant.is_some() { None } else { limit };

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let Some(delta) = &data.delta {
            inputs.push(delta_scan(delta, state, &read_schema, filters, limit).await?);
        }
        if !data.tail.is_empty() || inputs.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                std::slice::from_ref(&data.tail),
                self.schema.clone(),
                Some(read.clone()),
            )?);
        }
        let mut plan = UnionExec::try_new(inputs)?;

        if let Some(tenant) = tenant {
            // Second guard under the logical rewrite in `scope`: never emit a row of
            // another tenant, whatever the plan above looks like.
            let column = read_schema.index_of(TENANT_COLUMN)?;
            let predicate = Arc::new(BinaryExpr::new(
                Arc::new(Column::new(TENANT_COLUMN, column)),
                Operator::Eq,
                Arc::new(Literal::new(ScalarValue::Utf8(Some(tenant.to_owned())))),
            ));
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
            if read.len() != wanted.len() {
                let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = (0..wanted.len())
                    .map(|i| {
                        let name = read_schema.field(i).name().clone();
                        (
                            Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                            name,
                        )
                    })
                    .collect();
                plan = Arc::new(ProjectionExec::try_new(exprs, plan)?);
            }
        }
        Ok(plan)
    }
}

/// Scan the Delta provider for the columns of `read_schema` (matched by name) and adapt
/// its output to exactly those fields: types cast where the stored type differs, columns
/// the stored table lacks (written by an older tally) read as nulls.
async fn delta_scan(
    delta: &Arc<dyn TableProvider>,
    state: &dyn Session,
    read_schema: &SchemaRef,
    filters: &[Expr],
    limit: Option<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let stored = delta.schema();
    let present: Vec<usize> = read_schema
        .fields()
        .iter()
        .filter_map(|f| stored.index_of(f.name()).ok())
        .collect();
    // Only pass filters whose columns all exist in the stored table.
    let usable: Vec<Expr> = filters
        .iter()
        .filter(|e| {
            e.column_refs()
                .iter()
                .all(|c| stored.index_of(c.name()).is_ok())
        })
        .cloned()
        .collect();
    let plan = delta.scan(state, Some(&present), &usable, limit).await?;
    let out = plan.schema();
    if same_fields(&out, read_schema) {
        return Ok(plan);
    }
    let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
    for target in read_schema.fields() {
        let expr: Arc<dyn PhysicalExpr> = match out.index_of(target.name()) {
            Ok(i) if out.field(i).data_type() == target.data_type() => {
                Arc::new(Column::new(target.name(), i))
            }
            Ok(i) => Arc::new(CastExpr::new_with_target_field(
                Arc::new(Column::new(target.name(), i)),
                Arc::new(target.as_ref().clone().with_nullable(true)),
                None,
            )),
            Err(_) => Arc::new(Literal::new(ScalarValue::try_from(target.data_type())?)),
        };
        exprs.push((expr, target.name().clone()));
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

fn same_fields(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// Make tail batches carry exactly the table schema (metadata included), so they union
/// with the Delta scan. Batches of another shape are a bug of the tail source.
pub(crate) fn normalize_tail(
    table: Table,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let schema = table.table_schema();
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            if b.schema() == schema {
                Ok(b)
            } else {
                RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| {
                    QueryError::Internal(format!(
                        "the log tail of {} does not have the table's schema: {e}",
                        table.name()
                    ))
                })
            }
        })
        .collect()
}

/// Organisation-wide tables other parts of tally write under the same root (provider
/// reports, reconciliation runs, export runs): readable with SQL by admin principals
/// only, since they carry no tenant column. The names are the reconciler's table names.
pub const ORG_TABLES: [&str; 5] = [
    "provider_usage",
    "provider_costs",
    "reconciliation_runs",
    "discrepancies",
    "export_runs",
];

/// An organisation-wide table as SQL sees it: the Delta provider of its latest version,
/// marked so tenant scoping can refuse it.
#[derive(Debug)]
pub(crate) struct OrgTable {
    inner: Arc<dyn TableProvider>,
}

impl OrgTable {
    pub(crate) fn new(inner: Arc<dyn TableProvider>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl TableProvider for OrgTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }
}

/// One Delta table, kept open and refreshed to its latest version on demand.
pub(crate) struct DeltaHandle {
    name: String,
    url: Url,
    state: tokio::sync::Mutex<HandleState>,
}

#[derive(Default)]
struct HandleState {
    table: Option<DeltaTable>,
    version: Option<u64>,
    provider: Option<Arc<dyn TableProvider>>,
    /// The log position `version` covers for the app id asked last.
    covered: Option<(String, Option<Position>)>,
}

/// A table version as one query reads it: its provider (`None` while nothing has been
/// committed) and, when the ledger's app id was given, the log position it covers.
pub(crate) struct Refreshed {
    pub(crate) provider: Option<Arc<dyn TableProvider>>,
    pub(crate) covered: Option<Position>,
}

impl fmt::Debug for DeltaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaHandle")
            .field("table", &self.name)
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl DeltaHandle {
    pub(crate) fn new(name: &str, url: Url) -> Self {
        Self {
            name: name.to_owned(),
            url,
            state: tokio::sync::Mutex::new(HandleState::default()),
        }
    }

    fn table_error(&self, detail: impl fmt::Display) -> QueryError {
        QueryError::Table {
            table: self.name.clone(),
            location: self.url.to_string(),
            detail: detail.to_string(),
        }
    }

    /// The provider of the latest committed version, or `None` while nothing has been
    /// committed (the table then reads as empty); with `app_id`, also the log position
    /// that version covers for that ledger (the start of the log when it covers none).
    pub(crate) async fn refresh(
        &self,
        session: &Arc<SessionState>,
        app_id: Option<&str>,
    ) -> Result<Refreshed, QueryError> {
        let provider = self.refresh_provider(session).await?;
        let Some(app_id) = app_id else {
            return Ok(Refreshed {
                provider,
                covered: None,
            });
        };
        let mut st = self.state.lock().await;
        let covered = match (&st.table, &st.covered) {
            (None, _) => None,
            (Some(_), Some((id, pos))) if id == app_id => *pos,
            (Some(t), _) => {
                let snapshot = t.snapshot().map_err(|e| self.table_error(e))?;
                let v = snapshot
                    .transaction_version(t.log_store().as_ref(), app_id)
                    .await
                    .map_err(|e| self.table_error(e))?;
                let pos = match v {
                    None => None,
                    Some(v) => Some(tally_ledger::txn_position(v).ok_or_else(|| {
                        self.table_error(format!(
                            "transaction version {v} of {app_id} is not a log position"
                        ))
                    })?),
                };
                st.covered = Some((app_id.to_owned(), pos));
                pos
            }
        };
        Ok(Refreshed {
            provider,
            covered: Some(covered.unwrap_or(Position::START)),
        })
    }

    async fn refresh_provider(
        &self,
        session: &Arc<SessionState>,
    ) -> Result<Option<Arc<dyn TableProvider>>, QueryError> {
        let mut st = self.state.lock().await;
        match st.table.as_mut() {
            Some(t) => t.update_state().await.map_err(|e| self.table_error(e))?,
            None => {
                if !self.may_exist() {
                    return Ok(None);
                }
                let mut t = DeltaTableBuilder::from_url(self.url.clone())
                    .and_then(|b| b.build())
                    .map_err(|e| self.table_error(e))?;
                match t.load().await {
                    Ok(()) => st.table = Some(t),
                    Err(DeltaTableError::NotATable(_)) => return Ok(None),
                    Err(e) => return Err(self.table_error(e)),
                }
            }
        }
        let Some(t) = st.table.as_ref() else {
            return Ok(None);
        };
        let version = t.version();
        if version.is_some() && version == st.version && st.provider.is_some() {
            return Ok(st.provider.clone());
        }
        let provider: Arc<dyn TableProvider> = Arc::new(
            t.table_provider()
                .with_session(session.clone())
                .build()
                .await
                .map_err(|e| self.table_error(e))?,
        );
        st.version = version;
        st.provider = Some(provider.clone());
        st.covered = None;
        Ok(Some(provider))
    }

    /// A local table exists once the ledger created its `_delta_log`; checking first
    /// keeps queries from creating directories. Remote stores are always asked.
    fn may_exist(&self) -> bool {
        if self.url.scheme() != "file" {
            return true;
        }
        match self.url.to_file_path() {
            Ok(path) => path.join("_delta_log").is_dir(),
            Err(()) => true,
        }
    }
}
