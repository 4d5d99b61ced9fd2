//! The reconciler's Delta tables under the tables root (`<root>/<table>/`, next to the
//! event tables): creating them on first use, idempotent upserts of provider usage and
//! cost rows (keyed by `row_id`, one Delta commit per upsert), reading them back, and a
//! small generic API (append, overwrite, read, version) for the other reconciler tables
//! (runs, discrepancies, exports). Must not parse reports, decide what to import, nor
//! write to the event tables.
//!
//! Upsert semantics: rows are first compared with what the table holds under the same
//! `row_id`; identical rows are left alone (no rewrite, `imported_at` unchanged), new rows
//! are inserted and rows with revised figures replace the old ones, all in one Delta MERGE
//! commit, so a reader sees either the whole import or none of it. When nothing is new or
//! revised, no commit is made at all: importing the same report twice leaves the table
//! at the same version.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tally_events::Timestamp;
use url::Url;

use crate::error::ReconcileError;
use crate::model::{
    ProviderCostRow, ProviderUsageRow, ReconTable, cost_rows, costs_batch, usage_batch, usage_rows,
};

/// What an upsert did, counted in rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpsertSummary {
    /// Rows whose `row_id` the table did not hold.
    pub inserted: u64,
    /// Rows that replaced a row with the same `row_id` and different figures.
    pub replaced: u64,
    /// Rows identical to the stored row (nothing written for them).
    pub unchanged: u64,
}

impl UpsertSummary {
    /// Sum of two summaries.
    pub fn plus(self, other: UpsertSummary) -> UpsertSummary {
        UpsertSummary {
            inserted: self.inserted + other.inserted,
            replaced: self.replaced + other.replaced,
            unchanged: self.unchanged + other.unchanged,
        }
    }

    /// Rows looked at.
    pub fn total(self) -> u64 {
        self.inserted + self.replaced + self.unchanged
    }
}

/// The reconciler's tables under one tables root.
#[derive(Clone)]
pub struct ReconStore {
    /// Always ends with `/`.
    root: Url,
    options: HashMap<String, String>,
}

impl std::fmt::Debug for ReconStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options may hold credentials: only their names are shown.
        f.debug_struct("ReconStore")
            .field("root", &self.root.as_str())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Table names the generic API accepts: lower-case letters, digits and `_`, so a name is
/// always one directory under the root and one SQL identifier.
fn check_name(name: &str) -> Result<(), ReconcileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ReconcileError::Config(format!(
            "`{name}` is not a usable table name (use lower-case letters, digits and _, starting with a letter)"
        )))
    }
}

