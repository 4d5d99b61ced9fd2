//! The reconciler's own tables: rows of provider usage and cost reports as every importer
//! produces them (normalized across providers), their Arrow schemas, deterministic row
//! ids, and conversion to and from RecordBatches. Must not parse provider formats (the
//! importers do) nor touch storage (`tables` does).
//!
//! Token figures follow the gateway's conventions (docs/events.md), so a provider row and
//! a `usage` row can be compared kind by kind: `input_tokens` counts every input token
//! including cache reads and cache writes; `output_tokens` counts every output token
//! including reasoning. Money is integer micro-US-dollars (µ$); nothing is a float.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_events::Timestamp;
use tally_events::arrow::DESCRIPTION_KEY;

/// The tables the reconciler owns, next to the event tables under the tables root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconTable {
    /// Provider-reported usage, one row per provider bucket and group.
    ProviderUsage,
    /// Provider-reported costs (and credits), one row per bucket and line item.
    ProviderCosts,
}

impl ReconTable {
    /// Every reconciler table.
    pub const ALL: [ReconTable; 2] = [ReconTable::ProviderUsage, ReconTable::ProviderCosts];

    /// Table name (also its directory under the tables root and its SQL name).
    pub fn name(self) -> &'static str {
        match self {
            ReconTable::ProviderUsage => "provider_usage",
            ReconTable::ProviderCosts => "provider_costs",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            ReconTable::ProviderUsage => provider_usage_schema(),
            ReconTable::ProviderCosts => provider_costs_schema(),
        }
    }
}

/// One provider-reported usage figure: a bucket of time and a group (project, key,
/// model, batch…) as the provider grouped it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderUsageRow {
    /// `openai`, `anthropic`, `gemini` or another provider name.
    pub provider: String,
    /// Which report the row came from, e.g. `openai.usage.completions`,
    /// `anthropic.usage_report.messages`, `gcp.billing_export`, `csv.<mapping name>`.
    pub source: String,
    /// Bucket start (inclusive), UTC.
    pub bucket_start: Timestamp,
    /// Bucket end (exclusive), UTC.
    pub bucket_end: Timestamp,
    /// Provider project (OpenAI project, Anthropic workspace, Google Cloud project).
    pub project_id: Option<String>,
    /// Provider API key id (never a secret).
    pub api_key_id: Option<String>,
    /// Model name as the provider reports it (often a dated snapshot).
    pub model: Option<String>,
    /// Batch API traffic (`None` when the report does not say).
    pub batch: Option<bool>,
    /// Service tier, when reported.
    pub service_tier: Option<String>,
    /// Every input token, including cache reads and cache writes.
    pub input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cached_input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
    /// Every output token, including reasoning.
    pub output_tokens: u64,
    /// Audio input tokens (part of `input_tokens`).
    pub audio_input_tokens: u64,
    /// Audio output tokens (part of `output_tokens`).
    pub audio_output_tokens: u64,
    /// Requests the provider counted (`None` when the report has no request count).
    pub requests: Option<u64>,
}

impl ProviderUsageRow {
    /// Deterministic id: the same bucket and group always get the same id, so importing
    /// a report twice replaces rather than adds.
    pub fn row_id(&self) -> String {
        row_id(&[
            "usage",
            &self.provider,
            &self.source,
            &self.bucket_start.as_micros().to_string(),
            &self.bucket_end.as_micros().to_string(),
            opt(&self.project_id),
            opt(&self.api_key_id),
            opt(&self.model),
            match self.batch {
                None => "",
                Some(true) => "true",
                Some(false) => "false",
            },
            opt(&self.service_tier),
        ])
    }
}

