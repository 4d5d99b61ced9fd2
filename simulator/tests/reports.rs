//! Provider usage and cost reports over real HTTP and through the pure builders: report
//! sums equal what was served, UTC buckets and boundaries, group_by, pagination, each
//! injected discrepancy, 429 injection, auth and parameter errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};
use tally_simulator::reports::{
    self, AnthropicCostQuery, AnthropicUsageQuery, BucketWidth, Credit, GcpBillingQuery,
    OpenAiCostsQuery, OpenAiUsageKind, OpenAiUsageQuery, PriceChange, ReportModel,
};
use tally_simulator::{Provider, ReportsConfig, ServedRecord, SimConfig, api_key_id};

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// 2026-10-01T00:00:00Z
const OCT1: i64 = 1_790_812_800;

// ---------------------------------------------------------------------------------
// helpers

/// Prices the test expects the simulated providers to bill, micro-dollars per million
/// tokens: (uncached input, cache read, cache write, output). Written out here rather
/// than read from the simulator, so a wrong price table fails the tests.
fn price(model: &str) -> (u128, u128, u128, u128) {
    let family = [
        ("gpt-4o-mini", (150_000, 75_000, 150_000, 600_000)),
        ("gpt-4o", (2_500_000, 1_250_000, 2_500_000, 10_000_000)),
        ("text-embedding-3-small", (20_000, 20_000, 20_000, 0)),
        (
            "claude-haiku-4-5",
            (1_000_000, 100_000, 1_250_000, 5_000_000),
        ),
        (
            "claude-sonnet-4-5",
            (3_000_000, 300_000, 3_750_000, 15_000_000),
        ),
        ("gemini-2.0-flash", (100_000, 25_000, 100_000, 400_000)),
        ("gemini-2.5-flash", (300_000, 30_000, 300_000, 2_500_000)),
    ];
    family
        .iter()
        .filter(|(f, _)| model == *f || model.starts_with(&format!("{f}-")))
        .max_by_key(|(f, _)| f.len())
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no test price for {model}"))
}

fn fingerprint(key: &str) -> String {
    let id = api_key_id(Provider::Openai, key);
    format!("sha256:{}", id.strip_prefix("key_").unwrap())
}

/// A synthetic billed record.
#[allow(clippy::too_many_arguments)]
fn rec(
    provider: Provider,
    at_micros: i64,
    key: &str,
    requested: &str,
    served: &str,
    (input, cached, write): (u64, u64, u64),
    output: u64,
    sent: Option<u64>,
) -> ServedRecord {
    let route = match provider {
        Provider::Openai if requested.starts_with("text-embedding") => "/v1/embeddings",
        Provider::Openai => "/v1/chat/completions",
        Provider::Anthropic => "/v1/messages",
        Provider::Gemini => "/v1beta/models/{model}:generateContent",
    };
    ServedRecord {
        at: at_micros,
        provider,
        route: route.into(),
        model_requested: requested.into(),
        model_served: served.into(),
        key_fingerprint: Some(fingerprint(key)),
        request_id: format!("req_{at_micros}"),
        streamed: sent.is_some(),
        status: 200,
        input_tokens: input,
        cached_input_tokens: cached,
        cache_write_tokens: write,
        output_tokens: output,
        reasoning_tokens: 0,
        completed: sent.is_none(),
        output_tokens_sent: sent.unwrap_or(output),
    }
}

fn s(secs: i64) -> i64 {
    secs * 1_000_000
}

/// Output a provider bills for a record (sent tokens for an incomplete one).
fn billed_output(r: &ServedRecord) -> u64 {
    if r.completed {
        r.output_tokens
    } else {
        r.output_tokens_sent
    }
}

async fn admin_get(
    c: &reqwest::Client,
    sim: &tally_simulator::SimHandle,
    provider: Provider,
    path_and_query: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let req = c.get(format!("{}{path_and_query}", sim.base_url()));
    let req = match provider {
        Provider::Anthropic => req
            .header("x-api-key", "sk-ant-admin-test")
            .header("anthropic-version", "2023-06-01"),
        _ => req.bearer_auth("sk-admin-test"),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

/// Every page of a report, following `next_page` (page cursor appended as `page=`).
async fn all_pages(
    c: &reqwest::Client,
    sim: &tally_simulator::SimHandle,
    provider: Provider,
    path_and_query: &str,
) -> Vec<Value> {
    let mut buckets = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..1_000 {
        let pq = match &page {
            Some(p) => format!("{path_and_query}&page={p}"),
            None => path_and_query.to_owned(),
        };
        let (status, body, _) = admin_get(c, sim, provider, &pq).await;
        assert_eq!(status, 200, "{pq}: {body}");
        buckets.extend(body["data"].as_array().unwrap().iter().cloned());
        if body["has_more"] == true {
            page = Some(body["next_page"].as_str().unwrap().to_owned());
        } else {
            assert!(body["next_page"].is_null());
            return buckets;
        }
    }
    panic!("pagination does not end");
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

/// OpenAI dollars → micro-dollars.
fn oa_micros(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 1e6).round() as i64
}

/// Anthropic cents string → micro-dollars, exactly.
fn cents_micros(v: &Value) -> i64 {
    let s = v.as_str().unwrap();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= 4, "more than 4 decimals of a cent: {s}");
    let m = int.parse::<i64>().unwrap() * 10_000 + format!("{frac:0<4}").parse::<i64>().unwrap();
    if neg { -m } else { m }
}

fn round_pico(pico: u128) -> i64 {
    ((pico + 500_000) / 1_000_000) as i64
}

fn results(buckets: &[Value]) -> Vec<Value> {
    buckets
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap().clone())
        .collect()
}

