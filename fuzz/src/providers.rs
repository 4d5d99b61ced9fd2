//! The provider adapter driver shared by the `openai`, `anthropic` and `gemini` targets:
//! one input is read as a request body, as a complete response body and as an event
//! stream, for every endpoint of the provider, through `tally_enforcer::providers`.

use http::Method;
use tally_enforcer::providers::{
    Endpoint, EventAction, RequestInfo, SseParser, StreamTracker, classify, inspect_request,
    prepare_upstream_body, usage_from_body,
};
use tally_events::{TokenCounts, UsageSource};

/// The endpoints of `paths` (POST requests), as the proxy classifies them.
pub fn endpoints(paths: &[&str]) -> Vec<Endpoint> {
    paths
        .iter()
        .map(|path| {
            classify(&Method::POST, path).unwrap_or_else(|| panic!("{path} is not proxied"))
        })
        .collect()
}

/// Reads `data` every way the proxy reads provider bytes, for each endpoint:
/// - as a request: [`inspect_request`], and the `include_usage` rewrite of
///   [`prepare_upstream_body`], which must yield a body that reads back the same with
///   `include_usage` requested;
/// - as a complete response: [`usage_from_body`];
/// - as an event stream: every event through a [`StreamTracker`], with the end-of-stream
///   check and the running estimate after each one as the proxy does, then the report and the settlement. A
///   tracker that does not strip the usage chunk forwards every event, and stripping
///   never changes the usage read.
pub fn run(endpoints: &[Endpoint], data: &[u8]) {
    let mut parser = SseParser::default();
    let mut events = parser.push(data).unwrap_or_default();
    events.extend(parser.finish_event());

    for endpoint in endpoints {
        let info = match inspect_request(endpoint, data) {
            Ok(info) => {
                check_rewrite(endpoint, data, &info);
                info
            }
            Err(e) => {
                assert!(!e.code().is_empty() && !e.to_string().is_empty());
                assert!(e.status() == 400);
                RequestInfo::default()
            }
        };

        match usage_from_body(endpoint, data) {
            Ok(report) => {
                // A body has its usage or not: no partial figures.
                assert_eq!(report.complete, report.input_reported);
                if !report.complete {
                    assert_eq!(report.tokens, TokenCounts::default());
                }
            }
            Err(e) => {
                assert!(!e.code().is_empty() && !e.to_string().is_empty());
                assert!(e.status() == 502);
            }
        }

        let mut reports = Vec::new();
        for strip in [false, true] {
            let mut tracker = StreamTracker::new(endpoint, strip).with_request(&info);
            for event in &events {
                let action = tracker.on_event(event);
                if !strip {
                    assert_eq!(
                        action,
                        EventAction::Forward,
                        "only a stripped chunk is dropped"
                    );
                }
                let _ = tracker.is_terminal(event);
                let _ = tracker.running_output_tokens();
            }
            let report = tracker.report();
            let (tokens, source) = tracker.settle();
            if report.complete {
                assert!(
                    report.input_reported,
                    "complete usage without its input side"
                );
                assert_eq!(source, UsageSource::ProviderReported);
                assert_eq!(tokens, report.tokens);
            } else {
                assert_ne!(source, UsageSource::ProviderReported);
                assert!(tokens.output_tokens >= report.tokens.output_tokens);
            }
            let _ = tracker.estimated_output_tokens();
            reports.push(report);
        }
        assert_eq!(
            reports[0], reports[1],
            "stripping the usage chunk changed the usage"
        );
    }
}

/// The `include_usage` rewrite keeps the request as it was, with usage asked for.
fn check_rewrite(endpoint: &Endpoint, body: &[u8], info: &RequestInfo) {
    let Ok(Some(rewritten)) = prepare_upstream_body(endpoint, body, info) else {
        return;
    };
    let again = match inspect_request(endpoint, &rewritten) {
        Ok(again) => again,
        Err(e) => panic!(
            "the rewritten body is not a valid request ({e}): {}",
            String::from_utf8_lossy(&rewritten)
        ),
    };
    assert!(
        again.include_usage_requested,
        "the rewritten body does not ask for usage: {}",
        String::from_utf8_lossy(&rewritten)
    );
    assert_eq!(again.model, info.model);
    assert_eq!(again.stream, info.stream);
    assert_eq!(again.max_output_tokens, info.max_output_tokens);
    assert_eq!(again.estimated_input_tokens, info.estimated_input_tokens);
}
