//! Usage history for rebuilding policy counters: every usage event since an instant, from
//! the committed tables plus the log tail the ledger has not committed yet (each event
//! exactly once, like any query), in time order, as the event type the enforcer folds.
//! Carries the fields counters read (who, what, when, how it finished, tokens, cost);
//! must not decide anything about policies.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use futures_util::TryStreamExt;
use tally_events::{
    EventHeader, FinishState, Provider, Route, Timestamp, TokenCounts, UsageEvent, UsageSource,
};

use crate::engine::QueryEngine;
use crate::error::QueryError;
use crate::reports::{Col, range_params};
use crate::scope::Principal;

const HISTORY_SQL: &str = "SELECT occurred_at, gateway_instance, request_id, tenant, api_key_id,
  labels, provider, route, model_requested, model_served, finish_state, usage_source,
  retry_attempt, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
  reasoning_tokens, cost_micros
FROM usage
WHERE occurred_at >= $1 AND day >= $2
ORDER BY occurred_at, event_id";

/// Call `each` with every usage event that occurred at or after `since`, oldest first.
/// Returns how many there were. Fields the query does not read (latency, status, price
/// version, upstream) are left empty.
pub async fn usage_since(
    engine: &QueryEngine,
    since: Timestamp,
    mut each: impl FnMut(&UsageEvent),
) -> Result<u64, QueryError> {
    let mut stream = engine
        .execute_with_params(HISTORY_SQL, range_params(since), &Principal::Admin)
        .await?;
    let mut n = 0u64;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| QueryError::from_datafusion(e, engine.config().memory_limit_bytes))?
    {
        for event in events_of(&batch)? {
            each(&event);
            n += 1;
        }
    }
    Ok(n)
}

fn events_of(batch: &RecordBatch) -> Result<Vec<UsageEvent>, QueryError> {
    let s = |name| Col::str(batch, name);
    let i = |name| Col::int(batch, name);
    let (occurred, instance, request, tenant, key) = (
        Col::time(batch, "occurred_at")?,
        s("gateway_instance")?,
        s("request_id")?,
        s("tenant")?,
        s("api_key_id")?,
    );
    let (provider, route, requested, served, finish, source) = (
        s("provider")?,
        s("route")?,
        s("model_requested")?,
        s("model_served")?,
        s("finish_state")?,
        s("usage_source")?,
    );
    let (attempt, input, cached, cache_write, output, reasoning, cost) = (
        i("retry_attempt")?,
        i("input_tokens")?,
        i("cached_input_tokens")?,
        i("cache_write_tokens")?,
        i("output_tokens")?,
        i("reasoning_tokens")?,
        i("cost_micros")?,
    );
    let labels = batch.column_by_name("labels");
    let tokens = |c: &Col, row| u64::try_from(c.get_int(row).unwrap_or(0)).unwrap_or(0);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut header = EventHeader::new(
            &instance.get_str(row).unwrap_or_default(),
            &request.get_str(row).unwrap_or_default(),
            &tenant.get_str(row).unwrap_or_default(),
        );
        header.occurred_at = occurred.get_time(row).unwrap_or(Timestamp::from_micros(0));
        header.api_key_id = key.get_str(row);
        header.labels = labels.map(|l| labels_at(l, row)).unwrap_or_default();
        header.provider = provider.get_str(row).map(|p| Provider::parse(&p));
        header.route = route.get_str(row).map(|r| Route::parse(&r));
        header.model_requested = requested.get_str(row);
        header.model_served = served.get_str(row);
        let finish_state = FinishState::parse(&finish.get_str(row).unwrap_or_default());
        let usage_source = UsageSource::parse(&source.get_str(row).unwrap_or_default());
        out.push(UsageEvent {
            header,
            upstream: None,
            status_code: None,
            streamed: false,
            finish_state,
            tokens: TokenCounts {
                input_tokens: tokens(&input, row),
                cached_input_tokens: tokens(&cached, row),
                cache_write_tokens: tokens(&cache_write, row),
                output_tokens: tokens(&output, row),
                reasoning_tokens: tokens(&reasoning, row),
                ..TokenCounts::default()
            },
            usage_source,
            cost_micros: cost.get_int(row).unwrap_or(0),
            price_version: None,
            latency_ms: 0,
            ttft_ms: None,
            retry_attempt: u32::try_from(attempt.get_int(row).unwrap_or(0)).unwrap_or(0),
            retry_of: None,
        });
    }
    Ok(out)
}

/// The `labels` map of one row.
fn labels_at(column: &dyn Array, row: usize) -> BTreeMap<String, String> {
    let Some(map) = column.as_map_opt() else {
        return BTreeMap::new();
    };
    if map.is_null(row) {
        return BTreeMap::new();
    }
    let entries = map.value(row);
    let (Some(keys), Some(values)) = (
        entries.column(0).as_string_opt::<i32>(),
        entries.column(1).as_string_opt::<i32>(),
    ) else {
        return BTreeMap::new();
    };
    (0..entries.len())
        .filter(|&j| !keys.is_null(j) && !values.is_null(j))
        .map(|j| (keys.value(j).to_owned(), values.value(j).to_owned()))
        .collect()
}
