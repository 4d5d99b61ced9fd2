//! The export state: a Delta table `export_runs` under the tables root with one row per
//! export — period, format, kind (`usage` lines or `adjustments`), whether it closed the
//! period (or sealed the adjustment batch), the `usage`/`corrections` versions it read
//! (and for adjustments, the versions it compared against), rows, the SHA-256 of the
//! bytes produced, and when. It is the watermark of what was billed: a closed period is
//! re-read at its recorded versions. Must not read the event tables or produce output.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTableBuilder;
use deltalake::protocol::SaveMode;
use serde::Serialize;
use url::Url;

use super::ExportError;
use super::period::{Period, rfc3339};
use super::read::{self, Versions};

/// Name (and directory) of the state table.
pub const EXPORT_RUNS: &str = "export_runs";

/// What a run exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The period's line items (or events).
    Usage,
    /// Adjustment lines of a closed period.
    Adjustments,
}

impl RunKind {
    fn name(self) -> &'static str {
        match self {
            RunKind::Usage => "usage",
            RunKind::Adjustments => "adjustments",
        }
    }
}

/// One row of `export_runs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportRun {
    pub run_id: String,
    pub period: String,
    pub period_start: i64,
    pub period_end: i64,
    pub format: String,
    pub kind: RunKind,
    /// This run closed the period (`usage`) or sealed its adjustment batch
    /// (`adjustments`).
    pub closed: bool,
    /// Versions read.
    pub versions: Versions,
    /// For adjustments: the versions compared against.
    pub base: Option<Versions>,
    pub rows: i64,
    pub content_sha256: String,
    pub created_at: i64,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of `export_runs`.
pub fn export_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("period", DataType::Utf8, false),
        Field::new("period_start", ts(), false),
        Field::new("period_end", ts(), false),
        Field::new("format", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("closed", DataType::Boolean, false),
        Field::new("usage_version", DataType::Int64, true),
        Field::new("corrections_version", DataType::Int64, true),
        Field::new("base_usage_version", DataType::Int64, true),
        Field::new("base_corrections_version", DataType::Int64, true),
        Field::new("rows", DataType::Int64, false),
        Field::new("content_sha256", DataType::Utf8, false),
        Field::new("created_at", ts(), false),
    ]))
}

fn v64(v: Option<u64>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v).ok())
}

fn to_batch(r: &ExportRun) -> Result<RecordBatch, ExportError> {
    let tsa = |v: i64| Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"));
    let s = |v: &str| Arc::new(StringArray::from(vec![v.to_owned()]));
    let i = |v: Option<i64>| Arc::new(Int64Array::from(vec![v]));
    RecordBatch::try_new(
        export_runs_schema(),
        vec![
            s(&r.run_id),
            s(&r.period),
            tsa(r.period_start),
            tsa(r.period_end),
            s(&r.format),
            s(r.kind.name()),
            Arc::new(BooleanArray::from(vec![r.closed])),
            i(v64(r.versions.usage)),
            i(v64(r.versions.corrections)),
            i(r.base.and_then(|b| v64(b.usage))),
            i(r.base.and_then(|b| v64(b.corrections))),
            i(Some(r.rows)),
            s(&r.content_sha256),
            tsa(r.created_at),
        ],
    )
    .map_err(|e| ExportError::state("building the export_runs row", e))
}

/// The export state of one tables root.
#[derive(Debug)]
pub struct ExportState {
    root: Url,
    runs: Vec<ExportRun>,
}

impl ExportState {
    /// Read every recorded run (none if the table does not exist yet).
    pub async fn load(root: &Url) -> Result<Self, ExportError> {
        let mut runs = Vec::new();
        if let Some(table) = read::open_table(root, EXPORT_RUNS, None).await? {
            let ctx = read::session();
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|e| ExportError::state("reading export_runs", e))?;
            let provider = table
                .table_provider()
                .await
                .map_err(|e| ExportError::state("reading export_runs", e))?;
            ctx.register_table(EXPORT_RUNS, provider)
                .map_err(|e| ExportError::state("reading export_runs", e))?;
            let batches = read::sql(
                &ctx,
                "SELECT run_id, period, period_start, period_end, format, kind, closed, \
                 usage_version, corrections_version, base_usage_version, \
                 base_corrections_version, rows, content_sha256, created_at \
                 FROM export_runs ORDER BY created_at, run_id",
            )
            .await?;
            for b in batches {
                runs.extend(rows_of(&b)?);
            }
        }
        Ok(Self {
            root: root.clone(),
            runs,
        })
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> &[ExportRun] {
        &self.runs
    }

