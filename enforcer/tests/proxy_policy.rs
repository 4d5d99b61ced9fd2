//! Policies in the proxy, over real HTTP: an access rule denies with its reason and a
//! decision event; a token cap with reservations admits until the budget is spent and
//! then denies; a cap with `on_exceed: cut` ends a stream mid-way with a provider-shaped
//! error and a `cut_by_policy` usage event; the same workload in shadow mode passes
//! everything and records the same would-be denials as in enforce mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{harness, request_id, stream_body};
use futures_util::StreamExt;
use tally_events::{FinishState, Outcome, RuleKind};

fn policy_file(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let p = dir.join("policies.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[tokio::test]
async fn access_rules_and_token_caps_deny_with_explained_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let file = policy_file(
        dir.path(),
        r#"
rules:
  - name: no-gpt-4o-for-interns
    match: 'tenant == "interns" && model.startsWith("gpt-4o")'
    action: deny
    reason: interns use gpt-4.1-mini
  - name: acme-daily-tokens
    match: 'tenant == "acme"'
    action: usage-cap
    limit_tokens: 2000
    unit: tokens
    period: day
"#,
    );
    let h = harness(|c| c.policy_file = Some(file)).await;
    let body = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello there"}]});

    // Access rule.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", h.proxy))
        .bearer_auth("dev-interns-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let id = request_id(&resp);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interns use gpt-4.1-mini"),
        "{err}"
    );
    assert_eq!(
        h.wait_usage(&id, 1).await[0].finish_state,
        FinishState::Denied
    );
    let d = h.decisions_for(&id);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].outcome, d[0].rule_kind, d[0].rule.as_str()),
        (Outcome::Deny, RuleKind::Access, "no-gpt-4o-for-interns")
    );

    // Token cap: each request reserves its estimate + max_tokens and settles to real
    // usage; once the real usage has used the budget, requests are denied.
    let mut admitted = 0;
    let mut denied_id = None;
    for _ in 0..40 {
        let resp = h
            .chat(body.clone())
            .header("x-sim-output-tokens", "100")
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        // The cap is a token limit: OpenAI-style token headers on every response, and
        // no request headers (no request limit applies).
        assert_eq!(header("x-ratelimit-limit-tokens").as_deref(), Some("2000"));
        let remaining: i64 = header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!((0..2000).contains(&remaining), "{remaining}");
        assert!(header("x-ratelimit-reset-tokens").unwrap().ends_with('s'));
        assert_eq!(header("x-ratelimit-limit-requests"), None);
        if resp.status() == 200 {
            admitted += 1;
            let id = request_id(&resp);
            let _ = resp.bytes().await;
            h.wait_usage(&id, 1).await;
        } else {
            assert_eq!(resp.status(), 429);
            assert_eq!(header("x-tally-rule").as_deref(), Some("acme-daily-tokens"));
            assert!(header("retry-after").is_some());
            denied_id = Some(request_id(&resp));
            let err: serde_json::Value = resp.json().await.unwrap();
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("denied by tally rule `acme-daily-tokens`: "),
                "{err}"
            );
            break;
        }
    }
    let denied_id = denied_id.expect("the cap must deny eventually");
    let usage: u64 = h
        .usage_for("req_")
        .iter()
        .filter(|u| u.header.tenant == "acme")
        .map(|u| u.tokens.total())
        .sum();
    assert!(admitted >= 10, "admitted only {admitted}");
    assert!(usage <= 2000, "the cap was overshot: {usage} tokens");
    h.wait_usage(&denied_id, 1).await;
    let d = h.decisions_for(&denied_id);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, "acme-daily-tokens");
    assert_eq!(d[0].rule_kind, RuleKind::UsageCap);
    assert_eq!(d[0].counter_limit, Some(2000));
    assert!(d[0].reset_at.is_some() && !d[0].reason.is_empty());
}

#[tokio::test]
async fn a_cap_with_cut_ends_the_stream_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = policy_file(
        dir.path(),
        r#"
rules:
  - name: acme-output-cap
    action: usage-cap
    limit_tokens: 300
    unit: output_tokens
    period: day
    on_exceed: cut
"#,
    );
    let h = harness(|c| c.policy_file = Some(file)).await;
    // max_tokens 250 fits the reservation; the forced 1000-token answer does not fit the cap.
    let resp = h
        .chat(stream_body(250))
        .header("x-sim-output-tokens", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("tally.cut_by_policy"),
        "the client sees a provider-shaped error event"
    );
    let usage = h.wait_usage(&id, 1).await;
    assert_eq!(usage[0].finish_state, FinishState::CutByPolicy);
    assert!(
        usage[0].tokens.output_tokens <= 320,
        "cut near the limit: {:?}",
        usage[0].tokens
    );
    let d = h.decisions_for(&id);
    assert!(
        d.iter()
            .any(|d| d.rule == "acme-output-cap" && d.outcome == Outcome::Deny),
        "{d:?}"
    );
}

/// One workload of 8 identical requests; returns, per request, the rule that denied it
/// (enforce) or the first rule that shadow-denied it (shadow), and whether it passed.
async fn run_workload(mode: &str) -> Vec<(bool, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let file = policy_file(
        dir.path(),
        &format!(
            r#"
rules:
  - name: acme-rpm
    action: rate-limit
    limit: 5
    window: 1m
    mode: {mode}
  - name: acme-daily-tokens
    action: usage-cap
    limit_tokens: 700
    unit: tokens
    period: day
    mode: {mode}
"#
        ),
    );
    let h = harness(|c| c.policy_file = Some(file)).await;
    let body = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut out = Vec::new();
    for _ in 0..8 {
        let resp = h
            .chat(body.clone())
            .header("x-sim-output-tokens", "100")
            .send()
            .await
            .unwrap();
        let passed = resp.status() == 200;
        let id = request_id(&resp);
        let _ = resp.bytes().await;
        h.wait_usage(&id, 1).await;
        let first = h
            .decisions_for(&id)
            .into_iter()
            .find(|d| matches!(d.outcome, Outcome::Deny | Outcome::ShadowDeny))
            .map(|d| {
                assert_eq!(
                    d.outcome,
                    if mode == "shadow" {
                        Outcome::ShadowDeny
                    } else {
                        Outcome::Deny
                    }
                );
                d.rule
            });
        out.push((passed, first));
    }
    out
}

#[tokio::test]
async fn shadow_mode_denies_nothing_and_records_the_same_would_be_denials() {
    let enforced = run_workload("enforce").await;
    let shadow = run_workload("shadow").await;
    let denied: Vec<usize> = (0..8).filter(|&i| !enforced[i].0).collect();
    assert!(
        !denied.is_empty() && denied.len() < 8,
        "the workload must hit a limit: {enforced:?}"
    );
    assert!(
        shadow.iter().all(|(passed, _)| *passed),
        "shadow mode never denies"
    );
    for i in 0..8 {
        assert_eq!(
            enforced[i].1, shadow[i].1,
            "request {i}: enforce {:?} vs shadow {:?}",
            enforced[i], shadow[i]
        );
    }
}