impl ReconStore {
    /// The tables under `root`: a local path (created if missing), a `file://` URI or
    /// `memory://` (tests). Other schemes are accepted when a Delta object store is
    /// registered for them in this process; `options` are passed to it (e.g. S3 endpoint
    /// and credentials, the same keys the ledger takes).
    pub fn open(
        root: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ReconcileError> {
        let bad = |detail: String| {
            ReconcileError::Config(format!(
                "cannot use `{root}` as the tables root: {detail}. Use a local directory or a URI such as file:///var/lib/tally/tables"
            ))
        };
        let mut url = match Url::parse(root) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = std::path::Path::new(root);
                std::fs::create_dir_all(path)
                    .map_err(|e| bad(format!("creating {}: {e}", path.display())))?;
                let abs = path
                    .canonicalize()
                    .map_err(|e| bad(format!("resolving {}: {e}", path.display())))?;
                Url::from_directory_path(&abs)
                    .map_err(|()| bad(format!("{} is not absolute", abs.display())))?
            }
        };
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| bad("not a local file path".into()))?;
            std::fs::create_dir_all(&path)
                .map_err(|e| bad(format!("creating {}: {e}", path.display())))?;
        }
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        Ok(Self {
            root: url,
            options: options.into_iter().collect(),
        })
    }

    /// The tables root as a URL (ends with `/`).
    pub fn root(&self) -> &Url {
        &self.root
    }

    fn table_url(&self, name: &str) -> Result<Url, ReconcileError> {
        check_name(name)?;
        let url = self
            .root
            .join(&format!("{name}/"))
            .map_err(|e| ReconcileError::storage(name, "forming the table location", e))?;
        if url.scheme() == "file"
            && let Ok(path) = url.to_file_path()
        {
            std::fs::create_dir_all(&path).map_err(|e| {
                ReconcileError::storage(name, format!("creating {}", path.display()), e)
            })?;
        }
        Ok(url)
    }

    fn builder(&self, name: &str) -> Result<DeltaTableBuilder, ReconcileError> {
        let url = self.table_url(name)?;
        Ok(DeltaTableBuilder::from_url(url)
            .map_err(|e| ReconcileError::storage(name, "opening the table location", e))?
            .with_storage_options(self.options.clone()))
    }

    /// The table if it exists.
    async fn open_existing(&self, name: &str) -> Result<Option<DeltaTable>, ReconcileError> {
        let mut delta = self
            .builder(name)?
            .build()
            .map_err(|e| ReconcileError::storage(name, "opening the table", e))?;
        match delta.load().await {
            Ok(()) => Ok(Some(delta)),
            Err(DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_)) => {
                Ok(None)
            }
            Err(e) => Err(ReconcileError::storage(name, "loading the table", e)),
        }
    }

    /// The table, created empty with `schema` if it does not exist.
    async fn open_or_create(
        &self,
        name: &str,
        schema: &SchemaRef,
    ) -> Result<DeltaTable, ReconcileError> {
        if let Some(t) = self.open_existing(name).await? {
            return Ok(t);
        }
        let kernel: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| ReconcileError::storage(name, "converting the schema", e))?;
        let delta = self
            .builder(name)?
            .build()
            .map_err(|e| ReconcileError::storage(name, "opening the table", e))?;
        let created = delta
            .create()
            .with_table_name(name)
            .with_comment(format!("tally reconciler table {name}"))
            .with_columns(kernel.fields().cloned())
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) => Ok(t),
            // Lost a race with another creator: the table exists now.
            Err(first) => match self.open_existing(name).await? {
                Some(t) => Ok(t),
                None => Err(ReconcileError::storage(name, "creating the table", first)),
            },
        }
    }

    /// The table's current version (`None`: it does not exist yet).
    pub async fn version(&self, table: &str) -> Result<Option<u64>, ReconcileError> {
        Ok(self.open_existing(table).await?.and_then(|t| t.version()))
    }

    /// Append `batches` (all with `schema`) to `table`, creating it with `schema` first
    /// if needed; one commit. Returns the new version.
    pub async fn append(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<u64, ReconcileError> {
        self.write(table, schema, batches, SaveMode::Append).await
    }

    /// Replace the whole content of `table` by `batches` (creating it if needed); one
    /// commit, so readers see the old or the new content. Returns the new version.
    pub async fn overwrite(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<u64, ReconcileError> {
        self.write(table, schema, batches, SaveMode::Overwrite)
            .await
    }

    async fn write(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        mode: SaveMode,
    ) -> Result<u64, ReconcileError> {
        for b in &batches {
            if b.schema().fields() != schema.fields() {
                return Err(ReconcileError::Config(format!(
                    "a batch written to `{table}` does not have the table's schema"
                )));
            }
        }
        let delta = self.open_or_create(table, &schema).await?;
        let written = delta
            .write(batches)
            .with_save_mode(mode)
            .await
            .map_err(|e| ReconcileError::storage(table, "writing", e))?;
        written
            .version()
            .ok_or_else(|| ReconcileError::storage(table, "writing", "no version after commit"))
    }

    /// Every row of `table` at its latest version (empty when it does not exist).
    pub async fn read(&self, table: &str) -> Result<Vec<RecordBatch>, ReconcileError> {
        self.scan(table, None, None).await
    }

    /// Rows of `table`, filtered by `filter`, cast to `schema` when given (Delta readers
    /// may hand strings back as views).
    async fn scan(
        &self,
        table: &str,
        filter: Option<Expr>,
        schema: Option<&SchemaRef>,
    ) -> Result<Vec<RecordBatch>, ReconcileError> {
        let Some(delta) = self.open_existing(table).await? else {
            return Ok(Vec::new());
        };
        let err = |e: Box<dyn std::error::Error + Send + Sync>| {
            ReconcileError::storage(table, "reading", e)
        };
        let ctx = SessionContext::new();
        delta
            .update_datafusion_session(&ctx.state())
            .map_err(|e| err(e.into()))?;
        let provider = delta.table_provider().await.map_err(|e| err(e.into()))?;
        let mut df: DataFrame = ctx.read_table(provider).map_err(|e| err(e.into()))?;
        if let Some(f) = filter {
            df = df.filter(f).map_err(|e| err(e.into()))?;
        }
        let batches = df.collect().await.map_err(|e| err(e.into()))?;
        match schema {
            None => Ok(batches),
            Some(schema) => batches
                .iter()
                .map(|b| conform(b, schema).map_err(|e| err(e.into())))
                .collect(),
        }
    }

    /// Provider usage rows of `provider` (all when `None`) whose bucket starts in
    /// `[from, to)` (unbounded where `None`), ordered by bucket start.
    pub async fn read_usage(
        &self,
        provider: Option<&str>,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Vec<ProviderUsageRow>, ReconcileError> {
        self.read_rows(provider, from, to).await
    }

    /// Provider cost rows, as [`ReconStore::read_usage`].
    pub async fn read_costs(
        &self,
        provider: Option<&str>,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Vec<ProviderCostRow>, ReconcileError> {
        self.read_rows(provider, from, to).await
    }

    async fn read_rows<R: ReportRow>(
        &self,
        provider: Option<&str>,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Vec<R>, ReconcileError> {
        let t = R::TABLE;
        let batches = self
            .scan(
                t.name(),
                range_filter(provider, from, to),
                Some(&t.schema()),
            )
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(
                R::from_batch(b).map_err(|e| ReconcileError::storage(t.name(), "decoding", e))?,
            );
        }
        out.sort_by_cached_key(|r| (r.bucket_start(), r.row_id()));
        Ok(out)
    }

    /// The latest bucket start stored for `provider` and `source` within `[from, to)`:
    /// where an incremental pull resumes.
    pub async fn usage_watermark(
        &self,
        provider: &str,
        source: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Option<Timestamp>, ReconcileError> {
        Ok(self
            .read_usage(Some(provider), from, to)
            .await?
            .iter()
            .filter(|r| r.source == source)
            .map(|r| r.bucket_start)
            .max())
    }

    /// As [`ReconStore::usage_watermark`], over `provider_costs`.
    pub async fn cost_watermark(
        &self,
        provider: &str,
        source: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Option<Timestamp>, ReconcileError> {
        Ok(self
            .read_costs(Some(provider), from, to)
            .await?
            .iter()
            .filter(|r| r.source == source)
            .map(|r| r.bucket_start)
            .max())
    }

    /// Insert or replace `rows` in `provider_usage` by `row_id` (see the module docs).
    /// Rows of `rows` with the same `row_id` must not occur (the importers merge them);
    /// if they do, the last one wins.
    pub async fn upsert_usage(
        &self,
        rows: &[ProviderUsageRow],
    ) -> Result<UpsertSummary, ReconcileError> {
        self.upsert(rows).await
    }

    /// Insert or replace `rows` in `provider_costs` by `row_id`, as
    /// [`ReconStore::upsert_usage`].
    pub async fn upsert_costs(
        &self,
        rows: &[ProviderCostRow],
    ) -> Result<UpsertSummary, ReconcileError> {
        self.upsert(rows).await
    }

    async fn upsert<R: ReportRow>(&self, rows: &[R]) -> Result<UpsertSummary, ReconcileError> {
        let t = R::TABLE;
        let incoming = last_by_id(rows, R::row_id);
        let (Some(lo), Some(hi)) = (
            incoming.iter().map(|(_, r)| r.bucket_start()).min(),
            incoming.iter().map(|(_, r)| r.bucket_start()).max(),
        ) else {
            return Ok(UpsertSummary::default());
        };
        let stored: HashMap<String, R> = self
            .read_rows::<R>(None, Some(lo), Some(hi.plus_micros(1)))
            .await?
            .into_iter()
            .map(|r| (r.row_id(), r))
            .collect();
        let (summary, changed) = diff(incoming, &stored);
        if !changed.is_empty() {
            let batch = R::to_batch(&changed, Timestamp::now())
                .map_err(|e| ReconcileError::storage(t.name(), "encoding rows", e))?;
            self.merge(t, batch).await?;
        }
        Ok(summary)
    }

    /// One MERGE commit: rows of `batch` replace the rows with their `row_id`, or are
    /// inserted.
    async fn merge(&self, table: ReconTable, batch: RecordBatch) -> Result<(), ReconcileError> {
        let name = table.name();
        let schema = table.schema();
        let delta = self.open_or_create(name, &schema).await?;
        let err = |context: &str, e: Box<dyn std::error::Error + Send + Sync>| {
            ReconcileError::storage(name, context.to_owned(), e)
        };
        let ctx = SessionContext::new();
        let source = ctx
            .read_batch(batch)
            .map_err(|e| err("preparing the merge", e.into()))?;
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let update_cols = columns.clone();
        delta
            .merge(source, col("target.row_id").eq(col("source.row_id")))
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_update(|u| {
                update_cols.iter().fold(u, |u, c| {
                    u.update(c.as_str(), col(format!("source.{c}").as_str()))
                })
            })
            .map_err(|e| err("preparing the merge", e.into()))?
            .when_not_matched_insert(|i| {
                columns.iter().fold(i, |i, c| {
                    i.set(c.as_str(), col(format!("source.{c}").as_str()))
                })
            })
            .map_err(|e| err("preparing the merge", e.into()))?
            .await
            .map_err(|e| err("merging rows", e.into()))?;
        Ok(())
    }
}

/// `(row_id, row)` pairs, one per id, the last occurrence winning, in first-seen order.
/// A row of one of the provider report tables: its table, identity, bucket and Arrow
/// encoding, so reading and upserting are written once for both.
trait ReportRow: Clone + PartialEq {
    const TABLE: ReconTable;
    fn row_id(&self) -> String;
    fn bucket_start(&self) -> Timestamp;
    fn to_batch(rows: &[Self], now: Timestamp) -> Result<RecordBatch, ArrowError>;
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ArrowError>;
}

impl ReportRow for ProviderUsageRow {
    const TABLE: ReconTable = ReconTable::ProviderUsage;
    fn row_id(&self) -> String {
        ProviderUsageRow::row_id(self)
    }
    fn bucket_start(&self) -> Timestamp {
        self.bucket_start
    }
    fn to_batch(rows: &[Self], now: Timestamp) -> Result<RecordBatch, ArrowError> {
        usage_batch(rows, now)
    }
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ArrowError> {
        usage_rows(batch)
    }
}

impl ReportRow for ProviderCostRow {
    const TABLE: ReconTable = ReconTable::ProviderCosts;
    fn row_id(&self) -> String {
        ProviderCostRow::row_id(self)
    }
    fn bucket_start(&self) -> Timestamp {
        self.bucket_start
    }
    fn to_batch(rows: &[Self], now: Timestamp) -> Result<RecordBatch, ArrowError> {
        costs_batch(rows, now)
    }
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ArrowError> {
        cost_rows(batch)
    }
}

fn last_by_id<R: Clone>(rows: &[R], id: impl Fn(&R) -> String) -> Vec<(String, R)> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, R)> = Vec::new();
    for r in rows {
        let k = id(r);
        match index.get(&k) {
            Some(&i) => out[i].1 = r.clone(),
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, r.clone()));
            }
        }
    }
    out
}

