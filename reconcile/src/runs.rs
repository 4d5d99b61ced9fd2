//! The `reconciliation_runs` and `discrepancies` tables: one row per run (period,
//! totals, verdict) and one per finding, so past reconciliations can be queried with SQL.
//! Must not compute findings (the matcher does) nor decide the verdict.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use sha2::{Digest, Sha256};
use tally_events::Timestamp;
use tally_events::arrow::DESCRIPTION_KEY;

use crate::error::ReconcileError;
use crate::matcher::Reconciliation;
use crate::tables::ReconStore;

/// Table of runs.
pub const RUNS_TABLE: &str = "reconciliation_runs";
/// Table of findings.
pub const DISCREPANCIES_TABLE: &str = "discrepancies";

fn col(name: &str, data_type: DataType, nullable: bool, doc: &str) -> Field {
    Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
        DESCRIPTION_KEY.to_owned(),
        doc.to_owned(),
    )]))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of `reconciliation_runs`.
pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col("run_id", DataType::Utf8, false, "Id of the run."),
        col("ran_at", ts(), false, "When the run happened."),
        col("provider", DataType::Utf8, false, "Provider reconciled."),
        col("period_start", ts(), false, "Period start (inclusive)."),
        col("period_end", ts(), false, "Period end (exclusive)."),
        col(
            "bucket_seconds",
            DataType::Int64,
            false,
            "Usage bucket width compared.",
        ),
        col(
            "gateway_requests",
            DataType::Int64,
            false,
            "Requests the gateway recorded (answered attempts).",
        ),
        col(
            "provider_requests",
            DataType::Int64,
            false,
            "Requests the provider reported.",
        ),
        col(
            "gateway_money_micros",
            DataType::Int64,
            false,
            "Gateway tokens priced per day and model, µ$.",
        ),
        col(
            "provider_money_micros",
            DataType::Int64,
            false,
            "Provider cost lines, credits included, µ$.",
        ),
        col("findings", DataType::Int64, false, "Findings of the run."),
        col(
            "unexplained_over_tolerance",
            DataType::Int64,
            false,
            "Unexplained findings over tolerance.",
        ),
        col(
            "passed",
            DataType::Boolean,
            false,
            "No unexplained difference over tolerance.",
        ),
    ]))
}

/// Schema of `discrepancies`.
pub fn discrepancies_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col(
            "run_id",
            DataType::Utf8,
            false,
            "Run the finding belongs to.",
        ),
        col(
            "cause",
            DataType::Utf8,
            false,
            "Attributed cause (see docs/reconciliation.md).",
        ),
        col(
            "account",
            DataType::Utf8,
            false,
            "Gateway upstream / provider account ((bypass) for foreign keys).",
        ),
        col("model", DataType::Utf8, true, "Model (gateway name)."),
        col("bucket_start", ts(), false, "Bucket (or day) start."),
        col("bucket_end", ts(), false, "Bucket (or day) end."),
        col(
            "requests",
            DataType::Int64,
            false,
            "Provider minus gateway requests.",
        ),
        col(
            "input_tokens",
            DataType::Int64,
            false,
            "Provider minus gateway input tokens.",
        ),
        col(
            "cached_input_tokens",
            DataType::Int64,
            false,
            "Provider minus gateway cached input tokens.",
        ),
        col(
            "cache_write_tokens",
            DataType::Int64,
            false,
            "Provider minus gateway cache-write tokens.",
        ),
        col(
            "output_tokens",
            DataType::Int64,
            false,
            "Provider minus gateway output tokens.",
        ),
        col(
            "money_micros",
            DataType::Int64,
            false,
            "Money of the difference, µ$.",
        ),
        col(
            "within_tolerance",
            DataType::Boolean,
            false,
            "Unexplained but within tolerance.",
        ),
        col("evidence", DataType::Utf8, false, "What shows the cause."),
    ]))
}

/// A run id: the provider, period and time of the run, hashed.
pub fn run_id(r: &Reconciliation, ran_at: Timestamp) -> String {
    let mut h = Sha256::new();
    h.update(r.provider.as_bytes());
    h.update(r.start.as_micros().to_le_bytes());
    h.update(r.end.as_micros().to_le_bytes());
    h.update(ran_at.as_micros().to_le_bytes());
    format!("rec_{}", hex::encode(&h.finalize()[..8]))
}

fn tsa(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(v).with_timezone("UTC"))
}

/// The run row and the finding rows of `r`.
pub fn batches(
    r: &Reconciliation,
    id: &str,
    ran_at: Timestamp,
) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let i64s = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v])) };
    let run = RecordBatch::try_new(
        runs_schema(),
        vec![
            Arc::new(StringArray::from(vec![id])),
            tsa(std::iter::once(ran_at.as_micros())),
            Arc::new(StringArray::from(vec![r.provider.as_str()])),
            tsa(std::iter::once(r.start.as_micros())),
            tsa(std::iter::once(r.end.as_micros())),
            i64s(r.bucket_seconds),
            i64s(r.gateway.figures.requests),
            i64s(r.provider_totals.figures.requests),
            i64s(r.gateway.money_micros),
            i64s(r.provider_totals.money_micros),
            i64s(i64::try_from(r.findings.len()).unwrap_or(i64::MAX)),
            i64s(i64::try_from(r.unexplained_over_tolerance).unwrap_or(i64::MAX)),
            Arc::new(BooleanArray::from(vec![r.unexplained_over_tolerance == 0])),
        ],
    )?;
    let f = &r.findings;
    let ints = |g: &dyn Fn(&crate::matcher::Finding) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(f.iter().map(g)))
    };
    let findings = RecordBatch::try_new(
        discrepancies_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(f.iter().map(|_| id))),
            Arc::new(StringArray::from_iter_values(
                f.iter().map(|x| x.cause.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                f.iter().map(|x| x.account.as_str()),
            )),
            Arc::new(
                f.iter()
                    .map(|x| x.model.as_deref())
                    .collect::<StringArray>(),
            ),
            tsa(f.iter().map(|x| x.bucket_start.as_micros())),
            tsa(f.iter().map(|x| x.bucket_end.as_micros())),
            ints(&|x| x.difference.requests),
            ints(&|x| x.difference.input),
            ints(&|x| x.difference.cached),
            ints(&|x| x.difference.cache_write),
            ints(&|x| x.difference.output),
            ints(&|x| x.money_micros),
            Arc::new(
                f.iter()
                    .map(|x| Some(x.within_tolerance))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(StringArray::from_iter_values(
                f.iter().map(|x| x.evidence.as_str()),
            )),
        ],
    )?;
    Ok((run, findings))
}

/// Store `r` as a new run; returns its id.
pub async fn store(store: &ReconStore, r: &Reconciliation) -> Result<String, ReconcileError> {
    let ran_at = Timestamp::now();
    let id = run_id(r, ran_at);
    let (run, findings) =
        batches(r, &id, ran_at).map_err(|e| ReconcileError::storage(RUNS_TABLE, "encoding", e))?;
    if findings.num_rows() > 0 {
        store
            .append(DISCREPANCIES_TABLE, discrepancies_schema(), vec![findings])
            .await?;
    }
    // The run row last: a run listed in `reconciliation_runs` has all its findings.
    store.append(RUNS_TABLE, runs_schema(), vec![run]).await?;
    Ok(id)
}