fn csv_rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    // The simulator quotes only the credits column (JSON); split on commas outside quotes.
    let split = |line: &str| {
        let mut cells = Vec::new();
        let (mut cur, mut quoted) = (String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(ch) = chars.next() {
            match ch {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => cells.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        cells.push(cur);
        cells
    };
    let mut lines = csv.lines();
    let header = split(lines.next().unwrap());
    lines
        .map(|l| {
            let cells = split(l);
            assert_eq!(cells.len(), header.len(), "{l}");
            header.iter().cloned().zip(cells).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// live traffic

async fn chat(
    c: &reqwest::Client,
    sim: &tally_simulator::SimHandle,
    key: &str,
    body: Value,
) -> reqwest::Response {
    c.post(format!("{}/v1/chat/completions", sim.base_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn live_traffic_adds_up_in_every_report() {
    let sim = start().await;
    let c = client();
    let (key_a, key_b) = ("sk-test-openai", "sk-team-b");

    // OpenAI: non-streaming, streaming, an aborted stream, two long prompts (the second
    // hits the prompt cache), embeddings, and a failure that is not billed.
    let msg = |text: &str| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    assert_eq!(
        chat(&c, &sim, key_a, msg("hello there")).await.status(),
        200
    );
    let mut streamed = msg("stream this");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = chat(&c, &sim, key_b, streamed).await;
    assert_eq!(r.status(), 200);
    let (_, err) = read_frames(r).await;
    assert!(err.is_none());
    let mut aborted = msg("this stream breaks");
    aborted["stream"] = json!(true);
    let r = c
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .bearer_auth(key_a)
        .header("x-sim-output-tokens", "40")
        .header("x-sim-fail-after-chunks", "3")
        .json(&aborted)
        .send()
        .await
        .unwrap();
    let (_, err) = read_frames(r).await;
    assert!(err.is_some(), "the stream must break");
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(150);
    for q in ["first question", "second question"] {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": long}, {"role": "user", "content": q}]});
        assert_eq!(chat(&c, &sim, key_a, body).await.status(), 200);
    }
    let r = openai(
        &c,
        &sim,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "embed me"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .bearer_auth(key_a)
        .header("x-sim-status", "500")
        .json(&msg("fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    // Anthropic: a cache write then a cache read, and an aborted stream.
    let big = "Policy clause: every request is accounted exactly. ".repeat(150);
    for q in ["q1", "q2"] {
        let body = json!({"model": "claude-haiku-4-5", "max_tokens": 50,
            "system": [{"type": "text", "text": big, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": q}]});
        assert_eq!(
            anthropic(&c, &sim, "/v1/messages", &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "stream and break"}]});
    let r = anthropic(&c, &sim, "/v1/messages", &body)
        .header("x-sim-output-tokens", "40")
        .header("x-sim-fail-after-chunks", "2")
        .send()
        .await
        .unwrap();
    let (_, err) = read_frames(r).await;
    assert!(err.is_some());

    // Gemini: non-streaming and streaming (a thinking model).
    let gem = json!({"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]});
    let r = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.0-flash:generateContent",
        &gem,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = gemini(
        &c,
        &sim,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        &gem,
    )
    .send()
    .await
    .unwrap();
    let (_, err) = read_frames(r).await;
    assert!(err.is_none());

    let served = served_at_least(&sim, 12).await;
    assert_eq!(served.len(), 12);
    let billed: Vec<&ServedRecord> = served.iter().filter(|r| r.status == 200).collect();
    assert_eq!(billed.len(), 11);
    assert!(
        billed
            .iter()
            .any(|r| !r.completed && r.output_tokens_sent < r.output_tokens),
        "an aborted stream must be part of the traffic"
    );
    assert!(
        billed
            .iter()
            .any(|r| r.provider == Provider::Openai && r.cached_input_tokens > 0)
    );
    assert!(billed.iter().any(|r| r.cache_write_tokens > 0));
    assert!(
        billed
            .iter()
            .any(|r| r.provider == Provider::Anthropic && r.cached_input_tokens > 0)
    );

    let first_day = served.iter().map(|r| r.at / 1_000_000).min().unwrap() / DAY * DAY;
    let (start, end) = (first_day, first_day + 2 * DAY);

    // OpenAI completions usage by key and model.
    let (status, body, headers) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!("/v1/organization/usage/completions?start_time={start}&end_time={end}&group_by[]=api_key_id&group_by[]=model&limit=2"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(body["object"], "page");
    assert_eq!(body["has_more"], false);
    let rows = results(body["data"].as_array().unwrap());
    let mut want: BTreeMap<(String, String), (u64, u64, u64, u64)> = BTreeMap::new();
    for r in billed
        .iter()
        .filter(|r| r.provider == Provider::Openai && r.route != "/v1/embeddings")
    {
        let k = (
            api_key_id(
                Provider::Openai,
                if r.key_fingerprint == Some(fingerprint(key_a)) {
                    key_a
                } else {
                    key_b
                },
            ),
            r.model_served.clone(),
        );
        let w = want.entry(k).or_default();
        w.0 += r.input_tokens;
        w.1 += billed_output(r);
        w.2 += r.cached_input_tokens;
        w.3 += 1;
    }
    let mut got: BTreeMap<(String, String), (u64, u64, u64, u64)> = BTreeMap::new();
    for row in &rows {
        assert_eq!(row["object"], "organization.usage.completions.result");
        assert!(row["project_id"].is_null() && row["user_id"].is_null() && row["batch"].is_null());
        let k = (
            row["api_key_id"].as_str().unwrap().to_owned(),
            row["model"].as_str().unwrap().to_owned(),
        );
        let g = got.entry(k).or_default();
        g.0 += u(&row["input_tokens"]);
        g.1 += u(&row["output_tokens"]);
        g.2 += u(&row["input_cached_tokens"]);
        g.3 += u(&row["num_model_requests"]);
    }
    assert_eq!(got, want);
    assert!(
        got.keys()
            .any(|(k, _)| *k == api_key_id(Provider::Openai, key_b))
    );

    // Embeddings usage.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/usage/embeddings?start_time={start}&end_time={end}&group_by=model"
        ),
    )
    .await;
    let rows = results(body["data"].as_array().unwrap());
    assert_eq!(rows.len(), 1, "{body}");
    let emb = billed.iter().find(|r| r.route == "/v1/embeddings").unwrap();
    assert_eq!(rows[0]["object"], "organization.usage.embeddings.result");
    assert_eq!(rows[0]["model"], "text-embedding-3-small");
    assert_eq!(u(&rows[0]["input_tokens"]), emb.input_tokens);
    assert_eq!(u(&rows[0]["num_model_requests"]), 1);

    // OpenAI costs by line item equal tokens × the test's prices, rounded once per
    // (day, key, model, kind) line, then added up over keys.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/costs?start_time={start}&end_time={end}&group_by=line_item&limit=2"
        ),
    )
    .await;
    let mut per_key: BTreeMap<(i64, String, Option<String>), (u128, u64)> = BTreeMap::new();
    for r in billed.iter().filter(|r| r.provider == Provider::Openai) {
        let day = r.at / 1_000_000 / DAY * DAY;
        let (pi, pc, _, po) = price(&r.model_served);
        let m = &r.model_served;
        for (what, tokens, p) in [
            ("input", r.input_tokens - r.cached_input_tokens, pi),
            ("cached input", r.cached_input_tokens, pc),
            ("output", billed_output(r), po),
        ] {
            if tokens > 0 {
                let k = (day, format!("{m}, {what}"), r.key_fingerprint.clone());
                let w = per_key.entry(k).or_default();
                w.0 += u128::from(tokens) * p;
                w.1 += tokens;
            }
        }
    }
    assert!(
        per_key.len()
            > per_key
                .keys()
                .map(|(d, l, _)| (d, l))
                .collect::<BTreeSet<_>>()
                .len(),
        "two keys share a line item"
    );
    let mut want: BTreeMap<(i64, String), (i64, u64)> = BTreeMap::new();
    for ((day, line, _), (pico, tokens)) in per_key {
        let w = want.entry((day, line)).or_default();
        w.0 += round_pico(pico);
        w.1 += tokens;
    }
    let mut got = BTreeMap::new();
    for b in body["data"].as_array().unwrap() {
        for row in b["results"].as_array().unwrap() {
            assert_eq!(row["object"], "organization.costs.result");
            assert_eq!(row["amount"]["currency"], "usd");
            got.insert(
                (
                    b["start_time"].as_i64().unwrap(),
                    row["line_item"].as_str().unwrap().to_owned(),
                ),
                (oa_micros(&row["amount"]["value"]), u(&row["quantity"])),
            );
        }
    }
    assert_eq!(got, want);
    assert!(
        got.keys()
            .any(|(_, l)| l == "gpt-4o-2024-08-06, cached input")
    );

    // Anthropic usage and costs.
    let q = format!(
        "starting_at={}&ending_at={}&group_by[]=model&limit=2",
        reports_rfc3339(start),
        reports_rfc3339(end)
    );
    let (status, body, headers) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        &format!("/v1/organizations/usage_report/messages?{q}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("request-id"));
    let rows = results(body["data"].as_array().unwrap());
    let mut got: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for row in &rows {
        assert!(row["api_key_id"].is_null() && row["workspace_id"].is_null());
        let g = got
            .entry(row["model"].as_str().unwrap().to_owned())
            .or_default();
        g[0] += u(&row["uncached_input_tokens"]);
        g[1] += u(&row["cache_read_input_tokens"]);
        g[2] += u(&row["cache_creation"]["ephemeral_5m_input_tokens"]);
        g[3] += u(&row["output_tokens"]);
        assert_eq!(row["cache_creation"]["ephemeral_1h_input_tokens"], 0);
    }
    let mut want: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for r in billed.iter().filter(|r| r.provider == Provider::Anthropic) {
        let w = want.entry(r.model_served.clone()).or_default();
        w[0] += r.input_tokens - r.cached_input_tokens - r.cache_write_tokens;
        w[1] += r.cached_input_tokens;
        w[2] += r.cache_write_tokens;
        w[3] += billed_output(r);
    }
    assert_eq!(got, want);

    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        &format!(
            "/v1/organizations/cost_report?starting_at={}&ending_at={}&group_by[]=description&limit=2",
            reports_rfc3339(start),
            reports_rfc3339(end)
        ),
    )
    .await;
    let mut got: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for b in body["data"].as_array().unwrap() {
        for row in b["results"].as_array().unwrap() {
            assert_eq!(row["currency"], "USD");
            assert_eq!(row["cost_type"], "tokens");
            assert_eq!(row["service_tier"], "standard");
            assert_eq!(row["context_window"], "0-200k");
            assert!(row["description"].as_str().unwrap().contains(" Usage - "));
            got.insert(
                (
                    b["starting_at"].as_str().unwrap().to_owned(),
                    row["model"].as_str().unwrap().to_owned(),
                    row["token_type"].as_str().unwrap().to_owned(),
                ),
                cents_micros(&row["amount"]),
            );
        }
    }
    let mut want: BTreeMap<(String, String, String), u128> = BTreeMap::new();
    for r in billed.iter().filter(|r| r.provider == Provider::Anthropic) {
        let day = reports_rfc3339(r.at / 1_000_000 / DAY * DAY);
        let (pi, pc, pw, po) = price(&r.model_served);
        for (tt, tokens, p) in [
            (
                "uncached_input_tokens",
                r.input_tokens - r.cached_input_tokens - r.cache_write_tokens,
                pi,
            ),
            ("cache_read_input_tokens", r.cached_input_tokens, pc),
            (
                "cache_creation.ephemeral_5m_input_tokens",
                r.cache_write_tokens,
                pw,
            ),
            ("output_tokens", billed_output(r), po),
        ] {
            if tokens > 0 {
                *want
                    .entry((day.clone(), r.model_served.clone(), tt.to_owned()))
                    .or_default() += u128::from(tokens) * p;
            }
        }
    }
    let want: BTreeMap<_, _> = want.into_iter().map(|(k, p)| (k, round_pico(p))).collect();
    assert_eq!(got, want);

    // Gemini billing export rows.
    let resp = c
        .get(format!(
            "{}/_sim/reports/gcp-billing.csv?start={}&end={}",
            sim.base_url(),
            reports_rfc3339(start),
            reports_rfc3339(end)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/csv"));
    let rows = csv_rows(&resp.text().await.unwrap());
    let mut got: BTreeMap<(String, String), (u64, i64)> = BTreeMap::new();
    for row in &rows {
        assert_eq!(row["service.description"], "Gemini API");
        assert_eq!(row["currency"], "USD");
        assert_eq!(row["usage.unit"], "count");
        assert_eq!(row["project.id"], "gen-lang-client-0000000000");
        assert_eq!(row["credits"], "[]");
        assert!(row["usage_start_time"].ends_with(":00:00 UTC"), "{row:?}");
        let cost = row["cost"].replace('.', "").parse::<i64>().unwrap();
        let hour = row["usage_start_time"].clone();
        let g = got
            .entry((hour, row["sku.description"].clone()))
            .or_default();
        g.0 += row["usage.amount"].parse::<u64>().unwrap();
        g.1 += cost;
    }
    let mut want: BTreeMap<(String, String), (u64, u128)> = BTreeMap::new();
    for r in billed.iter().filter(|r| r.provider == Provider::Gemini) {
        let hour = reports_rfc3339(r.at / 1_000_000 / HOUR * HOUR)
            .replace('T', " ")
            .replace('Z', " UTC");
        let name = if r.model_served.starts_with("gemini-2.5-flash") {
            "Gemini 2.5 Flash"
        } else {
            "Gemini 2.0 Flash"
        };
        let (pi, _, _, po) = price(&r.model_served);
        for (label, tokens, p) in [
            ("Input Tokens", r.input_tokens, pi),
            ("Output", billed_output(r), po),
        ] {
            let w = want
                .entry((hour.clone(), format!("{name} - {label}")))
                .or_default();
            w.0 += tokens;
            w.1 += u128::from(tokens) * p;
        }
    }
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(k, (t, p))| (k, (t, round_pico(p))))
        .collect();
    assert_eq!(got, want);
}

fn reports_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(DAY);
    let rem = secs.rem_euclid(DAY);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------
// buckets and pages

#[tokio::test]
async fn buckets_are_utc_aligned_and_bounded() {
    assert_eq!(reports_rfc3339(OCT1), "2026-10-01T00:00:00Z");
    let sim = start().await;
    let c = client();
    let oa = |at, input| {
        rec(
            Provider::Openai,
            at,
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (input, 0, 0),
            1,
            None,
        )
    };
    let an = |at, input| {
        rec(
            Provider::Anthropic,
            at,
            "sk-a",
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            (input, 0, 0),
            1,
            None,
        )
    };
    sim.simulator().push_served([
        oa(s(OCT1 + DAY) - 1, 10), // the last microsecond of Oct 1
        oa(s(OCT1 + DAY), 20),     // the first of Oct 2
        oa(s(OCT1 + DAY + 5 * HOUR + 30), 40),
        an(s(OCT1 + DAY) - 1, 10),
        an(s(OCT1 + DAY), 20),
        an(s(OCT1 + DAY + 5 * HOUR + 30), 40),
    ]);

    // Daily, from an unaligned start: snapped to midnight UTC, the empty day listed too.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/usage/completions?start_time={}&end_time={}",
            OCT1 + 123,
            OCT1 + 3 * DAY
        ),
    )
    .await;
    let data = body["data"].as_array().unwrap();
    let starts: Vec<i64> = data
        .iter()
        .map(|b| b["start_time"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, [OCT1, OCT1 + DAY, OCT1 + 2 * DAY]);
    for b in data {
        assert_eq!(b["object"], "bucket");
        assert_eq!(
            b["end_time"].as_i64().unwrap(),
            b["start_time"].as_i64().unwrap() + DAY
        );
    }
    let inputs: Vec<u64> = data
        .iter()
        .map(|b| {
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| u(&r["input_tokens"]))
                .sum()
        })
        .collect();
    assert_eq!(inputs, [10, 60, 0]);
    assert!(data[2]["results"].as_array().unwrap().is_empty());

    // end_time is exclusive: the bucket starting at it is not listed.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/usage/completions?start_time={OCT1}&end_time={}",
            OCT1 + DAY
        ),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);

    // Hourly on Oct 2: 00:00 and 05:00 carry the records.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/usage/completions?start_time={}&end_time={}&bucket_width=1h",
            OCT1 + DAY,
            OCT1 + DAY + 6 * HOUR
        ),
    )
    .await;
    let per_hour: Vec<u64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| u(&r["input_tokens"]))
                .sum()
        })
        .collect();
    assert_eq!(per_hour, [20, 0, 0, 0, 0, 40]);

    // Anthropic: buckets that end at or before ending_at; RFC 3339 bucket times.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        &format!(
            "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:30Z&ending_at={}",
            reports_rfc3339(OCT1 + DAY + 12 * HOUR)
        ),
    )
    .await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{body}");
    assert_eq!(data[0]["starting_at"], "2026-10-01T00:00:00Z");
    assert_eq!(data[0]["ending_at"], "2026-10-02T00:00:00Z");
    assert_eq!(u(&data[0]["results"][0]["uncached_input_tokens"]), 10);
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00%2B00:00&ending_at=2026-10-03T00:00:00Z&bucket_width=1d",
    )
    .await;
    let per_day: Vec<u64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| u(&r["uncached_input_tokens"]))
                .sum()
        })
        .collect();
    assert_eq!(per_day, [10, 60]);
}

