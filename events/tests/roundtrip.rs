//! Round trips of every event type through the wire encoding and into Arrow.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use proptest::prelude::*;
use tally_events::arrow::{
    correction_schema, corrections_to_batch, decision_schema, decisions_to_batch, usage_schema,
    usage_to_batch,
};
use tally_events::{
    CorrectionEvent, CounterUnit, DecisionEvent, Event, EventHeader, EventId, FinishState, Outcome,
    Provider, Route, RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource, decode, encode,
};

fn header(tenant: &str) -> EventHeader {
    let mut h = EventHeader::new("gw-1", "req-0001", tenant);
    h.api_key_id = Some("key-a".into());
    h.labels = BTreeMap::from([
        ("team".into(), "search".into()),
        ("app".into(), "bot".into()),
    ]);
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some("gpt-4o-mini".into());
    h.model_served = Some("gpt-4o-mini-2024-07-18".into());
    h.upstream_request_id = Some("chatcmpl-123".into());
    h
}

fn usage() -> UsageEvent {
    UsageEvent {
        header: header("acme"),
        upstream: Some("openai".into()),
        status_code: Some(200),
        streamed: true,
        finish_state: FinishState::Completed,
        tokens: TokenCounts {
            input_tokens: 1200,
            cached_input_tokens: 1024,
            cache_write_tokens: 0,
            output_tokens: 300,
            reasoning_tokens: 128,
            audio_input_tokens: 0,
            audio_output_tokens: 0,
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: 4_321,
        price_version: Some("2026-11-01".into()),
        latency_ms: 812,
        ttft_ms: Some(95),
        retry_attempt: 1,
        retry_of: Some("req-0000".into()),
    }
}

fn decision() -> DecisionEvent {
    DecisionEvent {
        header: header("acme"),
        outcome: Outcome::Deny,
        rule: "acme-monthly-budget".into(),
        rule_kind: RuleKind::UsageCap,
        counter_key: Some("tenant:acme".into()),
        counter_value: Some(99_500_000),
        counter_limit: Some(100_000_000),
        counter_unit: Some(CounterUnit::UsdMicros),
        window_start: Some(Timestamp::from_micros(1_793_491_200_000_000)),
        window_end: Some(Timestamp::from_micros(1_796_083_200_000_000)),
        reset_at: Some(Timestamp::from_micros(1_796_083_200_000_000)),
        reserved_tokens: Some(4096),
        reserved_cost_micros: Some(600_000),
        reason: "monthly budget of $100.00 for tenant acme would be exceeded".into(),
    }
}

fn correction() -> CorrectionEvent {
    CorrectionEvent {
        header: header("acme"),
        corrects_event_id: EventId::new(),
        reason: "price table 2026-11-01 had the wrong cached-input price".into(),
        input_tokens: None,
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: None,
        reasoning_tokens: None,
        cost_micros: Some(3_900),
        price_version: Some("2026-11-02".into()),
        usage_source: None,
    }
}

#[test]
fn every_event_type_round_trips_through_the_wire_encoding() {
    for event in [Event::from(usage()), decision().into(), correction().into()] {
        let bytes = encode(&event);
        let back = decode(&bytes).map_err(|e| e.to_string());
        assert_eq!(back, Ok(event));
    }
}

#[test]
fn wire_field_names_are_the_column_names() {
    let cases: Vec<(Event, _)> = vec![
        (usage().into(), usage_schema()),
        (decision().into(), decision_schema()),
        (correction().into(), correction_schema()),
    ];
    for (event, schema) in cases {
        let value: serde_json::Value = serde_json::from_slice(&encode(&event)).unwrap_or_default();
        let keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        for k in &keys {
            assert!(columns.contains(k), "JSON field `{k}` has no column");
        }
        // Every non-nullable column is always present on the wire.
        for f in schema.fields().iter().filter(|f| !f.is_nullable()) {
            assert!(
                keys.contains(&f.name().as_str()),
                "column `{}` missing from JSON",
                f.name()
            );
        }
    }
}

#[test]
fn unknown_fields_and_values_are_tolerated() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&encode(&usage().into())).unwrap_or_default();
    value["a_field_from_the_future"] = serde_json::json!({"x": 1});
    value["finish_state"] = serde_json::json!("teleported");
    value["provider"] = serde_json::json!("newco");
    let back = decode(value.to_string().as_bytes()).map_err(|e| e.to_string());
    let Ok(Event::Usage(u)) = back else {
        panic!("decode failed: {back:?}")
    };
    assert_eq!(u.finish_state, FinishState::Other);
    assert_eq!(u.header.provider, Some(Provider::Other));
    assert_eq!(u.tokens.input_tokens, 1200);
}

