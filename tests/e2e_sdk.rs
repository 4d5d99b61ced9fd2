//! End to end with real clients: the official `openai` and `anthropic` Python SDKs and
//! plain HTTP for Gemini, through `tally up --dev` to the simulator. The tokens recorded
//! in the usage events must equal the usage the SDK reported to the caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Tally, python, read_events, usage_by_request};
use tally_events::{FinishState, UsageSource};

#[test]
fn recorded_tokens_equal_what_the_sdks_report() {
    let tally = Tally::up_dev(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sdk_requests.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&tally.proxy)
        .arg("dev-acme-sdk")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data_dir = tally.stop();
    let events = read_events(&data_dir);
    let usage = usage_by_request(&events);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 10, "every SDK call reported");
    for line in &lines {
        let rid = line["request_id"]
            .as_str()
            .expect("x-tally-request-id header present");
        let u = usage
            .get(rid)
            .unwrap_or_else(|| panic!("no usage event for {line}"));
        assert_eq!(u.header.tenant, "acme");
        assert_eq!(u.finish_state, FinishState::Completed, "{line}");
        assert_eq!(u.usage_source, UsageSource::ProviderReported, "{line}");
        assert_eq!(
            u.streamed,
            line["stream"].as_bool().unwrap_or(false),
            "{line}"
        );
        if line.get("client_saw_usage").is_some() {
            assert_eq!(
                line["client_saw_usage"], false,
                "the usage chunk tally asked for leaked to the client"
            );
            assert!(
                u.tokens.input_tokens > 0 && u.tokens.output_tokens > 0,
                "{u:?}"
            );
            continue;
        }
        let field = |k: &str| line[k].as_u64().unwrap_or(0);
        assert_eq!(
            u.tokens.input_tokens,
            field("input_tokens"),
            "input: {line}"
        );
        assert_eq!(
            u.tokens.output_tokens,
            field("output_tokens"),
            "output: {line}"
        );
        assert_eq!(
            u.tokens.cached_input_tokens,
            field("cached_input_tokens"),
            "cached: {line}"
        );
        assert_eq!(
            u.tokens.cache_write_tokens,
            field("cache_write_tokens"),
            "cache write: {line}"
        );
        assert_eq!(
            u.tokens.reasoning_tokens,
            field("reasoning_tokens"),
            "reasoning: {line}"
        );
        assert!(
            u.price_version.is_some(),
            "every simulated model is in the price table: {u:?}"
        );
        assert!(u.cost_micros > 0 || u.tokens.total() < 100, "priced: {u:?}");
    }
}
