//! Fuzz target `gemini`: the Gemini adapter (generateContent, streamGenerateContent as SSE
//! or as one JSON array, countTokens) reads arbitrary bytes as a request, a response body
//! and an event stream without panicking (see `tally_fuzz::providers::run`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_enforcer::providers::Endpoint;
use tally_fuzz::providers::{endpoints, run};

static ENDPOINTS: LazyLock<Vec<Endpoint>> = LazyLock::new(|| {
    endpoints(&[
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "/v1beta/models/gemini-2.5-flash:countTokens",
    ])
});

fuzz_target!(|data: &[u8]| run(&ENDPOINTS, data));
