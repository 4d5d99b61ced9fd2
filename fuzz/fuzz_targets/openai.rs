//! Fuzz target `openai`: the OpenAI adapter (chat completions, Responses, legacy
//! completions, embeddings) reads arbitrary bytes as a request, a response body and an
//! event stream without panicking (see `tally_fuzz::providers::run`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_enforcer::providers::Endpoint;
use tally_fuzz::providers::{endpoints, run};

static ENDPOINTS: LazyLock<Vec<Endpoint>> = LazyLock::new(|| {
    endpoints(&[
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/completions",
        "/v1/embeddings",
    ])
});

fuzz_target!(|data: &[u8]| run(&ENDPOINTS, data));
