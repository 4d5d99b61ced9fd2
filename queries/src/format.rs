//! Output formats of query results: an aligned text table, CSV, JSON lines, a JSON
//! array, Parquet and the Arrow IPC stream format. Owns the encoding of record batches to
//! bytes, incrementally (batch by batch) so results stream; must not run queries or know
//! about HTTP.
//!
//! JSON: `json` is JSON lines (one object per row, every column present, nulls as
//! `null`); `json-array` is one array of those objects. Timestamps are RFC 3339 strings,
//! decimals numbers, `labels` an object. CSV has a header row; nested columns (`labels`)
//! are written as JSON text.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::csv::WriterBuilder as CsvWriterBuilder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::{EncoderOptions, JsonArray, LineDelimited, make_encoder};
use arrow::json::{Writer as JsonWriter, WriterBuilder as JsonWriterBuilder};
use datafusion::execution::SendableRecordBatchStream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use parquet::arrow::ArrowWriter;

use crate::error::QueryError;

/// How to write a result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Format {
    /// Aligned text table for people (buffers the whole result).
    Table,
    /// CSV with a header row.
    Csv,
    /// JSON lines: one object per row.
    Json,
    /// One JSON array of row objects.
    JsonArray,
    /// A Parquet file.
    Parquet,
    /// The Arrow IPC stream format.
    ArrowIpc,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 6] = [
        Format::Table,
        Format::Csv,
        Format::Json,
        Format::JsonArray,
        Format::Parquet,
        Format::ArrowIpc,
    ];

    /// The name used by `--format`.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::JsonArray => "json-array",
            Format::Parquet => "parquet",
            Format::ArrowIpc => "arrow",
        }
    }

    /// The media type of the format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/x-ndjson",
            Format::JsonArray => "application/json",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::ArrowIpc => "application/vnd.apache.arrow.stream",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "text" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" | "jsonl" | "ndjson" => Ok(Format::Json),
            "json-array" | "json_array" => Ok(Format::JsonArray),
            "parquet" => Ok(Format::Parquet),
            "arrow" | "ipc" | "arrow-ipc" => Ok(Format::ArrowIpc),
            other => Err(QueryError::BadRequest(format!(
                "unknown output format `{other}`; use one of table, csv, json, json-array, parquet, arrow"
            ))),
        }
    }
}

/// A `Write` into a shared buffer that the encoder drains after each batch.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock())
    }
}

enum Inner {
    Table(Vec<RecordBatch>),
    Csv(Option<arrow::csv::Writer<SharedBuf>>),
    Json(JsonWriter<SharedBuf, LineDelimited>),
    JsonArray(JsonWriter<SharedBuf, JsonArray>),
    Parquet(ArrowWriter<SharedBuf>),
    Ipc(StreamWriter<SharedBuf>),
}

/// Encodes batches of one schema into a format, incrementally: feed batches with
/// [`Encoder::write`], take the bytes produced so far with [`Encoder::take`], end with
/// [`Encoder::finish`].
pub struct Encoder {
    format: Format,
    schema: SchemaRef,
    buf: SharedBuf,
    inner: Inner,
    rows: u64,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish()
    }
}

fn json_builder() -> JsonWriterBuilder {
    JsonWriterBuilder::new().with_explicit_nulls(true)
}

