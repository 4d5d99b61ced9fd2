//! The gateway side of a reconciliation: what tally recorded, aggregated by SQL over the
//! ledger's tables (the `usage_corrected` view, so corrections count) into buckets of the
//! provider's width and into per-minute activity for gap evidence. Must not write
//! anything and must not compare (the matcher does).

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use tally_events::Timestamp;
use tally_queries::{Principal, QueryEngine, QueryError};

use crate::figures::Figures;
use crate::matcher::{GatewayBucket, GatewayMinute};

/// Gateway routes a provider's usage reports cover.
fn routes(provider: &str) -> &'static str {
    match provider {
        "openai" => "'chat', 'responses', 'completions', 'embeddings'",
        "anthropic" => "'messages'",
        "gemini" => "'generate_content'",
        _ => "'chat', 'responses', 'completions', 'embeddings', 'messages', 'generate_content'",
    }
}

fn ts_literal(t: Timestamp) -> String {
    format!(
        "TIMESTAMP '{}'",
        t.to_datetime().format("%Y-%m-%dT%H:%M:%S%.6fZ")
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL aggregating gateway usage of `provider` in `[start, end)` into buckets of
/// `bucket_seconds`. `requests` counts attempts the provider answered (2xx); tokens are
/// those of answered attempts (an aborted stream keeps its 2xx status).
pub fn buckets_sql(
    provider: &str,
    start: Timestamp,
    end: Timestamp,
    bucket_seconds: i64,
) -> String {
    format!(
        "SELECT upstream, COALESCE(model_served, model_requested, '') AS model,
           date_bin(INTERVAL '{bucket_seconds} seconds', occurred_at, TIMESTAMP '1970-01-01T00:00:00Z') AS bucket,
           SUM(CASE WHEN ok THEN 1 ELSE 0 END) AS requests,
           SUM(CASE WHEN ok THEN input_tokens ELSE 0 END) AS input,
           SUM(CASE WHEN ok THEN cached_input_tokens ELSE 0 END) AS cached,
           SUM(CASE WHEN ok THEN cache_write_tokens ELSE 0 END) AS cache_write,
           SUM(CASE WHEN ok THEN output_tokens ELSE 0 END) AS output,
           SUM(CASE WHEN ok THEN audio_input_tokens ELSE 0 END) AS audio_input,
           SUM(CASE WHEN ok THEN audio_output_tokens ELSE 0 END) AS audio_output,
           SUM(cost_micros) AS cost,
           SUM(CASE WHEN finish_state = 'client_aborted' THEN 1 ELSE 0 END) AS aborted,
           SUM(CASE WHEN finish_state IN ('upstream_error', 'timeout') THEN 1 ELSE 0 END) AS failed,
           SUM(CASE WHEN retry_attempt > 0 THEN 1 ELSE 0 END) AS retries,
           SUM(CASE WHEN ok AND finish_state = 'client_aborted' AND usage_source <> 'provider_reported'
                    THEN input_tokens ELSE 0 END) AS aborted_estimated_input
         FROM (SELECT *, COALESCE(status_code BETWEEN 200 AND 299, false) AS ok FROM usage_corrected
               WHERE provider = {p} AND occurred_at >= {s} AND occurred_at < {e}
                 AND finish_state <> 'denied' AND route IN ({r}))
         GROUP BY 1, 2, 3",
        p = quote(provider),
        s = ts_literal(start),
        e = ts_literal(end),
        r = routes(provider),
    )
}

/// The SQL counting gateway events of `provider` per minute and upstream.
pub fn minutes_sql(provider: &str, start: Timestamp, end: Timestamp) -> String {
    format!(
        "SELECT upstream,
           date_bin(INTERVAL '60 seconds', occurred_at, TIMESTAMP '1970-01-01T00:00:00Z') AS minute,
           COUNT(*) AS events
         FROM usage WHERE provider = {p} AND occurred_at >= {s} AND occurred_at < {e}
         GROUP BY 1, 2",
        p = quote(provider),
        s = ts_literal(start),
        e = ts_literal(end),
    )
}

/// Gateway buckets and minutes of `provider` in `[start, end)`.
pub async fn gateway_side(
    engine: &QueryEngine,
    provider: &str,
    start: Timestamp,
    end: Timestamp,
    bucket_seconds: i64,
) -> Result<(Vec<GatewayBucket>, Vec<GatewayMinute>), QueryError> {
    let admin = Principal::Admin;
    let buckets = engine
        .collect(&buckets_sql(provider, start, end, bucket_seconds), &admin)
        .await?;
    let minutes = engine
        .collect(&minutes_sql(provider, start, end), &admin)
        .await?;
    let mut out = Vec::new();
    for b in &buckets {
        out.extend(bucket_rows(b)?);
    }
    let mut mins = Vec::new();
    for b in &minutes {
        let upstream = strings(b, 0)?;
        let minute = micros(b, 1)?;
        let events = ints(b, 2)?;
        for i in 0..b.num_rows() {
            mins.push(GatewayMinute {
                upstream: upstream[i].clone(),
                minute: minute[i],
                events: events[i],
            });
        }
    }
    Ok((out, mins))
}

fn bucket_rows(b: &RecordBatch) -> Result<Vec<GatewayBucket>, QueryError> {
    let upstream = strings(b, 0)?;
    let model = strings(b, 1)?;
    let start = micros(b, 2)?;
    let cols: Vec<Vec<i64>> = (2..b.num_columns())
        .map(|i| if i == 2 { Ok(Vec::new()) } else { ints(b, i) })
        .collect::<Result<_, _>>()?;
    Ok((0..b.num_rows())
        .map(|i| GatewayBucket {
            upstream: upstream[i].clone(),
            model: model[i].clone().unwrap_or_default(),
            bucket_start: start[i],
            figures: Figures {
                requests: cols[1][i],
                input: cols[2][i],
                cached: cols[3][i],
                cache_write: cols[4][i],
                output: cols[5][i],
                audio_input: cols[6][i],
                audio_output: cols[7][i],
            },
            recorded_cost_micros: cols[8][i],
            aborted: cols[9][i],
            failed: cols[10][i],
            retries: cols[11][i],
            aborted_estimated_input: cols[12][i],
        })
        .collect())
}

fn strings(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>, QueryError> {
    let col =
        cast(b.column(i), &DataType::Utf8).map_err(|e| QueryError::Internal(e.to_string()))?;
    let a = col
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| QueryError::Internal(format!("column {i} is not a string")))?;
    Ok((0..a.len())
        .map(|j| (!a.is_null(j)).then(|| a.value(j).to_owned()))
        .collect())
}

/// A timestamp column as µs since the epoch, whatever unit the engine produced
/// (`date_bin` follows its origin's unit, nanoseconds for a timestamp literal).
fn micros(b: &RecordBatch, i: usize) -> Result<Vec<i64>, QueryError> {
    let internal = |e: arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let col = match b.column(i).data_type() {
        DataType::Timestamp(..) => cast(
            &cast(
                b.column(i),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )
            .map_err(internal)?,
            &DataType::Int64,
        )
        .map_err(internal)?,
        other => {
            return Err(QueryError::Internal(format!(
                "column {i} is {other}, not a timestamp"
            )));
        }
    };
    let a = col
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| QueryError::Internal(format!("column {i} is not a timestamp")))?;
    Ok((0..a.len())
        .map(|j| if a.is_null(j) { 0 } else { a.value(j) })
        .collect())
}

fn ints(b: &RecordBatch, i: usize) -> Result<Vec<i64>, QueryError> {
    let col =
        cast(b.column(i), &DataType::Int64).map_err(|e| QueryError::Internal(e.to_string()))?;
    let a = col
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| QueryError::Internal(format!("column {i} is not an integer")))?;
    Ok((0..a.len())
        .map(|j| if a.is_null(j) { 0 } else { a.value(j) })
        .collect())
}
