//! Arrow schemas of the event tables and conversion of events to RecordBatches. The
//! column list here is the one source of truth for table layouts (docs/schema.md is
//! generated from it); column names equal the JSON field names of `model`. Must not
//! know about Parquet, Delta or storage.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::model::{CorrectionEvent, DecisionEvent, EventHeader, UsageEvent};

/// Field metadata key holding a column's description.
pub const DESCRIPTION_KEY: &str = "description";

fn col(name: &str, data_type: DataType, nullable: bool, doc: &str) -> Field {
    Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
        DESCRIPTION_KEY.to_owned(),
        doc.to_owned(),
    )]))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn labels_type() -> DataType {
    let names = map_names();
    DataType::Map(
        Arc::new(Field::new(
            names.entry,
            DataType::Struct(Fields::from(vec![
                Field::new(names.key, DataType::Utf8, false),
                Field::new(names.value, DataType::Utf8, true),
            ])),
            false,
        )),
        false,
    )
}

fn map_names() -> MapFieldNames {
    MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}

fn header_fields() -> Vec<Field> {
    vec![
        col(
            "event_id",
            DataType::Utf8,
            false,
            "Unique, time-ordered event id (UUIDv7); the idempotency key.",
        ),
        col(
            "schema_version",
            DataType::Int32,
            false,
            "Event schema version of the writer.",
        ),
        col(
            "event_type",
            DataType::Utf8,
            false,
            "decision, usage or correction.",
        ),
        col(
            "occurred_at",
            ts(),
            false,
            "When it happened (UTC, microseconds).",
        ),
        col(
            "gateway_instance",
            DataType::Utf8,
            false,
            "Enforcer instance that wrote the event.",
        ),
        col(
            "request_id",
            DataType::Utf8,
            false,
            "Request id, as returned in the x-tally-request-id header.",
        ),
        col(
            "tenant",
            DataType::Utf8,
            false,
            "Tenant of the gateway key.",
        ),
        col(
            "api_key_id",
            DataType::Utf8,
            true,
            "Id of the gateway key (never the secret).",
        ),
        col(
            "labels",
            labels_type(),
            true,
            "Labels of the key and request (team, user, project, app...).",
        ),
        col(
            "provider",
            DataType::Utf8,
            true,
            "openai, anthropic or gemini.",
        ),
        col(
            "route",
            DataType::Utf8,
            true,
            "chat, responses, completions, messages, count_tokens, embeddings, generate_content, models or other.",
        ),
        col(
            "model_requested",
            DataType::Utf8,
            true,
            "Model the client asked for.",
        ),
        col(
            "model_served",
            DataType::Utf8,
            true,
            "Model the provider reports having served.",
        ),
        col(
            "upstream_request_id",
            DataType::Utf8,
            true,
            "The provider's request id.",
        ),
    ]
}

fn schema_of(extra: Vec<Field>) -> SchemaRef {
    let mut fields = header_fields();
    fields.extend(extra);
    Arc::new(Schema::new(fields))
}

/// Schema of the `decisions` table.
pub fn decision_schema() -> SchemaRef {
    schema_of(vec![
        col(
            "outcome",
            DataType::Utf8,
            false,
            "allow, deny or shadow_deny.",
        ),
        col(
            "rule",
            DataType::Utf8,
            false,
            "Name of the rule or built-in check that decided.",
        ),
        col(
            "rule_kind",
            DataType::Utf8,
            false,
            "auth, access, rate_limit, usage_cap, validation or default.",
        ),
        col(
            "counter_key",
            DataType::Utf8,
            true,
            "Bucket the rule counted in.",
        ),
        col(
            "counter_value",
            DataType::Int64,
            true,
            "Counter value at decision time, before this request.",
        ),
        col("counter_limit", DataType::Int64, true, "The rule's limit."),
        col(
            "counter_unit",
            DataType::Utf8,
            true,
            "requests, tokens, input_tokens, output_tokens or usd_micros.",
        ),
        col(
            "window_start",
            ts(),
            true,
            "Start of the window or period counted.",
        ),
        col(
            "window_end",
            ts(),
            true,
            "End of the window or period counted.",
        ),
        col("reset_at", ts(), true, "When the counter has room again."),
        col(
            "reserved_tokens",
            DataType::Int64,
            true,
            "Tokens reserved for this request.",
        ),
        col(
            "reserved_cost_micros",
            DataType::Int64,
            true,
            "Cost reserved for this request, micro-USD.",
        ),
        col(
            "reason",
            DataType::Utf8,
            false,
            "Human-readable explanation.",
        ),
    ])
}