/// Count inserted / replaced / unchanged rows and keep the rows to write.
fn diff<R: Clone + PartialEq>(
    incoming: Vec<(String, R)>,
    stored: &HashMap<String, R>,
) -> (UpsertSummary, Vec<R>) {
    let mut summary = UpsertSummary::default();
    let mut changed = Vec::new();
    for (id, row) in incoming {
        match stored.get(&id) {
            None => {
                summary.inserted += 1;
                changed.push(row);
            }
            Some(old) if *old == row => summary.unchanged += 1,
            Some(_) => {
                summary.replaced += 1;
                changed.push(row);
            }
        }
    }
    (summary, changed)
}

fn ts_lit(t: Timestamp) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(t.as_micros()),
        Some("UTC".into()),
    ))
}

fn range_filter(
    provider: Option<&str>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Option<Expr> {
    let mut parts = Vec::new();
    if let Some(p) = provider {
        parts.push(col("provider").eq(lit(p)));
    }
    if let Some(f) = from {
        parts.push(col("bucket_start").gt_eq(ts_lit(f)));
    }
    if let Some(t) = to {
        parts.push(col("bucket_start").lt(ts_lit(t)));
    }
    parts.into_iter().reduce(Expr::and)
}

/// `batch` with exactly `schema`'s columns and types (columns looked up by name, cast
/// where the reader returned another representation, e.g. string views).
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = batch.column_by_name(f.name()).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("column {} missing", f.name()))
        })?;
        columns.push(if c.data_type() == f.data_type() {
            Arc::clone(c)
        } else {
            cast(c, f.data_type())?
        });
    }
    if columns.is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    // Nullability may differ between the stored and the declared schema: rebuild the
    // schema from the declared one, but keep a column nullable if it holds nulls.
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| {
            if !f.is_nullable() && c.null_count() > 0 {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                Arc::clone(f)
            }
        })
        .collect();
    RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )),
        columns,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        assert!(check_name("reconciliation_runs").is_ok());
        for bad in ["", "../x", "A", "a/b", "1abc", "a-b"] {
            assert_eq!(
                check_name(bad).unwrap_err().code(),
                "reconcile.config",
                "{bad}"
            );
        }
    }

    #[test]
    fn last_occurrence_wins_and_order_is_kept() {
        let rows = vec![("a", 1), ("b", 2), ("a", 3)];
        let out = last_by_id(&rows, |r| r.0.to_owned());
        assert_eq!(out, vec![("a".into(), ("a", 3)), ("b".into(), ("b", 2))]);
    }
}
