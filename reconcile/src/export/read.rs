//! Reading the ledger's committed data: the Delta versions of `usage` and `corrections`
//! now, and a DataFusion session over both tables at given versions (Delta time travel)
//! with the `usage_corrected` view defined exactly as the query layer defines it; then
//! the period's usage aggregated per tenant, provider, model, UTC hour and "late
//! correction" flag. Never reads the uncommitted log tail and never writes.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use serde::{Deserialize, Serialize};
use tally_events::arrow::Table;
use url::Url;

use super::ExportError;
use super::lines::Figures;
use super::period::Period;

/// The Delta versions of the event tables an export read (`None`: the table did not
/// exist, read as empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub usage: Option<u64>,
    pub corrections: Option<u64>,
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |x: Option<u64>| x.map_or_else(|| "none".to_owned(), |v| v.to_string());
        write!(
            f,
            "usage@{} corrections@{}",
            v(self.usage),
            v(self.corrections)
        )
    }
}

pub(crate) fn table_url(root: &Url, name: &str) -> Result<Url, ExportError> {
    root.join(&format!("{name}/"))
        .map_err(|e| ExportError::read(&format!("table `{name}` under `{root}`"), e))
}

/// A local table exists once its `_delta_log` does; remote stores are always asked.
fn may_exist(url: &Url) -> bool {
    if url.scheme() != "file" {
        return true;
    }
    url.to_file_path()
        .map(|p| p.join("_delta_log").is_dir())
        .unwrap_or(true)
}

/// Open `name` under `root` at `version` (latest when `None`); `Ok(None)` if the table
/// does not exist.
pub(crate) async fn open_table(
    root: &Url,
    name: &str,
    version: Option<u64>,
) -> Result<Option<DeltaTable>, ExportError> {
    let url = table_url(root, name)?;
    if !may_exist(&url) {
        return Ok(None);
    }
    let mut builder =
        DeltaTableBuilder::from_url(url.clone()).map_err(|e| ExportError::read(name, e))?;
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    let mut table = builder.build().map_err(|e| ExportError::read(name, e))?;
    let loaded = match version {
        Some(v) => table.load_version(v).await,
        None => table.load().await,
    };
    match loaded {
        Ok(()) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_))
            if version.is_none() =>
        {
            Ok(None)
        }
        Err(e) => Err(ExportError::read(
            &format!(
                "loading `{name}` at version {}",
                version.map_or_else(|| "latest".to_owned(), |v| v.to_string())
            ),
            e,
        )),
    }
}

/// The latest committed versions of `usage` and `corrections`.
pub(crate) async fn latest_versions(root: &Url) -> Result<Versions, ExportError> {
    let usage = open_table(root, Table::Usage.name(), None).await?;
    let corrections = open_table(root, Table::Corrections.name(), None).await?;
    Ok(Versions {
        usage: usage.and_then(|t| t.version()),
        corrections: corrections.and_then(|t| t.version()),
    })
}

pub(crate) fn session() -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(2);
    {
        let opts = config.options_mut();
        opts.execution.parquet.schema_force_view_types = false;
        opts.sql_parser.map_string_types_to_utf8view = false;
    }
    SessionContext::new_with_config(config)
}

async fn provider(
    ctx: &SessionContext,
    root: &Url,
    table: Table,
    version: Option<u64>,
) -> Result<Arc<dyn TableProvider>, ExportError> {
    let name = table.name();
    let Some(v) = version else {
        let empty = MemTable::try_new(table.table_schema(), vec![vec![]])
            .map_err(|e| ExportError::read(name, e))?;
        return Ok(Arc::new(empty));
    };
    let delta = open_table(root, name, Some(v)).await?.ok_or_else(|| {
        ExportError::Read(format!(
            "table `{name}` at version {v} is gone; it was read at that version before. \
             Was the tables root replaced or vacuumed past it?"
        ))
    })?;
    delta
        .update_datafusion_session(&ctx.state())
        .map_err(|e| ExportError::read(name, e))?;
    delta
        .table_provider()
        .await
        .map_err(|e| ExportError::read(name, e))
}

/// A session over `usage` and `corrections` at `versions`, with `usage_corrected`.
pub(crate) async fn context_at(
    root: &Url,
    versions: &Versions,
) -> Result<SessionContext, ExportError> {
    let ctx = session();
    for (t, v) in [
        (Table::Usage, versions.usage),
        (Table::Corrections, versions.corrections),
    ] {
        let p = provider(&ctx, root, t, v).await?;
        ctx.register_table(t.name(), p)
            .map_err(|e| ExportError::read(t.name(), e))?;
    }
    let view = tally_queries::views::views()
        .into_iter()
        .find(|v| v.name == "usage_corrected")
        .ok_or_else(|| ExportError::Read("the usage_corrected view is not defined".into()))?;
    ctx.sql(&format!("CREATE VIEW usage_corrected AS {}", view.sql))
        .await
        .map_err(|e| ExportError::read("defining usage_corrected", e))?;
    Ok(ctx)
}

