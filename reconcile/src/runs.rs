//! The `reconciliation_runs` and `discrepancies` tables: one row per run (period,
//! totals, verdict) and one per finding, so past reconciliations can be queried with SQL.
//! Must not compute findings (the matcher does) nor decide the verdict.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
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

/// A stored run, as read back from `reconciliation_runs` and `discrepancies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRun {
    pub run_id: String,
    pub ran_at: Timestamp,
    pub provider: String,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub bucket_seconds: i64,
    pub gateway_requests: i64,
    pub provider_requests: i64,
    pub gateway_money_micros: i64,
    pub provider_money_micros: i64,
    pub findings: i64,
    pub unexplained_over_tolerance: i64,
    pub passed: bool,
    /// Its rows of `discrepancies`, in stored order.
    pub discrepancies: Vec<StoredDiscrepancy>,
}

/// One row of `discrepancies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDiscrepancy {
    pub cause: String,
    pub account: String,
    pub model: Option<String>,
    pub bucket_start: Timestamp,
    pub bucket_end: Timestamp,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub money_micros: i64,
    pub within_tolerance: bool,
    pub evidence: String,
}

/// Column access by name over a stored batch, whatever physical types the Delta reader
/// hands back (string views, timestamps in any unit).
struct Columns<'a> {
    batch: &'a RecordBatch,
    table: &'static str,
}

impl Columns<'_> {
    fn column(&self, name: &str, to: &DataType) -> Result<ArrayRef, ReconcileError> {
        let c = self.batch.column_by_name(name).ok_or_else(|| {
            ReconcileError::storage(self.table, "reading", format!("column {name} missing"))
        })?;
        let c = match (c.data_type(), to) {
            (DataType::Timestamp(..), DataType::Int64) => {
                cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .map_err(|e| ReconcileError::storage(self.table, "reading", e))?
            }
            _ => Arc::clone(c),
        };
        cast(&c, to).map_err(|e| ReconcileError::storage(self.table, "reading", e))
    }

    fn strings(&self, name: &str) -> Result<Vec<Option<String>>, ReconcileError> {
        let c = self.column(name, &DataType::Utf8)?;
        let a = c.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            ReconcileError::storage(self.table, "reading", format!("{name} is not text"))
        })?;
        Ok((0..a.len())
            .map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned()))
            .collect())
    }

    fn ints(&self, name: &str) -> Result<Vec<i64>, ReconcileError> {
        let c = self.column(name, &DataType::Int64)?;
        let a = c.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
            ReconcileError::storage(self.table, "reading", format!("{name} is not a number"))
        })?;
        Ok((0..a.len()).map(|i| a.value(i)).collect())
    }

    fn bools(&self, name: &str) -> Result<Vec<bool>, ReconcileError> {
        let c = self.column(name, &DataType::Boolean)?;
        let a = c.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
            ReconcileError::storage(self.table, "reading", format!("{name} is not a boolean"))
        })?;
        Ok((0..a.len()).map(|i| a.value(i)).collect())
    }
}

