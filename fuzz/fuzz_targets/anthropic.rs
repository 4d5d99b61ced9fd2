//! Fuzz target `anthropic`: the Anthropic adapter (messages, token counting) reads
//! arbitrary bytes as a request, a response body and an event stream without panicking
//! (see `tally_fuzz::providers::run`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_enforcer::providers::Endpoint;
use tally_fuzz::providers::{endpoints, run};

static ENDPOINTS: LazyLock<Vec<Endpoint>> =
    LazyLock::new(|| endpoints(&["/v1/messages", "/v1/messages/count_tokens"]));

fuzz_target!(|data: &[u8]| run(&ENDPOINTS, data));
