//! Property tests of the provider API on hostile input: arbitrary bytes and arbitrary JSON
//! never panic any entry point, and the `include_usage` rewrite always yields the same
//! JSON with only `stream_options.include_usage` set to true.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tally_enforcer::providers::{
    self, Endpoint, RequestInfo, SseParser, StreamTracker, classify, inspect_request,
    prepare_upstream_body, usage_from_body,
};

fn endpoints() -> Vec<Endpoint> {
    [
        (Method::POST, "/v1/chat/completions"),
        (Method::POST, "/v1/responses"),
        (Method::POST, "/v1/completions"),
        (Method::POST, "/v1/embeddings"),
        (Method::POST, "/v1/messages"),
        (Method::POST, "/v1/messages/count_tokens"),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
        ),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        ),
        (Method::GET, "/v1/models"),
    ]
    .into_iter()
    .map(|(m, p)| classify(&m, p).unwrap())
    .collect()
}

/// JSON values biased towards the keys the adapters read.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("model".to_owned()),
        Just("stream".to_owned()),
        Just("stream_options".to_owned()),
        Just("include_usage".to_owned()),
        Just("messages".to_owned()),
        Just("content".to_owned()),
        Just("usage".to_owned()),
        Just("usageMetadata".to_owned()),
        Just("choices".to_owned()),
        Just("type".to_owned()),
        Just("text".to_owned()),
        Just("max_tokens".to_owned()),
        "[a-z_\"\\\\é]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~é\n]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn exercise(endpoint: &Endpoint, body: &[u8]) {
    if let Ok(info) = inspect_request(endpoint, body) {
        let _ = prepare_upstream_body(endpoint, body, &info);
    }
    let _ = usage_from_body(endpoint, body);
    let mut parser = SseParser::new(4096);
    let mut tracker = StreamTracker::new(endpoint, true).with_request(&RequestInfo::default());
    let mut framed = b"data: ".to_vec();
    framed.extend_from_slice(body);
    framed.extend_from_slice(b"\n\n");
    for ev in parser.push(&framed).unwrap_or_default() {
        tracker.on_event(&ev);
    }
    let _ = tracker.report();
    let _ = tracker.settle();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        for endpoint in endpoints() {
            exercise(&endpoint, &body);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        for endpoint in endpoints() {
            exercise(&endpoint, &body);
        }
    }

    #[test]
    fn rewrite_changes_only_include_usage(mut v in json_value(), pretty in any::<bool>()) {
        let Value::Object(obj) = &mut v else { return Ok(()) };
        obj.insert("stream".into(), Value::Bool(true));
        // Fields whose wrong type makes the request invalid are tested elsewhere.
        for k in ["model", "max_tokens"] {
            obj.remove(k);
        }
        let body = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
        let chat = classify(&Method::POST, "/v1/chat/completions").unwrap();
        let info = inspect_request(&chat, &body).unwrap();
        let Some(out) = prepare_upstream_body(&chat, &body, &info).unwrap() else {
            // No rewrite: the client asked for usage, or stream_options is not an object.
            let opts = v.get("stream_options");
            prop_assert!(
                info.include_usage_requested
                    || opts.is_some_and(|o| !o.is_object() && !o.is_null())
            );
            return Ok(());
        };
        let rewritten: Value = serde_json::from_slice(&out).unwrap();
        // Compare with the body as parsed (serde_json's float parsing may differ from the
        // generated value by an ulp; both sides then parse the same text).
        let mut expected: Value = serde_json::from_slice(&body).unwrap();
        let opts = expected
            .as_object_mut()
            .unwrap()
            .entry("stream_options")
            .or_insert(Value::Null);
        if !opts.is_object() {
            *opts = json!({});
        }
        opts.as_object_mut().unwrap().insert("include_usage".into(), Value::Bool(true));
        prop_assert_eq!(rewritten, expected);
        prop_assert!(inspect_request(&chat, &out).unwrap().include_usage_requested);
    }
}

#[test]
fn error_helpers_accept_any_text() {
    for provider in [
        tally_events::Provider::Openai,
        tally_events::Provider::Anthropic,
        tally_events::Provider::Gemini,
    ] {
        let body = providers::error_body(provider, 599, "x\"\n\u{0}", "m\r\n\"é");
        let _: Value = serde_json::from_slice(&body).unwrap();
        let ev = providers::sse_error_event(provider, "", "\n\n\r");
        let mut p = SseParser::default();
        assert_eq!(p.push(&ev).unwrap().len(), 1);
        assert!(p.finish().is_empty());
    }
}