#[test]
fn unknown_event_types_and_garbage_get_stable_codes() {
    let err = decode(br#"{"event_type":"telemetry","x":1}"#).err();
    assert_eq!(err.map(|e| e.code()), Some("event.unknown_type"));
    for bad in [
        &b"not json"[..],
        b"{\"event_type\":\"usage\"}",
        b"\xff\xfe",
        b"",
    ] {
        assert_eq!(decode(bad).err().map(|e| e.code()), Some("event.decode"));
    }
}

#[test]
fn usage_batch_has_the_documented_schema_and_values() {
    let events = vec![
        usage(),
        UsageEvent {
            streamed: false,
            ttft_ms: None,
            ..usage()
        },
    ];
    let batch = usage_to_batch(&events).map_err(|e| e.to_string());
    let Ok(batch) = batch else {
        panic!("{batch:?}")
    };
    assert_eq!(batch.schema(), usage_schema());
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(int(&batch, "input_tokens"), vec![Some(1200), Some(1200)]);
    assert_eq!(int(&batch, "cost_micros"), vec![Some(4321), Some(4321)]);
    assert_eq!(int(&batch, "ttft_ms"), vec![Some(95), None]);
    let at = col(&batch, "occurred_at")
        .as_primitive::<TimestampMicrosecondType>()
        .value(0);
    assert_eq!(at, events[0].header.occurred_at.as_micros());
    assert_eq!(string(&batch, "finish_state", 0), "completed");
    assert_eq!(
        string(&batch, "event_id", 0),
        events[0].header.event_id.to_string()
    );
    let labels = col(&batch, "labels").as_map();
    assert_eq!(labels.value(0).len(), 2);
}

#[test]
fn decision_and_correction_batches_have_their_schemas() {
    let d = decisions_to_batch(&[decision()]).map_err(|e| e.to_string());
    let Ok(d) = d else { panic!("{d:?}") };
    assert_eq!(d.schema(), decision_schema());
    assert_eq!(string(&d, "outcome", 0), "deny");
    assert_eq!(int(&d, "counter_limit"), vec![Some(100_000_000)]);
    let c = corrections_to_batch(&[correction()]).map_err(|e| e.to_string());
    let Ok(c) = c else { panic!("{c:?}") };
    assert_eq!(c.schema(), correction_schema());
    assert_eq!(int(&c, "cost_micros"), vec![Some(3900)]);
    assert_eq!(int(&c, "input_tokens"), vec![None]);
    assert!(decisions_to_batch(&[]).map(|b| b.num_rows()).ok() == Some(0));
}

fn col<'a>(batch: &'a RecordBatch, name: &str) -> &'a dyn Array {
    match batch.column_by_name(name) {
        Some(c) => c.as_ref(),
        None => panic!("no column {name}"),
    }
}

fn int(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    col(batch, name)
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

fn string(batch: &RecordBatch, name: &str, row: usize) -> String {
    col(batch, name).as_string::<i32>().value(row).to_owned()
}

fn arb_tokens() -> impl Strategy<Value = TokenCounts> {
    prop::array::uniform7(0u64..10_000_000).prop_map(|a| TokenCounts {
        input_tokens: a[0],
        cached_input_tokens: a[1],
        cache_write_tokens: a[2],
        output_tokens: a[3],
        reasoning_tokens: a[4],
        audio_input_tokens: a[5],
        audio_output_tokens: a[6],
    })
}

proptest! {
    #[test]
    fn arbitrary_usage_events_round_trip(
        tokens in arb_tokens(),
        cost in any::<i64>(),
        micros in -10_000_000_000_000_000i64..10_000_000_000_000_000,
        tenant in "\\PC{0,20}",
        label in ("\\PC{1,8}", "\\PC{0,8}"),
        status in proptest::option::of(100u16..600),
    ) {
        let mut u = usage();
        u.tokens = tokens;
        u.cost_micros = cost;
        u.status_code = status;
        u.header.occurred_at = Timestamp::from_micros(micros);
        u.header.tenant = tenant;
        u.header.labels = BTreeMap::from([label]);
        let event = Event::from(u.clone());
        prop_assert_eq!(decode(&encode(&event)).ok(), Some(event));
        let batch = usage_to_batch(&[u]);
        prop_assert!(batch.is_ok());
    }
}

#[test]
fn the_day_partition_column_is_the_utc_day() {
    use tally_events::arrow::{Table, with_day_column};
    let mut late = usage();
    late.header.occurred_at = Timestamp::parse("2026-11-20T23:59:59.999999Z").unwrap_or_default();
    let mut early = usage();
    early.header.occurred_at = Timestamp::parse("2026-11-21T00:00:00+00:00").unwrap_or_default();
    let batch = usage_to_batch(&[late, early]).map_err(|e| e.to_string());
    let Ok(batch) = batch else {
        panic!("{batch:?}")
    };
    let with_day = with_day_column(Table::Usage, &batch).map_err(|e| e.to_string());
    let Ok(with_day) = with_day else {
        panic!("{with_day:?}")
    };
    assert_eq!(with_day.schema(), Table::Usage.table_schema());
    let days = col(&with_day, "day").as_primitive::<arrow_array::types::Date32Type>();
    // 2026-11-20 is day 20777 since 1970-01-01.
    assert_eq!(days.values().to_vec(), vec![20777, 20778]);
}