impl Encoder {
    pub fn new(format: Format, schema: SchemaRef) -> Result<Self, QueryError> {
        let buf = SharedBuf::default();
        let inner = match format {
            Format::Table => Inner::Table(Vec::new()),
            Format::Csv => Inner::Csv(None),
            Format::Json => Inner::Json(json_builder().build::<_, LineDelimited>(buf.clone())),
            Format::JsonArray => {
                Inner::JsonArray(json_builder().build::<_, JsonArray>(buf.clone()))
            }
            Format::Parquet => Inner::Parquet(
                ArrowWriter::try_new(buf.clone(), schema.clone(), None)
                    .map_err(|e| QueryError::Output(e.to_string()))?,
            ),
            Format::ArrowIpc => Inner::Ipc(StreamWriter::try_new(buf.clone(), &schema)?),
        };
        Ok(Self {
            format,
            schema,
            buf,
            inner,
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Encode one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Table(batches) => batches.push(batch.clone()),
            Inner::Csv(w) => {
                let w = w.get_or_insert_with(|| {
                    CsvWriterBuilder::new()
                        .with_header(true)
                        .build(self.buf.clone())
                });
                w.write(&flatten_nested(batch)?)?;
            }
            Inner::Json(w) => w.write(batch)?,
            Inner::JsonArray(w) => w.write(batch)?,
            Inner::Parquet(w) => w
                .write(batch)
                .map_err(|e| QueryError::Output(e.to_string()))?,
            Inner::Ipc(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// The bytes encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        self.buf.take()
    }

    /// End the output; returns the remaining bytes.
    pub fn finish(self) -> Result<Vec<u8>, QueryError> {
        match self.inner {
            Inner::Table(batches) => {
                let table =
                    arrow::util::pretty::pretty_format_batches_with_schema(self.schema, &batches)?;
                let mut out = self.buf.take();
                out.extend_from_slice(format!("{table}\n").as_bytes());
                return Ok(out);
            }
            Inner::Csv(w) => {
                if w.is_none() {
                    // No rows: still write the header.
                    let mut w = CsvWriterBuilder::new()
                        .with_header(true)
                        .build(self.buf.clone());
                    w.write(&flatten_nested(&RecordBatch::new_empty(
                        self.schema.clone(),
                    ))?)?;
                }
            }
            Inner::Json(mut w) => w.finish()?,
            Inner::JsonArray(mut w) => w.finish()?,
            Inner::Parquet(w) => {
                w.close().map_err(|e| QueryError::Output(e.to_string()))?;
            }
            Inner::Ipc(mut w) => w.finish()?,
        }
        Ok(self.buf.take())
    }
}

/// Write a whole result stream to `out` in `format`; returns the number of rows.
pub async fn write_stream<W: Write>(
    format: Format,
    mut stream: SendableRecordBatchStream,
    mut out: W,
) -> Result<u64, QueryError> {
    let mut enc = Encoder::new(format, stream.schema())?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(QueryError::from)?;
        enc.write(&batch)?;
        out.write_all(&enc.take())?;
    }
    let rows = enc.rows();
    out.write_all(&enc.finish()?)?;
    out.flush()?;
    Ok(rows)
}

/// Write collected batches to `out` in `format`; returns the number of rows.
pub fn write_batches<W: Write>(
    format: Format,
    schema: SchemaRef,
    batches: &[RecordBatch],
    mut out: W,
) -> Result<u64, QueryError> {
    let mut enc = Encoder::new(format, schema)?;
    for b in batches {
        enc.write(b)?;
        out.write_all(&enc.take())?;
    }
    let rows = enc.rows();
    out.write_all(&enc.finish()?)?;
    out.flush()?;
    Ok(rows)
}

/// The rows of a batch as JSON objects separated by commas (no brackets): the body of
/// a JSON array, for callers that frame the array themselves.
pub(crate) fn json_rows(batch: &RecordBatch) -> Result<Vec<u8>, QueryError> {
    let mut lines = Vec::new();
    {
        let mut w = json_builder().build::<_, LineDelimited>(&mut lines);
        w.write(batch)?;
        w.finish()?;
    }
    // JSON text never holds a raw newline inside a value, so newlines separate rows.
    while lines.last() == Some(&b'\n') {
        lines.pop();
    }
    for b in lines.iter_mut() {
        if *b == b'\n' {
            *b = b',';
        }
    }
    Ok(lines)
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Map(_, _)
            | DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
    )
}

/// The schema [`flatten_nested`] produces.
pub(crate) fn flatten_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if is_nested(f.data_type()) {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
    )
}

/// Replace nested columns (which CSV and the Postgres text format cannot hold) by their
/// JSON text.
pub(crate) fn flatten_nested(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_nested(f.data_type())) {
        return Ok(batch.clone());
    }
    let options = EncoderOptions::default();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !is_nested(field.data_type()) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let mut encoder = make_encoder(field, column.as_ref(), &options)?;
        let mut strings = StringBuilder::new();
        let mut buf = Vec::new();
        for i in 0..column.len() {
            if encoder.is_null(i) {
                strings.append_null();
            } else {
                buf.clear();
                encoder.encode(i, &mut buf);
                strings.append_value(String::from_utf8_lossy(&buf));
            }
        }
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(Arc::new(strings.finish()));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().ok(), Some(f));
        }
        assert!("xml".parse::<Format>().is_err());
    }
}