/// One provider-reported cost line: a bucket (a day, for every provider we know) and a
/// line item. Credits and refunds are negative amounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCostRow {
    /// `openai`, `anthropic`, `gemini` or another provider name.
    pub provider: String,
    /// Which report the row came from, e.g. `openai.costs`, `anthropic.cost_report`.
    pub source: String,
    /// Bucket start (inclusive), UTC.
    pub bucket_start: Timestamp,
    /// Bucket end (exclusive), UTC.
    pub bucket_end: Timestamp,
    /// Provider project (OpenAI project, Anthropic workspace, Google Cloud project).
    pub project_id: Option<String>,
    /// The provider's line item / description, verbatim (e.g. `gpt-4o-2024-08-06, input`).
    pub line_item: Option<String>,
    /// Model, when the line names one.
    pub model: Option<String>,
    /// Token kind the line charges: `input`, `cached_input`, `cache_write`, `output`,
    /// or `None` (credits, fees, lines that are not per token).
    pub token_type: Option<String>,
    /// `tokens`, `credit`, `refund`, `fee`, `tax`… as the provider classifies it.
    pub cost_type: Option<String>,
    /// Amount in micro-units of `currency` (µ$ for USD); negative for credits.
    pub amount_micros: i64,
    /// ISO currency code, lower case (`usd`).
    pub currency: String,
}

impl ProviderCostRow {
    /// Deterministic id (see [`ProviderUsageRow::row_id`]).
    pub fn row_id(&self) -> String {
        row_id(&[
            "cost",
            &self.provider,
            &self.source,
            &self.bucket_start.as_micros().to_string(),
            &self.bucket_end.as_micros().to_string(),
            opt(&self.project_id),
            opt(&self.line_item),
            opt(&self.model),
            opt(&self.token_type),
            opt(&self.cost_type),
            &self.currency,
        ])
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

/// SHA-256 over the parts, each length-prefixed (so `("a","bc")` ≠ `("ab","c")`), first
/// 16 bytes in hex.
fn row_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn col(name: &str, data_type: DataType, nullable: bool, doc: &str) -> Field {
    Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
        DESCRIPTION_KEY.to_owned(),
        doc.to_owned(),
    )]))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of `provider_usage`.
pub fn provider_usage_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col(
            "row_id",
            DataType::Utf8,
            false,
            "Deterministic id of bucket + group; re-imports replace the row.",
        ),
        col(
            "provider",
            DataType::Utf8,
            false,
            "openai, anthropic, gemini or another provider.",
        ),
        col(
            "source",
            DataType::Utf8,
            false,
            "The report the row came from (e.g. openai.usage.completions).",
        ),
        col(
            "bucket_start",
            ts(),
            false,
            "Bucket start (inclusive, UTC).",
        ),
        col("bucket_end", ts(), false, "Bucket end (exclusive, UTC)."),
        col(
            "project_id",
            DataType::Utf8,
            true,
            "Provider project / workspace.",
        ),
        col("api_key_id", DataType::Utf8, true, "Provider API key id."),
        col(
            "model",
            DataType::Utf8,
            true,
            "Model as the provider reports it.",
        ),
        col(
            "batch",
            DataType::Boolean,
            true,
            "Batch API traffic, when reported.",
        ),
        col(
            "service_tier",
            DataType::Utf8,
            true,
            "Service tier, when reported.",
        ),
        col(
            "input_tokens",
            DataType::Int64,
            false,
            "All input tokens incl. cache reads and writes.",
        ),
        col(
            "cached_input_tokens",
            DataType::Int64,
            false,
            "Input tokens read from the prompt cache.",
        ),
        col(
            "cache_write_tokens",
            DataType::Int64,
            false,
            "Input tokens written to the prompt cache.",
        ),
        col(
            "output_tokens",
            DataType::Int64,
            false,
            "All output tokens incl. reasoning.",
        ),
        col(
            "audio_input_tokens",
            DataType::Int64,
            false,
            "Audio input tokens.",
        ),
        col(
            "audio_output_tokens",
            DataType::Int64,
            false,
            "Audio output tokens.",
        ),
        col(
            "requests",
            DataType::Int64,
            true,
            "Requests counted by the provider, when reported.",
        ),
        col("imported_at", ts(), false, "When the row was imported."),
    ]))
}