#[tokio::test]
async fn pagination_walks_every_bucket_once() {
    let sim = start().await;
    let c = client();
    let hours = 31 * 24;
    let mut recs = Vec::new();
    for h in 0..hours {
        let at = s(OCT1 + h * HOUR + 17);
        let (i, o) = (h as u64 + 1, 2 * h as u64 + 1);
        recs.push(rec(
            Provider::Openai,
            at,
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (i, 0, 0),
            o,
            None,
        ));
        recs.push(rec(
            Provider::Anthropic,
            at,
            "sk-a",
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            (i, 0, 0),
            o,
            None,
        ));
    }
    sim.simulator().push_served(recs);
    let total_in: u64 = (1..=hours as u64).sum();
    let end = OCT1 + 31 * DAY;

    let check = |buckets: &[Value], key: &str, width: i64, n: i64| {
        let starts: Vec<i64> = buckets
            .iter()
            .map(|b| match b.get("start_time") {
                Some(t) => t.as_i64().unwrap(),
                None => {
                    let s = b["starting_at"].as_str().unwrap();
                    (0..n)
                        .map(|i| OCT1 + i * width)
                        .find(|t| reports_rfc3339(*t) == s)
                        .unwrap()
                }
            })
            .collect();
        let want: Vec<i64> = (0..n).map(|i| OCT1 + i * width).collect();
        assert_eq!(starts, want, "every bucket once, in order");
        let sum: u64 = results(buckets).iter().map(|r| u(&r[key])).sum();
        assert_eq!(sum, total_in);
    };

    let buckets = all_pages(
        &c,
        &sim,
        Provider::Openai,
        &format!("/v1/organization/usage/completions?start_time={OCT1}&end_time={end}&bucket_width=1h&limit=50"),
    )
    .await;
    check(&buckets, "input_tokens", HOUR, hours);
    let buckets = all_pages(
        &c,
        &sim,
        Provider::Anthropic,
        &format!(
            "/v1/organizations/usage_report/messages?starting_at={}&ending_at={}&bucket_width=1h&limit=100",
            reports_rfc3339(OCT1),
            reports_rfc3339(end)
        ),
    )
    .await;
    check(&buckets, "uncached_input_tokens", HOUR, hours);
    let buckets = all_pages(
        &c,
        &sim,
        Provider::Anthropic,
        &format!(
            "/v1/organizations/usage_report/messages?starting_at={}&ending_at={}",
            reports_rfc3339(OCT1),
            reports_rfc3339(end)
        ),
    )
    .await;
    check(&buckets, "uncached_input_tokens", DAY, 31);

    // Costs, a day at a time: each day's lines rounded once.
    let mut want_oa = 0i64;
    let mut want_an = 0i64;
    for d in 0..31 {
        let hs = d * 24..(d + 1) * 24;
        let i: u128 = hs.clone().map(|h| h as u128 + 1).sum();
        let o: u128 = hs.map(|h| 2 * h as u128 + 1).sum();
        want_oa += round_pico(i * 150_000) + round_pico(o * 600_000);
        want_an += round_pico(i * 1_000_000) + round_pico(o * 5_000_000);
    }
    let buckets = all_pages(
        &c,
        &sim,
        Provider::Openai,
        &format!("/v1/organization/costs?start_time={OCT1}&end_time={end}&limit=5"),
    )
    .await;
    assert_eq!(buckets.len(), 31);
    let got: i64 = results(&buckets)
        .iter()
        .map(|r| oa_micros(&r["amount"]["value"]))
        .sum();
    assert_eq!(got, want_oa);
    let buckets = all_pages(
        &c,
        &sim,
        Provider::Anthropic,
        &format!(
            "/v1/organizations/cost_report?starting_at={}&ending_at={}&limit=7",
            reports_rfc3339(OCT1),
            reports_rfc3339(end)
        ),
    )
    .await;
    assert_eq!(buckets.len(), 31);
    let got: i64 = results(&buckets)
        .iter()
        .map(|r| cents_micros(&r["amount"]))
        .sum();
    assert_eq!(got, want_an);
}