/// Schema of the `usage` table.
pub fn usage_schema() -> SchemaRef {
    schema_of(vec![
        col(
            "upstream",
            DataType::Utf8,
            true,
            "Named upstream the attempt went to.",
        ),
        col(
            "status_code",
            DataType::Int32,
            true,
            "HTTP status sent to the client.",
        ),
        col(
            "streamed",
            DataType::Boolean,
            false,
            "Whether the response was streamed (SSE).",
        ),
        col(
            "finish_state",
            DataType::Utf8,
            false,
            "completed, client_aborted, upstream_error, timeout, denied or cut_by_policy.",
        ),
        col(
            "input_tokens",
            DataType::Int64,
            false,
            "All input tokens, including cache reads and writes.",
        ),
        col(
            "cached_input_tokens",
            DataType::Int64,
            false,
            "Input tokens read from the provider's prompt cache.",
        ),
        col(
            "cache_write_tokens",
            DataType::Int64,
            false,
            "Input tokens written to the provider's prompt cache.",
        ),
        col(
            "output_tokens",
            DataType::Int64,
            false,
            "All output tokens, including reasoning.",
        ),
        col(
            "reasoning_tokens",
            DataType::Int64,
            false,
            "Reasoning/thinking tokens (part of output_tokens).",
        ),
        col(
            "audio_input_tokens",
            DataType::Int64,
            false,
            "Audio input tokens (part of input_tokens).",
        ),
        col(
            "audio_output_tokens",
            DataType::Int64,
            false,
            "Audio output tokens (part of output_tokens).",
        ),
        col(
            "usage_source",
            DataType::Utf8,
            false,
            "provider_reported, estimated or mixed.",
        ),
        col(
            "cost_micros",
            DataType::Int64,
            false,
            "Cost in integer micro-USD.",
        ),
        col(
            "price_version",
            DataType::Utf8,
            true,
            "Version of the price table used for cost_micros.",
        ),
        col(
            "latency_ms",
            DataType::Int64,
            false,
            "Request received to response end, ms.",
        ),
        col(
            "ttft_ms",
            DataType::Int64,
            true,
            "Request received to first response byte, ms.",
        ),
        col(
            "retry_attempt",
            DataType::Int32,
            false,
            "0 for the first attempt, 1 for the first retry...",
        ),
        col(
            "retry_of",
            DataType::Utf8,
            true,
            "request_id of the attempt this one retries.",
        ),
    ])
}

/// Schema of the `corrections` table.
pub fn correction_schema() -> SchemaRef {
    schema_of(vec![
        col(
            "corrects_event_id",
            DataType::Utf8,
            false,
            "The event this one amends.",
        ),
        col(
            "reason",
            DataType::Utf8,
            false,
            "Why the correction was made.",
        ),
        col(
            "input_tokens",
            DataType::Int64,
            true,
            "Corrected input_tokens.",
        ),
        col(
            "cached_input_tokens",
            DataType::Int64,
            true,
            "Corrected cached_input_tokens.",
        ),
        col(
            "cache_write_tokens",
            DataType::Int64,
            true,
            "Corrected cache_write_tokens.",
        ),
        col(
            "output_tokens",
            DataType::Int64,
            true,
            "Corrected output_tokens.",
        ),
        col(
            "reasoning_tokens",
            DataType::Int64,
            true,
            "Corrected reasoning_tokens.",
        ),
        col(
            "cost_micros",
            DataType::Int64,
            true,
            "Corrected cost, micro-USD.",
        ),
        col(
            "price_version",
            DataType::Utf8,
            true,
            "Price table version of the corrected cost.",
        ),
        col(
            "usage_source",
            DataType::Utf8,
            true,
            "Source of the corrected figures.",
        ),
    ])
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn opt_strings<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(it))
}