/// Every stored run (with its findings), oldest first.
pub async fn load_all(store: &ReconStore) -> Result<Vec<StoredRun>, ReconcileError> {
    let ts = Timestamp::from_micros;
    let mut findings: HashMap<String, Vec<StoredDiscrepancy>> = HashMap::new();
    for batch in store.read(DISCREPANCIES_TABLE).await? {
        let c = Columns {
            batch: &batch,
            table: DISCREPANCIES_TABLE,
        };
        let (run, cause, account, model, evidence) = (
            c.strings("run_id")?,
            c.strings("cause")?,
            c.strings("account")?,
            c.strings("model")?,
            c.strings("evidence")?,
        );
        let (start, end) = (c.ints("bucket_start")?, c.ints("bucket_end")?);
        let ints: Vec<Vec<i64>> = [
            "requests",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "money_micros",
        ]
        .iter()
        .map(|n| c.ints(n))
        .collect::<Result<_, _>>()?;
        let within = c.bools("within_tolerance")?;
        for i in 0..batch.num_rows() {
            findings
                .entry(run[i].clone().unwrap_or_default())
                .or_default()
                .push(StoredDiscrepancy {
                    cause: cause[i].clone().unwrap_or_default(),
                    account: account[i].clone().unwrap_or_default(),
                    model: model[i].clone(),
                    bucket_start: ts(start[i]),
                    bucket_end: ts(end[i]),
                    requests: ints[0][i],
                    input_tokens: ints[1][i],
                    cached_input_tokens: ints[2][i],
                    cache_write_tokens: ints[3][i],
                    output_tokens: ints[4][i],
                    money_micros: ints[5][i],
                    within_tolerance: within[i],
                    evidence: evidence[i].clone().unwrap_or_default(),
                });
        }
    }
    let mut runs = Vec::new();
    for batch in store.read(RUNS_TABLE).await? {
        let c = Columns {
            batch: &batch,
            table: RUNS_TABLE,
        };
        let (id, provider) = (c.strings("run_id")?, c.strings("provider")?);
        let ints: Vec<Vec<i64>> = [
            "ran_at",
            "period_start",
            "period_end",
            "bucket_seconds",
            "gateway_requests",
            "provider_requests",
            "gateway_money_micros",
            "provider_money_micros",
            "findings",
            "unexplained_over_tolerance",
        ]
        .iter()
        .map(|n| c.ints(n))
        .collect::<Result<_, _>>()?;
        let passed = c.bools("passed")?;
        for i in 0..batch.num_rows() {
            let run_id = id[i].clone().unwrap_or_default();
            runs.push(StoredRun {
                discrepancies: findings.remove(&run_id).unwrap_or_default(),
                run_id,
                ran_at: ts(ints[0][i]),
                provider: provider[i].clone().unwrap_or_default(),
                period_start: ts(ints[1][i]),
                period_end: ts(ints[2][i]),
                bucket_seconds: ints[3][i],
                gateway_requests: ints[4][i],
                provider_requests: ints[5][i],
                gateway_money_micros: ints[6][i],
                provider_money_micros: ints[7][i],
                findings: ints[8][i],
                unexplained_over_tolerance: ints[9][i],
                passed: passed[i],
            });
        }
    }
    runs.sort_by(|a, b| (a.ran_at, &a.run_id).cmp(&(b.ran_at, &b.run_id)));
    Ok(runs)
}

/// The stored run `run_id`, if any.
pub async fn load(store: &ReconStore, run_id: &str) -> Result<Option<StoredRun>, ReconcileError> {
    Ok(load_all(store)
        .await?
        .into_iter()
        .find(|r| r.run_id == run_id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::figures::Figures;
    use crate::matcher::{Cause, Finding, Totals};

    #[tokio::test]
    async fn a_stored_run_reads_back_as_it_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = ReconStore::open(&dir.path().to_string_lossy(), []).unwrap();
        let t = Timestamp::from_micros;
        let finding = |cause, model: Option<&str>, money| Finding {
            cause,
            account: "openai".into(),
            model: model.map(str::to_owned),
            bucket_start: t(3_600_000_000),
            bucket_end: t(7_200_000_000),
            difference: Figures {
                requests: 1,
                input: -7,
                output: 392,
                ..Figures::default()
            },
            money_micros: money,
            evidence: "why, with | and \"quotes\"".into(),
            within_tolerance: false,
        };
        let r = Reconciliation {
            provider: "openai".into(),
            start: t(0),
            end: t(86_400_000_000),
            bucket_seconds: 3600,
            gateway: Totals {
                figures: Figures {
                    requests: 5,
                    ..Figures::default()
                },
                money_micros: 1096,
            },
            gateway_recorded_micros: 1096,
            provider_totals: Totals {
                figures: Figures {
                    requests: 6,
                    ..Figures::default()
                },
                money_micros: -1_494_781,
            },
            money_difference_micros: -1_495_877,
            findings: vec![
                finding(Cause::AbortedStreamBilled, Some("gpt-4o"), 3903),
                finding(Cause::ProviderCredit, None, -1_500_000),
            ],
            unexplained_over_tolerance: 0,
            cells: 3,
        };
        let id = store(&db, &r).await.unwrap();
        let back = load(&db, &id).await.unwrap().expect("stored run");
        assert_eq!(back.run_id, id);
        assert_eq!(
            (back.gateway_requests, back.provider_requests, back.findings),
            (5, 6, 2)
        );
        assert_eq!(back.provider_money_micros, -1_494_781);
        assert!(back.passed);
        assert_eq!(back.period_end, t(86_400_000_000));
        assert_eq!(back.discrepancies.len(), 2);
        let d = &back.discrepancies[0];
        assert_eq!(d.cause, "aborted_stream_billed");
        assert_eq!(
            (d.input_tokens, d.output_tokens, d.money_micros),
            (-7, 392, 3903)
        );
        assert_eq!(d.bucket_start, t(3_600_000_000));
        assert_eq!(d.evidence, "why, with | and \"quotes\"");
        assert_eq!(back.discrepancies[1].model, None);
        assert!(load(&db, "rec_none").await.unwrap().is_none());
        assert_eq!(load_all(&db).await.unwrap().len(), 1);
    }
}