    fn of_period(&self, p: &Period) -> impl Iterator<Item = &ExportRun> {
        let (start, end) = (p.start_micros(), p.end_micros());
        self.runs
            .iter()
            .filter(move |r| r.period_start == start && r.period_end == end)
    }

    /// The run that closed `period` (the first, if several raced).
    pub fn close_of(&self, period: &Period) -> Option<&ExportRun> {
        self.of_period(period)
            .find(|r| r.kind == RunKind::Usage && r.closed)
    }

    /// The versions adjustments of a closed `period` start from: the last sealed
    /// adjustment batch, else the close.
    pub fn adjustment_base(&self, period: &Period) -> Option<Versions> {
        self.of_period(period)
            .filter(|r| r.kind == RunKind::Adjustments && r.closed)
            .last()
            .map(|r| r.versions)
            .or_else(|| self.close_of(period).map(|r| r.versions))
    }

    /// Append `run` to the table (creating it on first use).
    pub async fn record(&mut self, run: ExportRun) -> Result<(), ExportError> {
        let url = read::table_url(&self.root, EXPORT_RUNS)?;
        if url.scheme() == "file"
            && let Ok(path) = url.to_file_path()
        {
            std::fs::create_dir_all(&path)
                .map_err(|e| ExportError::state(&format!("creating {}", path.display()), e))?;
        }
        let table = match read::open_table(&self.root, EXPORT_RUNS, None).await? {
            Some(t) => t,
            None => DeltaTableBuilder::from_url(url)
                .and_then(|b| b.build())
                .map_err(|e| ExportError::state("opening export_runs", e))?,
        };
        table
            .write(vec![to_batch(&run)?])
            .with_save_mode(SaveMode::Append)
            .with_table_name(EXPORT_RUNS)
            .await
            .map_err(|e| ExportError::state("recording the export in export_runs", e))?;
        self.runs.push(run);
        Ok(())
    }
}

fn rows_of(b: &RecordBatch) -> Result<Vec<ExportRun>, ExportError> {
    let s = |i| read::strings(b, i);
    let n = |i: usize| -> Result<Vec<Option<u64>>, ExportError> {
        let c = b.column(i);
        let vals = read::ints(b, i)?;
        Ok((0..b.num_rows())
            .map(|r| {
                if c.is_null(r) {
                    None
                } else {
                    u64::try_from(vals[r]).ok()
                }
            })
            .collect())
    };
    let (run_id, period, format, kind, sha) = (s(0)?, s(1)?, s(4)?, s(5)?, s(12)?);
    let (start, end, rows, created) = (
        read::ints(b, 2)?,
        read::ints(b, 3)?,
        read::ints(b, 11)?,
        read::ints(b, 13)?,
    );
    let (uv, cv, buv, bcv) = (n(7)?, n(8)?, n(9)?, n(10)?);
    let closed = b
        .column(6)
        .as_boolean_opt()
        .ok_or_else(|| ExportError::State("export_runs.closed is not a boolean".into()))?;
    Ok((0..b.num_rows())
        .map(|r| {
            let kind = if kind[r] == "adjustments" {
                RunKind::Adjustments
            } else {
                RunKind::Usage
            };
            ExportRun {
                run_id: run_id[r].clone(),
                period: period[r].clone(),
                period_start: start[r],
                period_end: end[r],
                format: format[r].clone(),
                kind,
                closed: closed.value(r),
                versions: Versions {
                    usage: uv[r],
                    corrections: cv[r],
                },
                base: (kind == RunKind::Adjustments).then_some(Versions {
                    usage: buv[r],
                    corrections: bcv[r],
                }),
                rows: rows[r],
                content_sha256: sha[r].clone(),
                created_at: created[r],
            }
        })
        .collect())
}

impl std::fmt::Display for ExportRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} at {} ({}, {} rows, sha256 {})",
            self.period,
            self.kind.name(),
            self.format,
            rfc3339(self.created_at),
            self.versions,
            self.rows,
            self.content_sha256
        )
    }
}