// ---------------------------------------------------------------------------------
// group_by and identities

#[tokio::test]
async fn group_by_identity_maps_and_filters() {
    let (ka, kb) = ("sk-alpha", "sk-beta");
    let (ida, idb) = (
        api_key_id(Provider::Openai, ka),
        api_key_id(Provider::Openai, kb),
    );
    let (wa, wb) = (
        api_key_id(Provider::Anthropic, ka),
        api_key_id(Provider::Anthropic, kb),
    );
    assert!(ida.starts_with("key_") && ida.len() == 16);
    assert!(wa.starts_with("apikey_") && wa.len() == 19);
    let mut cfg = SimConfig::default();
    cfg.reports
        .project_of_key
        .insert(ida.clone(), "proj_alpha".into());
    cfg.reports
        .workspace_of_key
        .insert(wa.clone(), "wrkspc_alpha".into());
    let sim = start_with(cfg).await;
    let c = client();
    let t = s(OCT1 + 3 * HOUR);
    sim.simulator().push_served([
        rec(
            Provider::Openai,
            t,
            ka,
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (100, 0, 0),
            10,
            None,
        ),
        rec(
            Provider::Openai,
            t,
            ka,
            "gpt-4o",
            "gpt-4o-2024-08-06",
            (200, 0, 0),
            20,
            None,
        ),
        rec(
            Provider::Openai,
            t,
            kb,
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (400, 0, 0),
            40,
            None,
        ),
        rec(
            Provider::Openai,
            t,
            kb,
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (800, 0, 0),
            80,
            None,
        ),
        rec(
            Provider::Anthropic,
            t,
            ka,
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            (100, 0, 0),
            10,
            None,
        ),
        rec(
            Provider::Anthropic,
            t,
            kb,
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            (300, 0, 0),
            30,
            None,
        ),
    ]);
    let base = format!(
        "/v1/organization/usage/completions?start_time={OCT1}&end_time={}",
        OCT1 + DAY
    );

    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!("{base}&group_by=project_id&group_by[]=model"),
    )
    .await;
    let rows = results(body["data"].as_array().unwrap());
    let got: BTreeSet<(String, String, u64, u64)> = rows
        .iter()
        .map(|r| {
            assert!(
                r["api_key_id"].is_null()
                    && r["user_id"].is_null()
                    && r["batch"].is_null()
                    && r["service_tier"].is_null()
            );
            (
                r["project_id"].as_str().unwrap().to_owned(),
                r["model"].as_str().unwrap().to_owned(),
                u(&r["input_tokens"]),
                u(&r["num_model_requests"]),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64, u64)> = [
        ("proj_alpha", "gpt-4o-2024-08-06", 200, 1),
        ("proj_alpha", "gpt-4o-mini-2024-07-18", 100, 1),
        ("proj_default", "gpt-4o-mini-2024-07-18", 1200, 2),
    ]
    .into_iter()
    .map(|(p, m, i, n)| (p.to_owned(), m.to_owned(), i, n))
    .collect();
    assert_eq!(got, want);

    // Ungrouped: one row, every dimension null, the same totals.
    let (_, body, _) = admin_get(&c, &sim, Provider::Openai, &base).await;
    let rows = results(body["data"].as_array().unwrap());
    assert_eq!(rows.len(), 1);
    for d in [
        "project_id",
        "api_key_id",
        "model",
        "user_id",
        "batch",
        "service_tier",
    ] {
        assert!(rows[0][d].is_null(), "{d}");
    }
    assert_eq!(u(&rows[0]["input_tokens"]), 1500);
    assert_eq!(u(&rows[0]["output_tokens"]), 150);

    // batch and service_tier as dimensions; a key filter.
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!("{base}&group_by=batch,service_tier,api_key_id&api_key_ids={idb}"),
    )
    .await;
    let rows = results(body["data"].as_array().unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["batch"], false);
    assert_eq!(rows[0]["service_tier"], "default");
    assert_eq!(rows[0]["api_key_id"], idb.as_str());
    assert_eq!(u(&rows[0]["input_tokens"]), 1200);

    // Costs by project add up to the ungrouped total.
    let cbase = format!(
        "/v1/organization/costs?start_time={OCT1}&end_time={}",
        OCT1 + DAY
    );
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!("{cbase}&group_by[]=project_id"),
    )
    .await;
    let by_project: BTreeMap<String, i64> = results(body["data"].as_array().unwrap())
        .iter()
        .map(|r| {
            (
                r["project_id"].as_str().unwrap().to_owned(),
                oa_micros(&r["amount"]["value"]),
            )
        })
        .collect();
    let (_, body, _) = admin_get(&c, &sim, Provider::Openai, &cbase).await;
    let total: i64 = results(body["data"].as_array().unwrap())
        .iter()
        .map(|r| oa_micros(&r["amount"]["value"]))
        .sum();
    assert_eq!(by_project.values().sum::<i64>(), total);
    // proj_alpha: gpt-4o-mini 100×0.15 + 10×0.6 = 21 µ$; gpt-4o 200×2.5 + 20×10 = 700 µ$.
    assert_eq!(by_project["proj_alpha"], 721);
    assert_eq!(by_project["proj_default"], 180 + 72);

    // Anthropic workspaces: the unmapped key is in the default workspace (null).
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z&ending_at=2026-10-02T00:00:00Z&group_by[]=workspace_id&group_by[]=api_key_id",
    )
    .await;
    let got: BTreeSet<(Option<String>, String, u64)> = results(body["data"].as_array().unwrap())
        .iter()
        .map(|r| {
            (
                r["workspace_id"].as_str().map(str::to_owned),
                r["api_key_id"].as_str().unwrap().to_owned(),
                u(&r["uncached_input_tokens"]),
            )
        })
        .collect();
    let want: BTreeSet<_> = [
        (Some("wrkspc_alpha".to_owned()), wa.clone(), 100),
        (None, wb.clone(), 300),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let (_, body, _) = admin_get(
        &c,
        &sim,
        Provider::Anthropic,
        "/v1/organizations/cost_report?starting_at=2026-10-01T00:00:00Z&ending_at=2026-10-02T00:00:00Z&group_by[]=workspace_id",
    )
    .await;
    let got: BTreeMap<Option<String>, i64> = results(body["data"].as_array().unwrap())
        .iter()
        .map(|r| {
            (
                r["workspace_id"].as_str().map(str::to_owned),
                cents_micros(&r["amount"]),
            )
        })
        .collect();
    // 100×1 + 10×5 = 150 µ$; 300×1 + 30×5 = 450 µ$.
    assert_eq!(
        got,
        BTreeMap::from([(Some("wrkspc_alpha".to_owned()), 150), (None, 450)])
    );
}

