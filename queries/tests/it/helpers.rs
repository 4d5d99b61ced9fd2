//! Reading query results in tests.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use tally_queries::{Principal, QueryEngine, QueryError};

pub(crate) fn acme() -> Principal {
    Principal::Tenant("acme".into())
}

pub(crate) fn globex() -> Principal {
    Principal::Tenant("globex".into())
}

pub(crate) fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let c = cast(b.column_by_name(column).unwrap(), &DataType::Utf8).unwrap();
        let c = c.as_string::<i32>();
        for i in 0..c.len() {
            out.push((!c.is_null(i)).then(|| c.value(i).to_owned()));
        }
    }
    out
}

pub(crate) fn ints(batches: &[RecordBatch], column: &str) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for b in batches {
        let c = cast(b.column_by_name(column).unwrap(), &DataType::Int64).unwrap();
        let c = c.as_primitive::<Int64Type>();
        for i in 0..c.len() {
            out.push((!c.is_null(i)).then(|| c.value(i)));
        }
    }
    out
}

pub(crate) fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The single integer a query returns.
pub(crate) async fn scalar(engine: &QueryEngine, sql: &str, who: &Principal) -> i64 {
    let b = engine.collect(sql, who).await.unwrap();
    ints(&b, b[0].schema().field(0).name())[0].unwrap_or(0)
}

pub(crate) async fn strs(
    engine: &QueryEngine,
    sql: &str,
    who: &Principal,
    column: &str,
) -> Vec<Option<String>> {
    let b = engine.collect(sql, who).await.unwrap();
    strings(&b, column)
}

pub(crate) async fn err(engine: &QueryEngine, sql: &str, who: &Principal) -> QueryError {
    match engine.collect(sql, who).await {
        Ok(b) => panic!("`{sql}` should fail, returned {} rows", rows(&b)),
        Err(e) => e,
    }
}