/// Schema of `provider_costs`.
pub fn provider_costs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        col(
            "row_id",
            DataType::Utf8,
            false,
            "Deterministic id of bucket + line; re-imports replace the row.",
        ),
        col(
            "provider",
            DataType::Utf8,
            false,
            "openai, anthropic, gemini or another provider.",
        ),
        col(
            "source",
            DataType::Utf8,
            false,
            "The report the row came from (e.g. openai.costs).",
        ),
        col(
            "bucket_start",
            ts(),
            false,
            "Bucket start (inclusive, UTC).",
        ),
        col("bucket_end", ts(), false, "Bucket end (exclusive, UTC)."),
        col(
            "project_id",
            DataType::Utf8,
            true,
            "Provider project / workspace.",
        ),
        col(
            "line_item",
            DataType::Utf8,
            true,
            "The provider's line item, verbatim.",
        ),
        col(
            "model",
            DataType::Utf8,
            true,
            "Model, when the line names one.",
        ),
        col(
            "token_type",
            DataType::Utf8,
            true,
            "input, cached_input, cache_write, output, or null.",
        ),
        col(
            "cost_type",
            DataType::Utf8,
            true,
            "tokens, credit, refund, fee... as classified by the provider.",
        ),
        col(
            "amount_micros",
            DataType::Int64,
            false,
            "Amount in micro-units of currency (µ$); negative for credits.",
        ),
        col(
            "currency",
            DataType::Utf8,
            false,
            "Currency code, lower case.",
        ),
        col("imported_at", ts(), false, "When the row was imported."),
    ]))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ts_array(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn str_array<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn opt_str_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn int_array(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values.map(i64_of)))
}

/// Rows of `provider_usage` as a RecordBatch (`imported_at` = `now`).
pub fn usage_batch(rows: &[ProviderUsageRow], now: Timestamp) -> Result<RecordBatch, ArrowError> {
    let r = rows;
    RecordBatch::try_new(
        provider_usage_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.row_id()))),
            str_array(r.iter().map(|x| x.provider.as_str())),
            str_array(r.iter().map(|x| x.source.as_str())),
            ts_array(r.iter().map(|x| x.bucket_start.as_micros())),
            ts_array(r.iter().map(|x| x.bucket_end.as_micros())),
            opt_str_array(r.iter().map(|x| x.project_id.as_deref())),
            opt_str_array(r.iter().map(|x| x.api_key_id.as_deref())),
            opt_str_array(r.iter().map(|x| x.model.as_deref())),
            Arc::new(r.iter().map(|x| x.batch).collect::<BooleanArray>()),
            opt_str_array(r.iter().map(|x| x.service_tier.as_deref())),
            int_array(r.iter().map(|x| x.input_tokens)),
            int_array(r.iter().map(|x| x.cached_input_tokens)),
            int_array(r.iter().map(|x| x.cache_write_tokens)),
            int_array(r.iter().map(|x| x.output_tokens)),
            int_array(r.iter().map(|x| x.audio_input_tokens)),
            int_array(r.iter().map(|x| x.audio_output_tokens)),
            Arc::new(
                r.iter()
                    .map(|x| x.requests.map(i64_of))
                    .collect::<Int64Array>(),
            ),
            ts_array(r.iter().map(|_| now.as_micros())),
        ],
    )
}