// ---------------------------------------------------------------------------------
// injections, through the pure builders

/// A fixed day of traffic for the injection tests.
fn fixture() -> Vec<ServedRecord> {
    vec![
        // OpenAI, Oct 1 morning: cached input.
        rec(
            Provider::Openai,
            s(OCT1 + 6 * HOUR),
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (2_000, 1_024, 0),
            1_000,
            None,
        ),
        // OpenAI, Oct 1 evening: an aborted stream (300 of 900 output tokens sent).
        rec(
            Provider::Openai,
            s(OCT1 + 18 * HOUR),
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (1_000, 0, 0),
            900,
            Some(300),
        ),
        // OpenAI, one second before midnight.
        rec(
            Provider::Openai,
            s(OCT1 + DAY - 1),
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (500, 0, 0),
            50,
            None,
        ),
        // OpenAI, Oct 2.
        rec(
            Provider::Openai,
            s(OCT1 + DAY + HOUR),
            "sk-a",
            "gpt-4o",
            "gpt-4o-2024-08-06",
            (100, 0, 0),
            10,
            None,
        ),
        // Anthropic: a cache write, and an aborted stream.
        rec(
            Provider::Anthropic,
            s(OCT1 + 2 * HOUR),
            "sk-a",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            (3_000, 0, 2_048),
            100,
            None,
        ),
        rec(
            Provider::Anthropic,
            s(OCT1 + 20 * HOUR),
            "sk-a",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            (500, 0, 0),
            400,
            Some(40),
        ),
        // Gemini.
        rec(
            Provider::Gemini,
            s(OCT1 + 9 * HOUR),
            "sk-a",
            "gemini-2.5-flash",
            "gemini-2.5-flash",
            (700, 0, 0),
            70,
            None,
        ),
    ]
}

