//! The canonical-form reader (the one-pass reader `decode_wire` tries first) against
//! serde's reader: whatever it accepts, serde accepts with the same result; it accepts
//! everything tally writes that needs no escapes; anything else it leaves to serde.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_events::codec::read_canonical;
use tally_events::{
    CorrectionEvent, CounterUnit, DecisionEvent, Event, EventHeader, EventId, FinishState, Outcome,
    Provider, Route, RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource, WireDecoder,
    WireEvent, decode_wire, encode,
};

/// What the canonical reader makes of `bytes`, checked against serde's reader: when it
/// reads the payload, serde must read it to the same event.
fn agree(bytes: &[u8]) -> Option<WireEvent<'_>> {
    let fast = read_canonical(bytes)?;
    let slow: Result<WireEvent<'_>, _> = serde_json::from_slice(bytes);
    match slow {
        Ok(slow) => assert_eq!(
            fast,
            slow,
            "the readers differ on {}",
            String::from_utf8_lossy(bytes)
        ),
        Err(e) => panic!(
            "canonical reader took what serde refuses ({e}): {}",
            String::from_utf8_lossy(bytes)
        ),
    }
    Some(fast)
}

fn text(plain: bool) -> BoxedStrategy<String> {
    if plain {
        "[a-zA-Z0-9 ._:/-]{0,16}".boxed()
    } else {
        // Quotes, backslashes, control characters and non-ASCII: escapes on the wire.
        "\\PC{0,12}|[\"\\\\\n\t\u{1}é€😀a]{0,6}".boxed()
    }
}

fn vocab<T: Copy + std::fmt::Debug + 'static>(all: &'static [T], other: T) -> BoxedStrategy<T> {
    prop_oneof![
        4 => proptest::sample::select(all),
        1 => Just(other),
    ]
    .boxed()
}

fn ts() -> impl Strategy<Value = Timestamp> {
    (-62_135_596_800_000_000i64..253_402_300_799_999_999).prop_map(Timestamp::from_micros)
}

fn header(plain: bool) -> impl Strategy<Value = EventHeader> {
    (
        (text(plain), text(plain), text(plain), ts(), any::<u128>()),
        proptest::option::of(text(plain)),
        proptest::collection::btree_map(text(plain), text(plain), 0..4),
        proptest::option::of(vocab(Provider::ALL, Provider::Other)),
        proptest::option::of(vocab(Route::ALL, Route::Other)),
        proptest::option::of(text(plain)),
        proptest::option::of(text(plain)),
        proptest::option::of(text(plain)),
    )
        .prop_map(
            |((gw, req, tenant, at, id), key, labels, provider, route, mr, ms, up)| {
                let mut h = EventHeader::new(&gw, &req, &tenant);
                h.event_id = EventId::from(uuid::Uuid::from_u128(id));
                h.occurred_at = at;
                h.api_key_id = key;
                h.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
                h.provider = provider;
                h.route = route;
                h.model_requested = mr;
                h.model_served = ms;
                h.upstream_request_id = up;
                h
            },
        )
}

fn usage(plain: bool) -> impl Strategy<Value = Event> {
    (
        header(plain),
        (
            proptest::option::of(text(plain)),
            proptest::option::of(any::<u16>()),
            any::<bool>(),
            vocab(FinishState::ALL, FinishState::Other),
            prop::array::uniform7(any::<u64>()),
            vocab(UsageSource::ALL, UsageSource::Other),
            any::<i64>(),
        ),
        (
            proptest::option::of(text(plain)),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<u32>(),
            proptest::option::of(text(plain)),
        ),
    )
        .prop_map(
            |(header, (upstream, status, streamed, finish, t, source, cost), rest)| {
                let (price_version, latency_ms, ttft_ms, retry_attempt, retry_of) = rest;
                Event::Usage(UsageEvent {
                    header,
                    upstream,
                    status_code: status,
                    streamed,
                    finish_state: finish,
                    tokens: TokenCounts {
                        input_tokens: t[0],
                        cached_input_tokens: t[1],
                        cache_write_tokens: t[2],
                        output_tokens: t[3],
                        reasoning_tokens: t[4],
                        audio_input_tokens: t[5],
                        audio_output_tokens: t[6],
                    },
                    usage_source: source,
                    cost_micros: cost,
                    price_version,
                    latency_ms,
                    ttft_ms,
                    retry_attempt,
                    retry_of,
                })
            },
        )
}