/// Rows of `provider_costs` as a RecordBatch (`imported_at` = `now`).
pub fn costs_batch(rows: &[ProviderCostRow], now: Timestamp) -> Result<RecordBatch, ArrowError> {
    let r = rows;
    RecordBatch::try_new(
        provider_costs_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.row_id()))),
            str_array(r.iter().map(|x| x.provider.as_str())),
            str_array(r.iter().map(|x| x.source.as_str())),
            ts_array(r.iter().map(|x| x.bucket_start.as_micros())),
            ts_array(r.iter().map(|x| x.bucket_end.as_micros())),
            opt_str_array(r.iter().map(|x| x.project_id.as_deref())),
            opt_str_array(r.iter().map(|x| x.line_item.as_deref())),
            opt_str_array(r.iter().map(|x| x.model.as_deref())),
            opt_str_array(r.iter().map(|x| x.token_type.as_deref())),
            opt_str_array(r.iter().map(|x| x.cost_type.as_deref())),
            Arc::new(Int64Array::from_iter_values(
                r.iter().map(|x| x.amount_micros),
            )),
            str_array(r.iter().map(|x| x.currency.as_str())),
            ts_array(r.iter().map(|_| now.as_micros())),
        ],
    )
}

/// Column `name` of `batch` downcast to `T`, or a schema error naming it.
fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            ArrowError::SchemaError(format!("column {name} missing or of the wrong type"))
        })
}

fn get_str(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_owned())
}

fn get_u64(a: &Int64Array, i: usize) -> u64 {
    if a.is_null(i) {
        0
    } else {
        u64::try_from(a.value(i)).unwrap_or(0)
    }
}

/// Rows of `provider_usage` read back from a batch with its schema (e.g. a query result).
pub fn usage_rows(batch: &RecordBatch) -> Result<Vec<ProviderUsageRow>, ArrowError> {
    let provider = column::<StringArray>(batch, "provider")?;
    let source = column::<StringArray>(batch, "source")?;
    let start = column::<TimestampMicrosecondArray>(batch, "bucket_start")?;
    let end = column::<TimestampMicrosecondArray>(batch, "bucket_end")?;
    let project = column::<StringArray>(batch, "project_id")?;
    let key = column::<StringArray>(batch, "api_key_id")?;
    let model = column::<StringArray>(batch, "model")?;
    let batch_flag = column::<BooleanArray>(batch, "batch")?;
    let tier = column::<StringArray>(batch, "service_tier")?;
    let input = column::<Int64Array>(batch, "input_tokens")?;
    let cached = column::<Int64Array>(batch, "cached_input_tokens")?;
    let write = column::<Int64Array>(batch, "cache_write_tokens")?;
    let output = column::<Int64Array>(batch, "output_tokens")?;
    let ain = column::<Int64Array>(batch, "audio_input_tokens")?;
    let aout = column::<Int64Array>(batch, "audio_output_tokens")?;
    let requests = column::<Int64Array>(batch, "requests")?;
    Ok((0..batch.num_rows())
        .map(|i| ProviderUsageRow {
            provider: provider.value(i).to_owned(),
            source: source.value(i).to_owned(),
            bucket_start: Timestamp::from_micros(start.value(i)),
            bucket_end: Timestamp::from_micros(end.value(i)),
            project_id: get_str(project, i),
            api_key_id: get_str(key, i),
            model: get_str(model, i),
            batch: (!batch_flag.is_null(i)).then(|| batch_flag.value(i)),
            service_tier: get_str(tier, i),
            input_tokens: get_u64(input, i),
            cached_input_tokens: get_u64(cached, i),
            cache_write_tokens: get_u64(write, i),
            output_tokens: get_u64(output, i),
            audio_input_tokens: get_u64(ain, i),
            audio_output_tokens: get_u64(aout, i),
            requests: (!requests.is_null(i)).then(|| get_u64(requests, i)),
        })
        .collect())
}