fn oa_usage(cfg: &ReportsConfig, group_by: &[&str]) -> Value {
    let q = OpenAiUsageQuery {
        start_time: OCT1,
        end_time: Some(OCT1 + 2 * DAY),
        group_by: group_by.iter().map(|g| (*g).to_owned()).collect(),
        ..OpenAiUsageQuery::default()
    };
    reports::openai_usage(OpenAiUsageKind::Completions, &fixture(), &q, cfg).unwrap()
}

fn oa_costs(cfg: &ReportsConfig, group_by: &[&str]) -> Value {
    let q = OpenAiCostsQuery {
        start_time: OCT1,
        end_time: Some(OCT1 + 2 * DAY),
        group_by: group_by.iter().map(|g| (*g).to_owned()).collect(),
        ..OpenAiCostsQuery::default()
    };
    reports::openai_costs(&fixture(), &q, cfg).unwrap()
}

fn an_usage(cfg: &ReportsConfig) -> Value {
    let q = AnthropicUsageQuery {
        starting_at: OCT1,
        ending_at: Some(OCT1 + 2 * DAY),
        bucket_width: BucketWidth::Day,
        ..AnthropicUsageQuery::default()
    };
    reports::anthropic_usage(&fixture(), &q, cfg).unwrap()
}

fn an_costs(cfg: &ReportsConfig, group_by: &[&str]) -> Value {
    let q = AnthropicCostQuery {
        starting_at: OCT1,
        ending_at: Some(OCT1 + 2 * DAY),
        group_by: group_by.iter().map(|g| (*g).to_owned()).collect(),
        ..AnthropicCostQuery::default()
    };
    reports::anthropic_costs(&fixture(), &q, cfg).unwrap()
}

fn gcp(cfg: &ReportsConfig) -> String {
    reports::gcp_billing_csv(
        &fixture(),
        &GcpBillingQuery {
            start: OCT1,
            end: OCT1 + 2 * DAY,
        },
        cfg,
    )
    .unwrap()
}

/// Per-day sums of a usage field.
fn per_day(report: &Value, field: &str) -> Vec<u64> {
    report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| u(&r[field]))
                .sum()
        })
        .collect()
}

/// Line item → micro-dollars per day.
fn lines(report: &Value) -> BTreeMap<(i64, String), i64> {
    let mut m = BTreeMap::new();
    for b in report["data"].as_array().unwrap() {
        for r in b["results"].as_array().unwrap() {
            m.insert(
                (
                    b["start_time"].as_i64().unwrap(),
                    r["line_item"].as_str().unwrap().to_owned(),
                ),
                oa_micros(&r["amount"]["value"]),
            );
        }
    }
    m
}