fn decision(plain: bool) -> impl Strategy<Value = Event> {
    (
        header(plain),
        (
            vocab(Outcome::ALL, Outcome::Other),
            text(plain),
            vocab(RuleKind::ALL, RuleKind::Other),
            proptest::option::of(text(plain)),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(vocab(CounterUnit::ALL, CounterUnit::Other)),
        ),
        (
            proptest::option::of(ts()),
            proptest::option::of(ts()),
            proptest::option::of(ts()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<i64>()),
            text(plain),
        ),
    )
        .prop_map(|(header, a, b)| {
            let (outcome, rule, rule_kind, counter_key, counter_value, counter_limit, unit) = a;
            let (window_start, window_end, reset_at, reserved_tokens, reserved_cost, reason) = b;
            Event::Decision(DecisionEvent {
                header,
                outcome,
                rule,
                rule_kind,
                counter_key,
                counter_value,
                counter_limit,
                counter_unit: unit,
                window_start,
                window_end,
                reset_at,
                reserved_tokens,
                reserved_cost_micros: reserved_cost,
                reason,
            })
        })
}

fn correction(plain: bool) -> impl Strategy<Value = Event> {
    (
        header(plain),
        any::<u128>(),
        text(plain),
        prop::array::uniform5(proptest::option::of(any::<u64>())),
        proptest::option::of(any::<i64>()),
        proptest::option::of(text(plain)),
        proptest::option::of(vocab(UsageSource::ALL, UsageSource::Other)),
    )
        .prop_map(|(header, id, reason, t, cost, price_version, source)| {
            Event::Correction(CorrectionEvent {
                header,
                corrects_event_id: EventId::from(uuid::Uuid::from_u128(id)),
                reason,
                input_tokens: t[0],
                cached_input_tokens: t[1],
                cache_write_tokens: t[2],
                output_tokens: t[3],
                reasoning_tokens: t[4],
                cost_micros: cost,
                price_version,
                usage_source: source,
            })
        })
}

fn event(plain: bool) -> impl Strategy<Value = Event> {
    prop_oneof![usage(plain), decision(plain), correction(plain)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every event tally writes without escapes is read by the canonical reader, to the
    /// event written.
    #[test]
    fn written_events_take_the_canonical_reader(e in event(true)) {
        let bytes = encode(&e);
        let w = agree(&bytes);
        prop_assert!(w.is_some(), "not canonical: {}", String::from_utf8_lossy(&bytes));
        prop_assert_eq!(w.map(|w| w.to_event()), Some(e));
    }

    /// With escapes anywhere, either reader decodes to the event written.
    #[test]
    fn escaped_events_decode_the_same_either_way(e in event(false)) {
        let bytes = encode(&e);
        let _ = agree(&bytes);
        let decoded = decode_wire(&bytes).map(|d| d.into_event()).ok();
        prop_assert_eq!(decoded, Some(e));
    }

    /// Any byte of a written event changed, inserted or removed: whatever the canonical
    /// reader still takes, serde reads the same.
    #[test]
    fn damaged_payloads_never_split_the_readers(
        e in event(true),
        at in any::<prop::sample::Index>(),
        byte in prop_oneof![
            Just(b' '), Just(b'"'), Just(b'\\'), Just(b','), Just(b':'), Just(b'{'),
            Just(b'}'), Just(b'0'), Just(b'-'), Just(b'.'), Just(b'e'), Just(b'n'),
            Just(0x01), Just(0xff), any::<u8>()
        ],
        how in 0u8..3,
    ) {
        let mut bytes = encode(&e);
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            _ => {
                bytes.remove(i);
            }
        }
        let _ = agree(&bytes);
    }
}

