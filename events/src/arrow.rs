//! Arrow schemas of the event tables and conversion of events to RecordBatches. The
//! column list here is the one source of truth for table layouts (docs/schema.md is
//! generated from it); column names equal the JSON field names of `model`. Must not
//! know about Parquet, Delta or storage.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::codec::{Str, WireEvent};
use crate::model::{CorrectionEvent, DecisionEvent, EventHeader, EventId, UsageEvent};

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

/// Builds a table's event batch ([`Table::event_schema`]) row by row straight from
/// [`WireEvent`]s, without owned events in between: the ledger's conversion. Rows come
/// out in the order appended (and equal those of [`usage_to_batch`] and its siblings for
/// the same events).
#[derive(Debug)]
pub struct RowsBuilder {
    table: Table,
    header: HeaderCols,
    body: Body,
    rows: usize,
}

#[derive(Debug)]
struct HeaderCols {
    event_id: StringBuilder,
    schema_version: Int32Builder,
    event_type: StringBuilder,
    occurred_at: TimestampMicrosecondBuilder,
    gateway_instance: StringBuilder,
    request_id: StringBuilder,
    tenant: StringBuilder,
    api_key_id: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    provider: StringBuilder,
    route: StringBuilder,
    model_requested: StringBuilder,
    model_served: StringBuilder,
    upstream_request_id: StringBuilder,
}

#[derive(Debug)]
enum Body {
    Usage(Box<UsageCols>),
    Decision(Box<DecisionCols>),
    Correction(Box<CorrectionCols>),
}

#[derive(Debug, Default)]
struct UsageCols {
    upstream: StringBuilder,
    status_code: Int32Builder,
    streamed: BooleanBuilder,
    finish_state: StringBuilder,
    tokens: [Int64Builder; 7],
    usage_source: StringBuilder,
    cost_micros: Int64Builder,
    price_version: StringBuilder,
    latency_ms: Int64Builder,
    ttft_ms: Int64Builder,
    retry_attempt: Int32Builder,
    retry_of: StringBuilder,
}

#[derive(Debug, Default)]
struct DecisionCols {
    outcome: StringBuilder,
    rule: StringBuilder,
    rule_kind: StringBuilder,
    counter_key: StringBuilder,
    counter_value: Int64Builder,
    counter_limit: Int64Builder,
    counter_unit: StringBuilder,
    window_start: TimestampMicrosecondBuilder,
    window_end: TimestampMicrosecondBuilder,
    reset_at: TimestampMicrosecondBuilder,
    reserved_tokens: Int64Builder,
    reserved_cost_micros: Int64Builder,
    reason: StringBuilder,
}

#[derive(Debug, Default)]
struct CorrectionCols {
    corrects_event_id: StringBuilder,
    reason: StringBuilder,
    tokens: [Int64Builder; 5],
    cost_micros: Int64Builder,
    price_version: StringBuilder,
    usage_source: StringBuilder,
}

fn labels_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(
        Some(map_names()),
        StringBuilder::new(),
        StringBuilder::new(),
    )
    .with_keys_field(Field::new("key", DataType::Utf8, false))
    .with_values_field(Field::new("value", DataType::Utf8, true))
}

fn opt_str(b: &mut StringBuilder, v: Option<&Str<'_>>) {
    match v {
        Some(s) => b.append_value(s.as_str()),
        None => b.append_null(),
    }
}

fn req_str(b: &mut StringBuilder, v: Option<&Str<'_>>) {
    b.append_value(v.map_or("", Str::as_str));
}

fn uuid_str(b: &mut StringBuilder, id: EventId) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    b.append_value(id.as_uuid().hyphenated().encode_lower(&mut buf));
}

fn finish_str(b: &mut StringBuilder) -> ArrayRef {
    Arc::new(b.finish())
}

fn finish_i64(b: &mut Int64Builder) -> ArrayRef {
    Arc::new(b.finish())
}