/// Period filter on a table alias: the `day` partition (pruning) and `occurred_at`.
pub(crate) fn period_filter(alias: &str, period: &Period) -> String {
    format!(
        "{alias}.day >= DATE '{}' AND {alias}.day < DATE '{}' \
         AND {alias}.occurred_at >= arrow_cast({}, 'Timestamp(µs, \"UTC\")') \
         AND {alias}.occurred_at < arrow_cast({}, 'Timestamp(µs, \"UTC\")')",
        period.start.format("%Y-%m-%d"),
        period.end.format("%Y-%m-%d"),
        period.start_micros(),
        period.end_micros(),
    )
}

/// Usage of one tenant, provider, model and UTC hour, split by whether a correction
/// arrived more than 24 hours after the event it corrects (`late`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) tenant: String,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) hour: i64,
    pub(crate) late: bool,
    /// With corrections applied (`usage_corrected`).
    pub(crate) corrected: Figures,
    /// As originally recorded (`usage`).
    pub(crate) raw: Figures,
}

const FIGURES: [&str; 8] = [
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "cost_micros",
];

pub(crate) async fn sql(ctx: &SessionContext, q: &str) -> Result<Vec<RecordBatch>, ExportError> {
    ctx.sql(q)
        .await
        .map_err(|e| ExportError::read("planning the export query", e))?
        .collect()
        .await
        .map_err(|e| ExportError::read("running the export query", e))
}

pub(crate) fn strings(batch: &RecordBatch, i: usize) -> Result<Vec<String>, ExportError> {
    let a = cast(batch.column(i), &DataType::Utf8).map_err(|e| ExportError::read("column", e))?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|r| {
            if a.is_null(r) {
                String::new()
            } else {
                a.value(r).to_owned()
            }
        })
        .collect())
}

pub(crate) fn ints(batch: &RecordBatch, i: usize) -> Result<Vec<i64>, ExportError> {
    let col = batch.column(i);
    let col = match col.data_type() {
        DataType::Timestamp(_, tz) => cast(
            &cast(col, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
                .map_err(|e| ExportError::read("column", e))?,
            &DataType::Int64,
        ),
        _ => cast(col, &DataType::Int64),
    }
    .map_err(|e| ExportError::read("column", e))?;
    let a = col.as_primitive::<Int64Type>();
    Ok((0..a.len())
        .map(|r| if a.is_null(r) { 0 } else { a.value(r) })
        .collect())
}

/// The period's usage, per tenant, provider, model, hour and late flag, in a stable
/// order.
pub(crate) async fn cells(ctx: &SessionContext, period: &Period) -> Result<Vec<Cell>, ExportError> {
    let sums = |alias: &str, prefix: &str| {
        FIGURES
            .iter()
            .map(|c| format!("CAST(COALESCE(sum({alias}.{c}), 0) AS BIGINT) AS {prefix}{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let q = format!(
        "SELECT uc.tenant AS tenant, COALESCE(uc.provider, '') AS provider, \
           COALESCE(uc.model_served, uc.model_requested, '') AS model, \
           date_trunc('hour', uc.occurred_at) AS hour, \
           COALESCE(c.occurred_at > uc.occurred_at + INTERVAL '24 hours', false) AS late, \
           CAST(count(*) AS BIGINT) AS requests, {}, {} \
         FROM usage_corrected uc \
         JOIN usage u ON u.event_id = uc.event_id AND u.tenant = uc.tenant \
         LEFT JOIN corrections c ON c.event_id = uc.correction_event_id AND c.tenant = uc.tenant \
         WHERE {} \
         GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
        sums("uc", ""),
        sums("u", "raw_"),
        period_filter("uc", period),
    );
    let mut out = Vec::new();
    for b in sql(ctx, &q).await? {
        let tenant = strings(&b, 0)?;
        let provider = strings(&b, 1)?;
        let model = strings(&b, 2)?;
        let hour = ints(&b, 3)?;
        let late = b
            .column(4)
            .as_boolean_opt()
            .ok_or_else(|| ExportError::Read("the late flag is not a boolean".into()))?;
        let requests = ints(&b, 5)?;
        let mut cols = Vec::new();
        for i in 0..2 * FIGURES.len() {
            cols.push(ints(&b, 6 + i)?);
        }
        let n = FIGURES.len();
        for r in 0..b.num_rows() {
            let figures = |base: usize| Figures {
                requests: requests[r],
                input_tokens: cols[base][r],
                cached_input_tokens: cols[base + 1][r],
                cache_write_tokens: cols[base + 2][r],
                output_tokens: cols[base + 3][r],
                reasoning_tokens: cols[base + 4][r],
                audio_input_tokens: cols[base + 5][r],
                audio_output_tokens: cols[base + 6][r],
                cost_micros: cols[base + 7][r],
            };
            out.push(Cell {
                tenant: tenant[r].clone(),
                provider: provider[r].clone(),
                model: model[r].clone(),
                hour: hour[r],
                late: late.value(r),
                corrected: figures(0),
                raw: figures(n),
            });
        }
    }
    Ok(out)
}