#[test]
fn default_config_reports_exactly_what_was_served() {
    let cfg = ReportsConfig::default();
    let u = oa_usage(&cfg, &[]);
    assert_eq!(per_day(&u, "input_tokens"), [3_500, 100]);
    assert_eq!(per_day(&u, "output_tokens"), [1_000 + 300 + 50, 10]);
    assert_eq!(per_day(&u, "input_cached_tokens"), [1_024, 0]);
    assert_eq!(per_day(&u, "num_model_requests"), [3, 1]);
    let l = lines(&oa_costs(&cfg, &["line_item"]));
    let m = "gpt-4o-mini-2024-07-18";
    // input: (976 + 1000 + 500) × 0.15 = 371.4 → 371; cached 1024 × 0.075 = 76.8 → 77;
    // output (1000 + 300 + 50) × 0.6 = 810.
    assert_eq!(l[&(OCT1, format!("{m}, input"))], 371);
    assert_eq!(l[&(OCT1, format!("{m}, cached input"))], 77);
    assert_eq!(l[&(OCT1, format!("{m}, output"))], 810);
    assert_eq!(l[&(OCT1 + DAY, "gpt-4o-2024-08-06, input".to_owned())], 250);
    assert_eq!(
        l[&(OCT1 + DAY, "gpt-4o-2024-08-06, output".to_owned())],
        100
    );
    assert_eq!(l.len(), 5);
    // The ungrouped total is the sum of the rounded lines.
    let total: Vec<i64> = oa_costs(&cfg, &[])["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| oa_micros(&b["results"][0]["amount"]["value"]))
        .collect();
    assert_eq!(total, [371 + 77 + 810, 350]);
    // Anthropic: 952 uncached × 3 + 2048 write × 3.75 + 100 out × 15 = 2856 + 7680 + 1500,
    // then 500 × 3 + 40 × 15 = 1500 + 600.
    let a = an_usage(&cfg);
    assert_eq!(per_day(&a, "uncached_input_tokens"), [952 + 500, 0]);
    assert_eq!(per_day(&a, "output_tokens"), [140, 0]);
    let c = an_costs(&cfg, &[]);
    assert_eq!(c["data"][0]["results"][0]["amount"], "1.4136", "{c}");
    assert!(c["data"][1]["results"].as_array().unwrap().is_empty());
}

#[test]
fn bill_aborted_in_full_changes_only_aborted_output() {
    let base = ReportsConfig::default();
    let cfg = ReportsConfig {
        bill_aborted_in_full: true,
        ..ReportsConfig::default()
    };
    let (b, i) = (oa_usage(&base, &[]), oa_usage(&cfg, &[]));
    assert_eq!(
        per_day(&i, "output_tokens"),
        [per_day(&b, "output_tokens")[0] + 600, 10]
    );
    for f in ["input_tokens", "input_cached_tokens", "num_model_requests"] {
        assert_eq!(per_day(&i, f), per_day(&b, f), "{f}");
    }
    let (lb, li) = (
        lines(&oa_costs(&base, &["line_item"])),
        lines(&oa_costs(&cfg, &["line_item"])),
    );
    for (k, v) in &lb {
        let want = if k.1 == "gpt-4o-mini-2024-07-18, output" {
            v + 360
        } else {
            *v
        };
        assert_eq!(li[k], want, "{k:?}");
    }
    assert_eq!(per_day(&an_usage(&cfg), "output_tokens"), [500, 0]);
}

#[test]
fn clock_skew_moves_records_across_the_boundary() {
    let base = ReportsConfig::default();
    let cfg = ReportsConfig {
        clock_skew_ms: 2_000,
        ..ReportsConfig::default()
    };
    let (b, i) = (oa_usage(&base, &[]), oa_usage(&cfg, &[]));
    // The record one second before midnight lands on Oct 2; nothing else moves.
    assert_eq!(per_day(&i, "input_tokens"), [3_000, 600]);
    assert_eq!(per_day(&i, "num_model_requests"), [2, 2]);
    let sum = |v: Vec<u64>| v.iter().sum::<u64>();
    assert_eq!(
        sum(per_day(&i, "output_tokens")),
        sum(per_day(&b, "output_tokens"))
    );
    // A negative skew leaves this fixture's days alone.
    let cfg = ReportsConfig {
        clock_skew_ms: -2_000,
        ..ReportsConfig::default()
    };
    assert_eq!(oa_usage(&cfg, &[]), b);
}

#[test]
fn report_model_requested_renames_only() {
    let cfg = ReportsConfig {
        report_model: ReportModel::Requested,
        ..ReportsConfig::default()
    };
    let models = |v: &Value| -> BTreeMap<String, u64> {
        results(v["data"].as_array().unwrap())
            .iter()
            .map(|r| {
                (
                    r["model"].as_str().unwrap().to_owned(),
                    u(&r["input_tokens"]),
                )
            })
            .collect()
    };
    let b = models(&oa_usage(&ReportsConfig::default(), &["model"]));
    let i = models(&oa_usage(&cfg, &["model"]));
    assert_eq!(
        b.keys().collect::<Vec<_>>(),
        ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]
    );
    assert_eq!(i.keys().collect::<Vec<_>>(), ["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(
        b.values().collect::<Vec<_>>(),
        i.values().collect::<Vec<_>>()
    );
    let li = lines(&oa_costs(&cfg, &["line_item"]));
    assert_eq!(li[&(OCT1, "gpt-4o-mini, output".to_owned())], 810);
}

#[test]
fn zero_cached_tokens_hides_cache_reads_in_usage_only() {
    let base = ReportsConfig::default();
    let cfg = ReportsConfig {
        zero_cached_tokens: true,
        ..ReportsConfig::default()
    };
    let (b, i) = (oa_usage(&base, &[]), oa_usage(&cfg, &[]));
    assert_eq!(per_day(&i, "input_cached_tokens"), [0, 0]);
    assert_eq!(per_day(&i, "input_tokens"), per_day(&b, "input_tokens"));
    assert_eq!(
        oa_costs(&cfg, &["line_item"]),
        oa_costs(&base, &["line_item"])
    );
    assert_eq!(an_usage(&cfg), an_usage(&base));
}

#[test]
fn price_change_reprices_requests_from_its_moment() {
    let base = ReportsConfig::default();
    let cfg = ReportsConfig {
        price_changes: vec![PriceChange {
            model: "gpt-4o-mini".into(),
            effective_from: "2026-10-01T12:00:00Z".into(),
            input: 0.30,
            cached_input: Some(0.15),
            cache_write: None,
            output: 1.20,
        }],
        ..ReportsConfig::default()
    };
    assert_eq!(oa_usage(&cfg, &["model"]), oa_usage(&base, &["model"]));
    let li = lines(&oa_costs(&cfg, &["line_item"]));
    let m = "gpt-4o-mini-2024-07-18";
    // input: 976 × 0.15 (06:00, old) + 1500 × 0.30 (18:00 and 23:59, new) = 146.4 + 450.
    assert_eq!(li[&(OCT1, format!("{m}, input"))], 596);
    assert_eq!(li[&(OCT1, format!("{m}, cached input"))], 77);
    // output: 1000 × 0.6 + 350 × 1.2 = 600 + 420.
    assert_eq!(li[&(OCT1, format!("{m}, output"))], 1_020);
    // Other models keep their price.
    let lb = lines(&oa_costs(&base, &["line_item"]));
    assert_eq!(
        li[&(OCT1 + DAY, "gpt-4o-2024-08-06, input".to_owned())],
        lb[&(OCT1 + DAY, "gpt-4o-2024-08-06, input".to_owned())]
    );
}

#[test]
fn credits_are_negative_lines_on_their_day() {
    let base = ReportsConfig::default();
    let cfg = ReportsConfig {
        credits: vec![
            Credit {
                provider: Provider::Openai,
                date: "2026-10-02".into(),
                amount_usd: 5.0,
                description: "Refund: outage".into(),
            },
            Credit {
                provider: Provider::Anthropic,
                date: "2026-10-01".into(),
                amount_usd: -2.5,
                description: "Promotional credit".into(),
            },
            Credit {
                provider: Provider::Gemini,
                date: "2026-10-01".into(),
                amount_usd: 1.25,
                description: "Free tier".into(),
            },
        ],
        ..ReportsConfig::default()
    };
    let (lb, li) = (
        lines(&oa_costs(&base, &["line_item"])),
        lines(&oa_costs(&cfg, &["line_item"])),
    );
    assert_eq!(li[&(OCT1 + DAY, "Refund: outage".to_owned())], -5_000_000);
    assert_eq!(li.len(), lb.len() + 1);
    for (k, v) in &lb {
        assert_eq!(li[k], *v);
    }
    let total = |v: &Value| -> Vec<i64> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                b["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| oa_micros(&r["amount"]["value"]))
                    .sum()
            })
            .collect()
    };
    let (tb, ti) = (total(&oa_costs(&base, &[])), total(&oa_costs(&cfg, &[])));
    assert_eq!(ti, [tb[0], tb[1] - 5_000_000]);
    // Usage is untouched.
    assert_eq!(oa_usage(&cfg, &[]), oa_usage(&base, &[]));

    let c = an_costs(&cfg, &["description"]);
    let credit = c["data"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"] == "Promotional credit")
        .unwrap()
        .clone();
    assert_eq!(credit["amount"], "-250.00");
    assert!(
        credit["cost_type"].is_null()
            && credit["model"].is_null()
            && credit["token_type"].is_null()
    );
    let t = |v: &Value| cents_micros(&v["data"][0]["results"][0]["amount"]);
    assert_eq!(
        t(&an_costs(&cfg, &[])),
        t(&an_costs(&base, &[])) - 2_500_000
    );

    let rows = csv_rows(&gcp(&cfg));
    let credit_rows: Vec<_> = rows.iter().filter(|r| r["credits"] != "[]").collect();
    assert_eq!(credit_rows.len(), 1);
    let credits: Value = serde_json::from_str(&credit_rows[0]["credits"]).unwrap();
    assert_eq!(credits[0]["amount"], -1.25);
    assert_eq!(credits[0]["name"], "Free tier");
    assert_eq!(credit_rows[0]["cost"], "0.000000");
    assert_eq!(
        credit_rows[0]["usage_start_time"],
        "2026-10-01 00:00:00 UTC"
    );
    assert_eq!(rows.len(), csv_rows(&gcp(&base)).len() + 1);
}

#[test]
fn gcp_rows_are_hourly_per_sku() {
    let rows = csv_rows(&gcp(&ReportsConfig::default()));
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["usage_start_time"].clone(),
                r["sku.description"].clone(),
                r["usage.amount"].clone(),
                r["cost"].clone(),
            )
        })
        .collect();
    // 700 × 0.30 = 210 µ$; 70 × 2.5 = 175 µ$.
    assert_eq!(
        got,
        [
            (
                "2026-10-01 09:00:00 UTC".into(),
                "Gemini 2.5 Flash - Input Tokens".into(),
                "700".into(),
                "0.000210".into()
            ),
            (
                "2026-10-01 09:00:00 UTC".into(),
                "Gemini 2.5 Flash - Output".into(),
                "70".into(),
                "0.000175".into()
            ),
        ]
    );
    assert_eq!(rows[0]["usage_end_time"], "2026-10-01 10:00:00 UTC");
    assert_eq!(rows[0]["invoice.month"], "202610");
    assert_eq!(rows[0]["service.description"], "Gemini API");
    assert_ne!(rows[0]["sku.id"], rows[1]["sku.id"]);
    // Outside the period: nothing but the header.
    let csv = reports::gcp_billing_csv(
        &fixture(),
        &GcpBillingQuery {
            start: OCT1 + 10 * HOUR,
            end: OCT1 + DAY,
        },
        &ReportsConfig::default(),
    )
    .unwrap();
    assert_eq!(csv.lines().count(), 1);
}