fn finish_ts(b: &mut TimestampMicrosecondBuilder) -> ArrayRef {
    Arc::new(b.finish().with_timezone("UTC"))
}

impl RowsBuilder {
    /// An empty builder of `table`'s rows.
    pub fn new(table: Table) -> Self {
        let body = match table {
            Table::Usage => Body::Usage(Box::default()),
            Table::Decisions => Body::Decision(Box::default()),
            Table::Corrections => Body::Correction(Box::default()),
        };
        Self {
            table,
            header: HeaderCols {
                event_id: StringBuilder::new(),
                schema_version: Int32Builder::new(),
                event_type: StringBuilder::new(),
                occurred_at: TimestampMicrosecondBuilder::new(),
                gateway_instance: StringBuilder::new(),
                request_id: StringBuilder::new(),
                tenant: StringBuilder::new(),
                api_key_id: StringBuilder::new(),
                labels: labels_builder(),
                provider: StringBuilder::new(),
                route: StringBuilder::new(),
                model_requested: StringBuilder::new(),
                model_served: StringBuilder::new(),
                upstream_request_id: StringBuilder::new(),
            },
            body,
            rows: 0,
        }
    }

    /// The table whose rows this builds.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Rows appended since the last [`RowsBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows were appended since the last [`RowsBuilder::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Append one event's row. The event must be of the table's type (the caller routes
    /// by [`WireEvent::event_type`]); fields of other types are ignored.
    pub fn append(&mut self, w: &WireEvent<'_>) -> Result<(), ArrowError> {
        let h = &mut self.header;
        uuid_str(&mut h.event_id, w.event_id());
        h.schema_version.append_value(
            w.schema_version
                .map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX)),
        );
        h.event_type.append_value(self.table.event_type().as_str());
        h.occurred_at.append_value(w.occurred_at().as_micros());
        req_str(&mut h.gateway_instance, w.gateway_instance.as_ref());
        req_str(&mut h.request_id, w.request_id.as_ref());
        req_str(&mut h.tenant, w.tenant.as_ref());
        opt_str(&mut h.api_key_id, w.api_key_id.as_ref());
        if let Some(labels) = &w.labels {
            for (k, v) in &labels.0 {
                h.labels.keys().append_value(k.as_str());
                h.labels.values().append_value(v.as_str());
            }
        }
        h.labels.append(true)?;
        match w.provider {
            Some(p) => h.provider.append_value(p.as_str()),
            None => h.provider.append_null(),
        }
        match w.route {
            Some(r) => h.route.append_value(r.as_str()),
            None => h.route.append_null(),
        }
        opt_str(&mut h.model_requested, w.model_requested.as_ref());
        opt_str(&mut h.model_served, w.model_served.as_ref());
        opt_str(&mut h.upstream_request_id, w.upstream_request_id.as_ref());
        let u = |v: Option<u64>| v.map(u64_to_i64);
        match &mut self.body {
            Body::Usage(b) => {
                opt_str(&mut b.upstream, w.upstream.as_ref());
                b.status_code.append_option(w.status_code.map(i32::from));
                b.streamed.append_value(w.streamed.unwrap_or_default());
                b.finish_state
                    .append_value(w.finish_state.map_or("other", |f| f.as_str()));
                for (col, v) in b.tokens.iter_mut().zip([
                    w.input_tokens,
                    w.cached_input_tokens,
                    w.cache_write_tokens,
                    w.output_tokens,
                    w.reasoning_tokens,
                    w.audio_input_tokens,
                    w.audio_output_tokens,
                ]) {
                    col.append_value(u64_to_i64(v.unwrap_or_default()));
                }
                b.usage_source
                    .append_value(w.usage_source.map_or("other", |s| s.as_str()));
                b.cost_micros
                    .append_value(w.cost_micros.unwrap_or_default());
                opt_str(&mut b.price_version, w.price_version.as_ref());
                b.latency_ms
                    .append_value(u64_to_i64(w.latency_ms.unwrap_or_default()));
                b.ttft_ms.append_option(u(w.ttft_ms));
                b.retry_attempt.append_value(
                    i32::try_from(w.retry_attempt.unwrap_or_default()).unwrap_or(i32::MAX),
                );
                opt_str(&mut b.retry_of, w.retry_of.as_ref());
            }
            Body::Decision(b) => {
                b.outcome
                    .append_value(w.outcome.map_or("other", |o| o.as_str()));
                req_str(&mut b.rule, w.rule.as_ref());
                b.rule_kind
                    .append_value(w.rule_kind.map_or("other", |k| k.as_str()));
                opt_str(&mut b.counter_key, w.counter_key.as_ref());
                b.counter_value.append_option(w.counter_value);
                b.counter_limit.append_option(w.counter_limit);
                match w.counter_unit {
                    Some(c) => b.counter_unit.append_value(c.as_str()),
                    None => b.counter_unit.append_null(),
                }
                b.window_start
                    .append_option(w.window_start.map(|t| t.as_micros()));
                b.window_end
                    .append_option(w.window_end.map(|t| t.as_micros()));
                b.reset_at.append_option(w.reset_at.map(|t| t.as_micros()));
                b.reserved_tokens.append_option(u(w.reserved_tokens));
                b.reserved_cost_micros.append_option(w.reserved_cost_micros);
                req_str(&mut b.reason, w.reason.as_ref());
            }
            Body::Correction(b) => {
                uuid_str(
                    &mut b.corrects_event_id,
                    w.corrects_event_id
                        .unwrap_or_else(|| EventId::from(uuid::Uuid::nil())),
                );
                req_str(&mut b.reason, w.reason.as_ref());
                for (col, v) in b.tokens.iter_mut().zip([
                    w.input_tokens,
                    w.cached_input_tokens,
                    w.cache_write_tokens,
                    w.output_tokens,
                    w.reasoning_tokens,
                ]) {
                    col.append_option(u(v));
                }
                b.cost_micros.append_option(w.cost_micros);
                opt_str(&mut b.price_version, w.price_version.as_ref());
                match w.usage_source {
                    Some(s) => b.usage_source.append_value(s.as_str()),
                    None => b.usage_source.append_null(),
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows appended so far as a batch with [`Table::event_schema`]; the builder is
    /// empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let h = &mut self.header;
        let mut cols: Vec<ArrayRef> = vec![
            finish_str(&mut h.event_id),
            Arc::new(h.schema_version.finish()),
            finish_str(&mut h.event_type),
            finish_ts(&mut h.occurred_at),
            finish_str(&mut h.gateway_instance),
            finish_str(&mut h.request_id),
            finish_str(&mut h.tenant),
            finish_str(&mut h.api_key_id),
            Arc::new(h.labels.finish()),
            finish_str(&mut h.provider),
            finish_str(&mut h.route),
            finish_str(&mut h.model_requested),
            finish_str(&mut h.model_served),
            finish_str(&mut h.upstream_request_id),
        ];
        match &mut self.body {
            Body::Usage(b) => {
                cols.extend([
                    finish_str(&mut b.upstream),
                    Arc::new(b.status_code.finish()) as ArrayRef,
                    Arc::new(b.streamed.finish()),
                    finish_str(&mut b.finish_state),
                ]);
                cols.extend(b.tokens.iter_mut().map(finish_i64));
                cols.extend([
                    finish_str(&mut b.usage_source),
                    finish_i64(&mut b.cost_micros),
                    finish_str(&mut b.price_version),
                    finish_i64(&mut b.latency_ms),
                    finish_i64(&mut b.ttft_ms),
                    Arc::new(b.retry_attempt.finish()),
                    finish_str(&mut b.retry_of),
                ]);
            }
            Body::Decision(b) => cols.extend([
                finish_str(&mut b.outcome),
                finish_str(&mut b.rule),
                finish_str(&mut b.rule_kind),
                finish_str(&mut b.counter_key),
                finish_i64(&mut b.counter_value),
                finish_i64(&mut b.counter_limit),
                finish_str(&mut b.counter_unit),
                finish_ts(&mut b.window_start),
                finish_ts(&mut b.window_end),
                finish_ts(&mut b.reset_at),
                finish_i64(&mut b.reserved_tokens),
                finish_i64(&mut b.reserved_cost_micros),
                finish_str(&mut b.reason),
            ]),
            Body::Correction(b) => {
                cols.extend([
                    finish_str(&mut b.corrects_event_id),
                    finish_str(&mut b.reason),
                ]);
                cols.extend(b.tokens.iter_mut().map(finish_i64));
                cols.extend([
                    finish_i64(&mut b.cost_micros),
                    finish_str(&mut b.price_version),
                    finish_str(&mut b.usage_source),
                ]);
            }
        }
        RecordBatch::try_new(self.table.event_schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, decode_wire, encode};
    use crate::model::{Event, EventHeader, FinishState, Outcome, RuleKind, TokenCounts};
    use crate::{CorrectionEvent, CounterUnit, DecisionEvent, Provider, Timestamp, UsageSource};

    fn header(i: i64) -> EventHeader {
        let mut h = EventHeader::new("gw-1", &format!("req-{i}"), "acme");
        h.occurred_at = Timestamp::from_micros(1_764_064_800_123_456 + i);
        if i % 2 == 0 {
            h.api_key_id = Some("key-a".into());
            h.labels = [("team", "search"), ("app", "bo\"t")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            h.provider = Some(Provider::Anthropic);
            h.model_served = Some("claude".into());
        }
        h
    }

    fn events() -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..6 {
            out.push(Event::Usage(UsageEvent {
                header: header(i),
                upstream: (i % 3 == 0).then(|| "main".into()),
                status_code: Some(200),
                streamed: i % 2 == 1,
                finish_state: FinishState::Completed,
                tokens: TokenCounts {
                    input_tokens: 10 + i as u64,
                    output_tokens: 5,
                    audio_output_tokens: 1,
                    ..TokenCounts::default()
                },
                usage_source: UsageSource::Mixed,
                cost_micros: 77 * i,
                price_version: None,
                latency_ms: 12,
                ttft_ms: (i % 2 == 0).then_some(3),
                retry_attempt: 1,
                retry_of: Some("req-x".into()),
            }));
            let mut d = DecisionEvent::new(
                header(i),
                Outcome::ShadowDeny,
                "rule-1",
                RuleKind::UsageCap,
                "a reason".into(),
            );
            if i % 2 == 0 {
                d.counter_unit = Some(CounterUnit::Tokens);
                d.counter_value = Some(5);
                d.window_end = Some(Timestamp::from_micros(99));
                d.reserved_tokens = Some(7);
            }
            out.push(Event::Decision(d));
            out.push(Event::Correction(CorrectionEvent {
                header: header(i),
                corrects_event_id: EventId::new(),
                reason: "fix".into(),
                input_tokens: (i % 2 == 0).then_some(4),
                cached_input_tokens: None,
                cache_write_tokens: None,
                output_tokens: Some(2),
                reasoning_tokens: None,
                cost_micros: Some(-3),
                price_version: Some("p".into()),
                usage_source: (i % 2 == 1).then_some(UsageSource::Estimated),
            }));
        }
        out
    }

    #[test]
    fn rows_builder_matches_the_batch_of_decoded_events() {
        let payloads: Vec<Vec<u8>> = events().iter().map(encode).collect();
        for table in Table::ALL {
            let mut builder = RowsBuilder::new(table);
            let mut owned = Vec::new();
            for p in &payloads {
                let decoded = decode_wire(p).map_err(|e| e.to_string());
                let Ok(crate::codec::Decoded::Wire(w)) = decoded else {
                    panic!("not read by the fast reader: {decoded:?}");
                };
                if w.event_type() == table.event_type() {
                    assert!(builder.append(&w).is_ok());
                    owned.push(decode(p).map_err(|e| e.to_string()));
                }
            }
            assert_eq!(builder.len(), 6);
            let built = builder.finish().map_err(|e| e.to_string());
            let owned: Vec<Event> = owned.into_iter().flatten().collect();
            let expected = match table {
                Table::Usage => usage_to_batch(
                    &owned
                        .into_iter()
                        .filter_map(|e| match e {
                            Event::Usage(u) => Some(u),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                Table::Decisions => decisions_to_batch(
                    &owned
                        .into_iter()
                        .filter_map(|e| match e {
                            Event::Decision(d) => Some(d),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                Table::Corrections => corrections_to_batch(
                    &owned
                        .into_iter()
                        .filter_map(|e| match e {
                            Event::Correction(c) => Some(c),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            .map_err(|e| e.to_string());
            assert_eq!(built, expected, "{table:?}");
            assert!(builder.is_empty());
            // The wire view of an owned event builds the same row.
            let again: Vec<Event> = events()
                .into_iter()
                .filter(|e| e.event_type() == table.event_type())
                .collect();
            for e in &again {
                assert!(builder.append(&WireEvent::from_event(e)).is_ok());
            }
            assert_eq!(builder.finish().map(|b| b.num_rows()).ok(), Some(6));
        }
    }

    #[test]
    fn wire_decoding_agrees_with_the_model_and_keeps_the_error_codes() {
        for e in events() {
            let bytes = encode(&e);
            assert_eq!(decode(&bytes).ok(), Some(e.clone()));
            let direct: Result<Event, _> = serde_json::from_slice(&bytes);
            assert_eq!(direct.ok(), Some(e));
        }
        // Repeated label keys: the last one wins, as in the model's map.
        let p = br#"{"event_type":"decision","event_id":"01a22ad4-afb6-71d2-b7a9-0d39505a88e8","schema_version":1,"occurred_at":"2026-11-01T00:00:00.5+01:00","gateway_instance":"g","request_id":"r","tenant":"t","labels":{"b":"1","a":"2","b":"3"},"outcome":"allow","rule":"x","rule_kind":"auth","reason":"\u00e9","future":[1,{"a":null}]}"#;
        let Ok(Event::Decision(d)) = decode(p) else {
            panic!("{:?}", decode(p))
        };
        assert_eq!(
            d.header.labels.into_iter().collect::<Vec<_>>(),
            vec![("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert_eq!(d.reason, "é");
        assert_eq!(
            d.header.occurred_at,
            Timestamp::parse("2026-10-31T23:00:00.5Z").unwrap_or_default()
        );
        // A field of another event type with a value of a foreign type is ignored (the
        // full model decides).
        let p = br#"{"event_type":"decision","event_id":"01a22ad4-afb6-71d2-b7a9-0d39505a88e8","schema_version":1,"occurred_at":"2026-11-01T00:00:00Z","gateway_instance":"g","request_id":"r","tenant":"t","outcome":"allow","rule":"x","rule_kind":"auth","reason":"r","streamed":"yes"}"#;
        assert!(matches!(
            decode_wire(p),
            Ok(crate::codec::Decoded::Model(_))
        ));
        let missing = br#"{"event_type":"usage","event_id":"01a22ad4-afb6-71d2-b7a9-0d39505a88e8","schema_version":1,"occurred_at":"2026-11-01T00:00:00Z","gateway_instance":"g","request_id":"r","tenant":"t"}"#;
        assert_eq!(
            decode(missing).err().map(|e| e.code()),
            Some("event.decode")
        );
        let unknown = br#"{"event_type":"telemetry","streamed":"yes"}"#;
        assert_eq!(
            decode(unknown).err().map(|e| e.code()),
            Some("event.unknown_type")
        );
    }
}