fn i64s(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(it))
}

fn opt_i64s(it: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from_iter(it))
}

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn timestamps(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(it).with_timezone("UTC"))
}

fn opt_timestamps(it: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(it).with_timezone("UTC"))
}

fn header_columns(headers: &[&EventHeader], event_type: &str) -> Result<Vec<ArrayRef>, ArrowError> {
    let h = || headers.iter().copied();
    let mut labels = MapBuilder::new(
        Some(map_names()),
        StringBuilder::new(),
        StringBuilder::new(),
    )
    .with_keys_field(Field::new("key", DataType::Utf8, false))
    .with_values_field(Field::new("value", DataType::Utf8, true));
    for header in h() {
        for (k, v) in &header.labels {
            labels.keys().append_value(k);
            labels.values().append_value(v);
        }
        labels.append(true)?;
    }
    Ok(vec![
        strings(
            h().map(|x| x.event_id.to_string())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ),
        Arc::new(Int32Array::from_iter_values(
            h().map(|x| i32::try_from(x.schema_version).unwrap_or(i32::MAX)),
        )),
        strings(h().map(|_| event_type)),
        timestamps(h().map(|x| x.occurred_at.as_micros())),
        strings(h().map(|x| x.gateway_instance.as_str())),
        strings(h().map(|x| x.request_id.as_str())),
        strings(h().map(|x| x.tenant.as_str())),
        opt_strings(h().map(|x| x.api_key_id.as_deref())),
        Arc::new(labels.finish()),
        opt_strings(h().map(|x| x.provider.map(|p| p.as_str()))),
        opt_strings(h().map(|x| x.route.map(|r| r.as_str()))),
        opt_strings(h().map(|x| x.model_requested.as_deref())),
        opt_strings(h().map(|x| x.model_served.as_deref())),
        opt_strings(h().map(|x| x.upstream_request_id.as_deref())),
    ])
}

/// Decision events as a RecordBatch with [`decision_schema`].
pub fn decisions_to_batch(events: &[DecisionEvent]) -> Result<RecordBatch, ArrowError> {
    let e = || events.iter();
    let mut cols = header_columns(&e().map(|x| &x.header).collect::<Vec<_>>(), "decision")?;
    cols.extend([
        strings(e().map(|x| x.outcome.as_str())),
        strings(e().map(|x| x.rule.as_str())),
        strings(e().map(|x| x.rule_kind.as_str())),
        opt_strings(e().map(|x| x.counter_key.as_deref())),
        opt_i64s(e().map(|x| x.counter_value)),
        opt_i64s(e().map(|x| x.counter_limit)),
        opt_strings(e().map(|x| x.counter_unit.map(|u| u.as_str()))),
        opt_timestamps(e().map(|x| x.window_start.map(|t| t.as_micros()))),
        opt_timestamps(e().map(|x| x.window_end.map(|t| t.as_micros()))),
        opt_timestamps(e().map(|x| x.reset_at.map(|t| t.as_micros()))),
        opt_i64s(e().map(|x| x.reserved_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.reserved_cost_micros)),
        strings(e().map(|x| x.reason.as_str())),
    ]);
    RecordBatch::try_new(decision_schema(), cols)
}