/// One `WireDecoder` reused over a run of payloads (written, escaped, damaged or not
/// events at all) decodes each exactly as `decode_wire` does: nothing of one payload is
/// left over in the next. (On a thread of its own: the strategy of a run of whole events
/// needs more stack than a test thread has in a debug build.)
#[test]
fn a_reused_decoder_decodes_each_payload_on_its_own() {
    let run = std::thread::Builder::new().stack_size(64 << 20).spawn(|| {
        let payloads = proptest::collection::vec(
            prop_oneof![
                4 => event(true).prop_map(|e| encode(&e)),
                2 => event(false).prop_map(|e| encode(&e)),
                1 => (event(true), any::<prop::sample::Index>()).prop_map(|(e, at)| {
                    let mut bytes = encode(&e);
                    bytes.remove(at.index(bytes.len()));
                    bytes
                }),
                1 => Just(br#"{"event_type":"audit","tenant":"t"}"#.to_vec()),
            ],
            1..12,
        );
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 256,
            ..ProptestConfig::default()
        });
        runner
            .run(&payloads, |payloads| {
                let mut decoder = WireDecoder::default();
                for p in &payloads {
                    let reused = decoder
                        .decode(p)
                        .map(|d| d.clone().into_event())
                        .map_err(|e| e.to_string());
                    let alone = decode_wire(p)
                        .map(|d| d.into_event())
                        .map_err(|e| e.to_string());
                    prop_assert_eq!(reused, alone, "{}", String::from_utf8_lossy(p));
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
    match run.map(|t| t.join()) {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(failure))) => panic!("{failure}"),
        Ok(Err(_)) => panic!("the property thread panicked"),
        Err(e) => panic!("spawning the property thread: {e}"),
    }
}

/// A usage event of few fields (latency 5 ms) in its written form.
fn small_usage(status_code: Option<u16>, cost_micros: i64) -> String {
    let e = Event::Usage(UsageEvent {
        header: EventHeader::new("gw-1", "req-1", "acme"),
        upstream: None,
        status_code,
        streamed: true,
        finish_state: FinishState::Completed,
        tokens: TokenCounts::default(),
        usage_source: UsageSource::Estimated,
        cost_micros,
        price_version: None,
        latency_ms: 5,
        ttft_ms: None,
        retry_attempt: 0,
        retry_of: None,
    });
    String::from_utf8(encode(&e)).unwrap_or_default()
}

/// Payloads outside the canonical form go to serde, whose result stands.
#[test]
fn non_canonical_payloads_are_left_to_serde() {
    let canonical = small_usage(Some(200), 0);
    assert!(agree(canonical.as_bytes()).is_some());
    let body = canonical.trim_start_matches('{').trim_end_matches('}');
    let cases: Vec<String> = vec![
        // Whitespace serde accepts.
        format!("{{ {body} }}"),
        format!("{canonical}\n"),
        canonical.replace(",\"", ", \""),
        // An escape in a value or a key.
        canonical.replace("\"acme\"", "\"ac\\u006de\""),
        canonical.replace("\"tenant\"", "\"tena\\u006et\""),
        // A repeated field (serde refuses it), also after a null.
        format!("{{{body},\"tenant\":\"other\"}}"),
        format!("{{\"api_key_id\":null,{body},\"api_key_id\":\"k\"}}"),
        // Unknown fields with nested values, and with a float.
        format!("{{{body},\"new_field\":{{\"a\":[1,2]}}}}"),
        format!("{{{body},\"new_field\":1.5}}"),
        // Numbers outside the integer form or the field's range.
        canonical.replace("\"latency_ms\":5", "\"latency_ms\":5.0"),
        canonical.replace("\"latency_ms\":5", "\"latency_ms\":05"),
        canonical.replace("\"latency_ms\":5", "\"latency_ms\":-5"),
        canonical.replace("\"latency_ms\":5", "\"latency_ms\":18446744073709551616"),
        canonical.replace("\"status_code\":200", "\"status_code\":70000"),
        // A null label value, a label that is not a string.
        format!("{{{body},\"labels\":{{\"team\":null}}}}"),
        format!("{{{body},\"labels\":{{\"team\":1}}}}"),
        // Not one object.
        format!("{canonical}{canonical}"),
        format!("[{canonical}]"),
    ];
    for case in &cases {
        assert!(
            read_canonical(case.as_bytes()).is_none(),
            "canonical reader took {case}"
        );
        let serde: Result<WireEvent<'_>, _> = serde_json::from_str(case);
        let decoded = decode_wire(case.as_bytes());
        assert_eq!(
            serde.is_ok(),
            decoded.is_ok(),
            "{case}: serde {serde:?} vs decode_wire {decoded:?}"
        );
    }
    // Invalid UTF-8 inside a string.
    let mut bytes = canonical.into_bytes();
    let at = bytes.windows(4).position(|w| w == b"acme").unwrap_or(0);
    bytes[at] = 0xff;
    assert!(read_canonical(&bytes).is_none());
    assert!(decode_wire(&bytes).is_err());
}

/// Unknown fields with simple values are skipped, unknown vocabulary values read as
/// `other`, repeated label keys keep the last value, as serde does.
#[test]
fn unknown_fields_values_and_repeated_labels_read_as_serde_reads_them() {
    let canonical = small_usage(None, -3);
    let body = canonical.trim_start_matches('{').trim_end_matches('}');
    let payload = format!(
        "{{\"future\":\"x\",\"n\":-12,\"b\":false,\"z\":null,\"tenXnt\":\"intruder\",\"input_Xokens\":7,{body},\"cXst_micros\":5,\"eveXt_type\":\"decision\",\"labels\":{{\"team\":\"a\",\"app\":\"b\",\"team\":\"c\"}},\"route\":\"teleport\"}}"
    );
    let w = agree(payload.as_bytes());
    let Some(w) = w else {
        panic!("not read: {payload}")
    };
    let Event::Usage(u) = w.to_event() else {
        panic!("not a usage event")
    };
    assert_eq!(u.header.route, Some(Route::Other));
    assert_eq!(
        u.header.labels,
        BTreeMap::from([("app".into(), "b".into()), ("team".into(), "c".into())])
    );
    assert_eq!(u.cost_micros, -3);
    // Unknown keys of a known field's length, first and last byte are skipped too.
    assert_eq!(u.header.tenant, "acme");
    assert_eq!(u.tokens.input_tokens, 0);
}