/// Rows of `provider_costs` read back from a batch with its schema.
pub fn cost_rows(batch: &RecordBatch) -> Result<Vec<ProviderCostRow>, ArrowError> {
    let provider = column::<StringArray>(batch, "provider")?;
    let source = column::<StringArray>(batch, "source")?;
    let start = column::<TimestampMicrosecondArray>(batch, "bucket_start")?;
    let end = column::<TimestampMicrosecondArray>(batch, "bucket_end")?;
    let project = column::<StringArray>(batch, "project_id")?;
    let line = column::<StringArray>(batch, "line_item")?;
    let model = column::<StringArray>(batch, "model")?;
    let token_type = column::<StringArray>(batch, "token_type")?;
    let cost_type = column::<StringArray>(batch, "cost_type")?;
    let amount = column::<Int64Array>(batch, "amount_micros")?;
    let currency = column::<StringArray>(batch, "currency")?;
    Ok((0..batch.num_rows())
        .map(|i| ProviderCostRow {
            provider: provider.value(i).to_owned(),
            source: source.value(i).to_owned(),
            bucket_start: Timestamp::from_micros(start.value(i)),
            bucket_end: Timestamp::from_micros(end.value(i)),
            project_id: get_str(project, i),
            line_item: get_str(line, i),
            model: get_str(model, i),
            token_type: get_str(token_type, i),
            cost_type: get_str(cost_type, i),
            amount_micros: amount.value(i),
            currency: currency.value(i).to_owned(),
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn usage() -> ProviderUsageRow {
        ProviderUsageRow {
            provider: "openai".into(),
            source: "openai.usage.completions".into(),
            bucket_start: Timestamp::from_micros(1_760_000_000_000_000),
            bucket_end: Timestamp::from_micros(1_760_003_600_000_000),
            project_id: Some("proj_a".into()),
            api_key_id: Some("key_1".into()),
            model: Some("gpt-4o-2024-08-06".into()),
            batch: Some(false),
            service_tier: None,
            input_tokens: 120,
            cached_input_tokens: 20,
            cache_write_tokens: 0,
            output_tokens: 40,
            audio_input_tokens: 0,
            audio_output_tokens: 0,
            requests: Some(3),
        }
    }

    #[test]
    fn row_id_depends_on_the_group_not_the_figures() {
        let a = usage();
        let mut b = a.clone();
        b.output_tokens = 41;
        assert_eq!(a.row_id(), b.row_id());
        b.model = Some("gpt-4o-mini".into());
        assert_ne!(a.row_id(), b.row_id());
        let mut c = a.clone();
        c.batch = None;
        assert_ne!(a.row_id(), c.row_id());
        // Length prefixes keep adjacent parts apart.
        let mut d = a.clone();
        d.project_id = Some("proj_ak".into());
        d.api_key_id = Some("ey_1".into());
        assert_ne!(a.row_id(), d.row_id());
    }

    #[test]
    fn usage_rows_round_trip_through_arrow() {
        let mut other = usage();
        other.batch = None;
        other.requests = None;
        other.project_id = None;
        let rows = vec![usage(), other];
        let batch = usage_batch(&rows, Timestamp::from_micros(5)).unwrap();
        assert_eq!(batch.schema(), provider_usage_schema());
        assert_eq!(usage_rows(&batch).unwrap(), rows);
    }

    #[test]
    fn cost_rows_round_trip_through_arrow() {
        let rows = vec![
            ProviderCostRow {
                provider: "openai".into(),
                source: "openai.costs".into(),
                bucket_start: Timestamp::from_micros(0),
                bucket_end: Timestamp::from_micros(86_400_000_000),
                project_id: Some("proj_a".into()),
                line_item: Some("gpt-4o-2024-08-06, input".into()),
                model: Some("gpt-4o-2024-08-06".into()),
                token_type: Some("input".into()),
                cost_type: Some("tokens".into()),
                amount_micros: 60_000,
                currency: "usd".into(),
            },
            ProviderCostRow {
                provider: "openai".into(),
                source: "openai.costs".into(),
                bucket_start: Timestamp::from_micros(0),
                bucket_end: Timestamp::from_micros(86_400_000_000),
                amount_micros: -5_000_000,
                currency: "usd".into(),
                cost_type: Some("credit".into()),
                ..Default::default()
            },
        ];
        let batch = costs_batch(&rows, Timestamp::from_micros(5)).unwrap();
        assert_eq!(cost_rows(&batch).unwrap(), rows);
        assert_ne!(rows[0].row_id(), rows[1].row_id());
    }
}