// ---------------------------------------------------------------------------------
// 429s, auth, errors

#[tokio::test]
async fn every_nth_report_request_is_rate_limited() {
    let mut cfg = SimConfig::default();
    cfg.reports.rate_limit_every = 3;
    cfg.retry_after_secs = 2;
    let sim = start_with(cfg).await;
    let c = client();
    let oa = format!(
        "/v1/organization/usage/completions?start_time={OCT1}&end_time={}",
        OCT1 + DAY
    );
    let an = "/v1/organizations/cost_report?starting_at=2026-10-01T00:00:00Z&ending_at=2026-10-02T00:00:00Z";
    let mut statuses = Vec::new();
    for i in 0..7 {
        let (provider, pq) = if i % 2 == 0 {
            (Provider::Openai, oa.as_str())
        } else {
            (Provider::Anthropic, an)
        };
        // An unauthenticated request in between does not count.
        let r = c
            .get(format!("{}{pq}", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let (status, body, headers) = admin_get(&c, &sim, provider, pq).await;
        if status == 429 {
            assert_eq!(headers["retry-after"], "2");
            match provider {
                Provider::Anthropic => assert_eq!(body["error"]["type"], "rate_limit_error"),
                _ => assert_eq!(body["error"]["code"], "rate_limit_exceeded"),
            }
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 200]);
}

#[tokio::test]
async fn auth_and_parameter_errors_use_the_provider_formats() {
    let sim = start().await;
    let c = client();
    let url = |pq: &str| format!("{}{pq}", sim.base_url());
    let oa = format!("/v1/organization/usage/completions?start_time={OCT1}");

    // OpenAI: no key, or a key in the wrong header.
    for req in [c.get(url(&oa)), c.get(url(&oa)).header("x-api-key", "k")] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("API key"));
    }
    // Anthropic: no key → 401; no version → 400.
    let an = "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z";
    let r = c
        .get(url(an))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "authentication_error");
    let r = c
        .get(url(an))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["type"], "invalid_request_error");

    for (pq, param) in [
        (
            "/v1/organization/usage/completions".to_owned(),
            "start_time",
        ),
        (
            "/v1/organization/usage/completions?start_time=yesterday".to_owned(),
            "start_time",
        ),
        (format!("{oa}&bucket_width=1w"), "bucket_width"),
        (format!("{oa}&limit=0"), "limit"),
        (format!("{oa}&bucket_width=1d&limit=32"), "limit"),
        (format!("{oa}&group_by=line_item"), "group_by"),
        (format!("{oa}&page=not-a-cursor"), "page"),
        (format!("{oa}&end_time={}", OCT1 - 1), "end_time"),
        (
            format!("/v1/organization/usage/embeddings?start_time={OCT1}&group_by=batch"),
            "group_by",
        ),
        (
            format!("/v1/organization/costs?start_time={OCT1}&bucket_width=1h"),
            "bucket_width",
        ),
        (
            format!("/v1/organization/costs?start_time={OCT1}&limit=181"),
            "limit",
        ),
        (
            format!("/v1/organization/costs?start_time={OCT1}&group_by=model"),
            "group_by",
        ),
    ] {
        let (status, body, _) = admin_get(&c, &sim, Provider::Openai, &pq).await;
        assert_eq!(status, 400, "{pq}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{pq}");
        assert_eq!(body["error"]["param"], param, "{pq}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("report."),
            "{body}"
        );
    }
    for pq in [
        "/v1/organizations/usage_report/messages",
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01",
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z&bucket_width=2h",
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z&group_by[]=project_id",
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z&ending_at=2026-09-01T00:00:00Z",
        "/v1/organizations/usage_report/messages?starting_at=2026-10-01T00:00:00Z&page=page_bm9wZQ==",
        "/v1/organizations/cost_report?starting_at=2026-10-01T00:00:00Z&limit=32",
        "/v1/organizations/cost_report?starting_at=2026-10-01T00:00:00Z&group_by[]=model",
    ] {
        let (status, body, _) = admin_get(&c, &sim, Provider::Anthropic, pq).await;
        assert_eq!(status, 400, "{pq}: {body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{pq}");
    }
    for pq in [
        "/_sim/reports/gcp-billing.csv",
        "/_sim/reports/gcp-billing.csv?start=2026-10-01&end=soon",
    ] {
        let r = c.get(url(pq)).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["status"], "INVALID_ARGUMENT");
    }
}

#[tokio::test]
async fn report_requests_are_not_served_records_and_pushes_stay_bounded() {
    let cfg = SimConfig {
        served_capacity: 3,
        ..SimConfig::default()
    };
    let sim = start_with(cfg).await;
    let c = client();
    let one = |i: i64| {
        rec(
            Provider::Openai,
            s(OCT1 + i),
            "sk-a",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            (1, 0, 0),
            1,
            None,
        )
    };
    sim.simulator().push_served((0..5).map(one));
    assert_eq!(sim.served().len(), 3);
    assert_eq!(sim.simulator().served_evicted(), 2);
    assert_eq!(sim.served()[0].at, s(OCT1 + 2));
    let (status, body, _) = admin_get(
        &c,
        &sim,
        Provider::Openai,
        &format!(
            "/v1/organization/usage/completions?start_time={OCT1}&end_time={}",
            OCT1 + DAY
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(u(&body["data"][0]["results"][0]["num_model_requests"]), 3);
    assert_eq!(sim.served().len(), 3);
    assert_eq!(sim.simulator().served_evicted(), 2);
}

#[test]
fn reports_config_reads_from_yaml() {
    let cfg: SimConfig = serde_yaml_ng::from_str(
        r#"
reports:
  bill_aborted_in_full: true
  clock_skew_ms: -1500
  report_model: requested
  zero_cached_tokens: true
  rate_limit_every: 5
  project_of_key: {key_0123456789ab: proj_alpha}
  workspace_of_key: {apikey_0123456789ab: wrkspc_alpha}
  price_changes:
    - {model: gpt-4o-mini, effective_from: "2026-10-15T00:00:00Z", input: 0.2, output: 0.8}
  credits:
    - {provider: anthropic, date: "2026-10-20", amount_usd: 25, description: "Outage credit"}
"#,
    )
    .unwrap();
    assert!(cfg.validate().is_ok());
    let r = &cfg.reports;
    assert!(r.bill_aborted_in_full && r.zero_cached_tokens);
    assert_eq!((r.clock_skew_ms, r.rate_limit_every), (-1500, 5));
    assert_eq!(r.report_model, ReportModel::Requested);
    assert_eq!(r.project_of_key["key_0123456789ab"], "proj_alpha");
    assert_eq!(r.credits[0].provider, Provider::Anthropic);
    assert!(serde_yaml_ng::from_str::<SimConfig>("reports: {rate_limit_evry: 5}").is_err());
}
