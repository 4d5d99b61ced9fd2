//! Output formats round-trip: what is written reads back as the same data.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tally_queries::{Format, Principal, write_batches, write_stream};

use crate::fixtures::*;
use crate::helpers::*;

const SQL: &str = "SELECT request_id, tenant, occurred_at, input_tokens, cost_micros, streamed, status_code, model_served, labels, day FROM usage ORDER BY request_id";

async fn result() -> (tempfile::TempDir, RecordBatch) {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let b = e.collect(SQL, &Principal::Admin).await.unwrap();
    let merged = concat_batches(&b[0].schema(), &b).unwrap();
    assert_eq!(merged.num_rows(), 8);
    (dir, merged)
}

fn encode(format: Format, b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let n = write_batches(format, b.schema(), std::slice::from_ref(b), &mut out).unwrap();
    assert_eq!(n, b.num_rows() as u64);
    out
}

fn same_columns(a: &RecordBatch, b: &RecordBatch, skip: &[&str]) {
    assert_eq!(a.num_rows(), b.num_rows());
    for f in a.schema().fields() {
        if skip.contains(&f.name().as_str()) {
            continue;
        }
        let x = a.column_by_name(f.name()).unwrap();
        let y = b.column_by_name(f.name()).unwrap();
        assert_eq!(x.to_data(), y.to_data(), "column {}", f.name());
    }
}

#[tokio::test]
async fn parquet_and_arrow_ipc_round_trip_exactly() {
    let (_dir, b) = result().await;
    let parquet = encode(Format::Parquet, &b);
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(parquet))
        .unwrap()
        .build()
        .unwrap();
    let back: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
    let back = concat_batches(&back[0].schema(), &back).unwrap();
    same_columns(&b, &back, &[]);

    let ipc = encode(Format::ArrowIpc, &b);
    let reader = StreamReader::try_new(Cursor::new(ipc), None).unwrap();
    let back: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
    assert_eq!(back[0].schema(), b.schema());
    same_columns(&b, &concat_batches(&back[0].schema(), &back).unwrap(), &[]);
}

#[tokio::test]
async fn csv_round_trips_with_labels_as_json_text() {
    let (_dir, b) = result().await;
    let csv = encode(Format::Csv, &b);
    let text = String::from_utf8(csv.clone()).unwrap();
    assert!(text.starts_with("request_id,tenant,occurred_at,"), "{text}");
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| {
            f.as_ref()
                .clone()
                .with_metadata(Default::default())
                .with_nullable(true)
        })
        .collect();
    let labels = fields.iter().position(|f| f.name() == "labels").unwrap();
    fields[labels] = Field::new("labels", DataType::Utf8, true);
    let schema = Arc::new(Schema::new(fields));
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(Cursor::new(csv))
        .unwrap();
    let back: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
    let back = concat_batches(&back[0].schema(), &back).unwrap();
    same_columns(&b, &back, &["labels", "model_served"]);
    let labels = back.column_by_name("labels").unwrap().as_string::<i32>();
    assert_eq!(labels.value(0), r#"{"team":"globex-team"}"#);
    // Nulls stay empty.
    let served = back.column_by_name("model_served").unwrap();
    assert_eq!(served.null_count(), 1);
}

#[tokio::test]
async fn json_lines_and_json_array_carry_every_column() {
    let (_dir, b) = result().await;
    let lines = String::from_utf8(encode(Format::Json, &b)).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0]["request_id"], "g-1");
    assert_eq!(rows[0]["labels"]["team"], "globex-team");
    assert_eq!(rows[0]["cost_micros"], 5_000);
    assert_eq!(rows[0]["streamed"], false);
    assert!(rows[0]["occurred_at"].as_str().unwrap().ends_with('Z'));
    // Explicit nulls: every column is present in every row.
    let denied = rows.iter().find(|r| r["request_id"] == "req-2").unwrap();
    assert!(denied.as_object().unwrap().contains_key("model_served"));
    assert!(denied["model_served"].is_null());

    let array: serde_json::Value = serde_json::from_slice(&encode(Format::JsonArray, &b)).unwrap();
    assert_eq!(array.as_array().unwrap().len(), 8);
    assert_eq!(array[7]["request_id"], "req-5");
}

#[tokio::test]
async fn table_is_readable_and_empty_results_are_well_formed() {
    let (_dir, b) = result().await;
    let table = String::from_utf8(encode(Format::Table, &b)).unwrap();
    assert!(table.contains("| request_id"), "{table}");
    assert!(table.contains("req-3-r1"), "{table}");

    let empty = RecordBatch::new_empty(b.schema());
    let write = |f: Format| {
        let mut out = Vec::new();
        write_batches(f, b.schema(), &[], &mut out).unwrap();
        out
    };
    let _ = empty;
    assert_eq!(String::from_utf8(write(Format::JsonArray)).unwrap(), "[]");
    assert!(write(Format::Json).is_empty());
    let csv = String::from_utf8(write(Format::Csv)).unwrap();
    assert!(csv.starts_with("request_id,tenant,"), "{csv}");
    assert_eq!(csv.lines().count(), 1);
    let reader = StreamReader::try_new(Cursor::new(write(Format::ArrowIpc)), None).unwrap();
    assert_eq!(reader.schema(), b.schema());
    assert_eq!(reader.count(), 0);
    let pq = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(write(Format::Parquet)))
        .unwrap();
    assert_eq!(pq.schema().fields().len(), b.schema().fields().len());
    assert!(
        String::from_utf8(write(Format::Table))
            .unwrap()
            .contains("request_id")
    );
}

#[tokio::test]
async fn streams_write_incrementally() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let stream = e.execute(SQL, &acme()).await.unwrap();
    let mut out = Vec::new();
    let n = write_stream(Format::Json, stream, &mut out).await.unwrap();
    assert_eq!(n, 6);
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 6);
}