/// Usage events as a RecordBatch with [`usage_schema`].
pub fn usage_to_batch(events: &[UsageEvent]) -> Result<RecordBatch, ArrowError> {
    let e = || events.iter();
    let mut cols = header_columns(&e().map(|x| &x.header).collect::<Vec<_>>(), "usage")?;
    cols.extend([
        opt_strings(e().map(|x| x.upstream.as_deref())),
        Arc::new(Int32Array::from_iter(
            e().map(|x| x.status_code.map(i32::from)),
        )) as ArrayRef,
        Arc::new(BooleanArray::from_iter(e().map(|x| Some(x.streamed)))),
        strings(e().map(|x| x.finish_state.as_str())),
        i64s(e().map(|x| u64_to_i64(x.tokens.input_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.cached_input_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.cache_write_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.output_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.reasoning_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.audio_input_tokens))),
        i64s(e().map(|x| u64_to_i64(x.tokens.audio_output_tokens))),
        strings(e().map(|x| x.usage_source.as_str())),
        i64s(e().map(|x| x.cost_micros)),
        opt_strings(e().map(|x| x.price_version.as_deref())),
        i64s(e().map(|x| u64_to_i64(x.latency_ms))),
        opt_i64s(e().map(|x| x.ttft_ms.map(u64_to_i64))),
        Arc::new(Int32Array::from_iter_values(
            e().map(|x| i32::try_from(x.retry_attempt).unwrap_or(i32::MAX)),
        )),
        opt_strings(e().map(|x| x.retry_of.as_deref())),
    ]);
    RecordBatch::try_new(usage_schema(), cols)
}

/// Correction events as a RecordBatch with [`correction_schema`].
pub fn corrections_to_batch(events: &[CorrectionEvent]) -> Result<RecordBatch, ArrowError> {
    let e = || events.iter();
    let mut cols = header_columns(&e().map(|x| &x.header).collect::<Vec<_>>(), "correction")?;
    let ids: Vec<String> = e().map(|x| x.corrects_event_id.to_string()).collect();
    cols.extend([
        strings(ids.iter().map(String::as_str)),
        strings(e().map(|x| x.reason.as_str())),
        opt_i64s(e().map(|x| x.input_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.cached_input_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.cache_write_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.output_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.reasoning_tokens.map(u64_to_i64))),
        opt_i64s(e().map(|x| x.cost_micros)),
        opt_strings(e().map(|x| x.price_version.as_deref())),
        opt_strings(e().map(|x| x.usage_source.map(|u| u.as_str()))),
    ]);
    RecordBatch::try_new(correction_schema(), cols)
}

/// Name of the partition column every table carries: the UTC day of `occurred_at`.
pub const PARTITION_COLUMN: &str = "day";

/// The event tables, as the ledger writes them and queries read them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Table {
    Usage,
    Decisions,
    Corrections,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::Usage, Table::Decisions, Table::Corrections];

    /// Table name (also its directory under the tables root).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Usage => "usage",
            Table::Decisions => "decisions",
            Table::Corrections => "corrections",
        }
    }

    /// The event type stored in this table.
    pub const fn event_type(self) -> crate::model::EventType {
        match self {
            Table::Usage => crate::model::EventType::Usage,
            Table::Decisions => crate::model::EventType::Decision,
            Table::Corrections => crate::model::EventType::Correction,
        }
    }

    /// Schema of the events (without the partition column).
    pub fn event_schema(self) -> SchemaRef {
        match self {
            Table::Usage => usage_schema(),
            Table::Decisions => decision_schema(),
            Table::Corrections => correction_schema(),
        }
    }

    /// Schema of the stored table: the event schema plus the `day` partition column.
    pub fn table_schema(self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .event_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(col(
            PARTITION_COLUMN,
            DataType::Date32,
            false,
            "UTC day of occurred_at (partition column).",
        ));
        Arc::new(Schema::new(fields))
    }
}

/// Append the `day` partition column (UTC day of `occurred_at`) to an event batch.
pub fn with_day_column(table: Table, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow_array::Date32Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let at = batch
        .column_by_name("occurred_at")
        .ok_or_else(|| ArrowError::SchemaError("occurred_at missing".into()))?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            ArrowError::SchemaError("occurred_at is not a microsecond timestamp".into())
        })?;
    let days = Date32Array::from_iter_values(
        at.values()
            .iter()
            .map(|m| i32::try_from(m.div_euclid(MICROS_PER_DAY)).unwrap_or(i32::MAX)),
    );
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(days));
    RecordBatch::try_new(table.table_schema(), cols)
}
