//! Views and reports over the fixture: a denial, a retry, an aborted stream, an
//! estimated usage, a correction.

use tally_queries::{Dimension, Principal, Since, TopBy, Verdict, top, usage_report, why};

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn requests_view_explains_each_attempt_with_its_decision() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let b = e
        .collect(
            "SELECT request_id, root_request_id, decision_rule, decision_outcome, decision_reason FROM requests ORDER BY request_id",
            &Principal::Admin,
        )
        .await
        .unwrap();
    assert_eq!(rows(&b), 8, "one row per usage event");
    let ids = strings(&b, "request_id");
    let rule = strings(&b, "decision_rule");
    let outcome = strings(&b, "decision_outcome");
    let at = |id: &str| ids.iter().position(|x| x.as_deref() == Some(id)).unwrap();
    // The denial wins over the earlier allow of the same request.
    assert_eq!(rule[at("req-2")].as_deref(), Some("monthly-cap"));
    assert_eq!(outcome[at("req-2")].as_deref(), Some("deny"));
    assert_eq!(outcome[at("g-2")].as_deref(), Some("shadow_deny"));
    assert_eq!(outcome[at("req-1")].as_deref(), Some("allow"));
    // The retry is matched to its original request's decision.
    assert_eq!(
        strings(&b, "root_request_id")[at("req-3-r1")].as_deref(),
        Some("req-3")
    );
    assert_eq!(outcome[at("req-3-r1")].as_deref(), Some("allow"));
}

#[tokio::test]
async fn corrections_apply_the_latest_figures() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let b = e
        .collect(
            "SELECT request_id, output_tokens, cost_micros, usage_source, corrected, correction_reason, input_tokens FROM usage_corrected ORDER BY request_id",
            &Principal::Admin,
        )
        .await
        .unwrap();
    let ids = strings(&b, "request_id");
    let i = ids
        .iter()
        .position(|x| x.as_deref() == Some("req-5"))
        .unwrap();
    assert_eq!(ints(&b, "output_tokens")[i], Some(120));
    assert_eq!(ints(&b, "cost_micros")[i], Some(700));
    // Figures the correction leaves out keep the original.
    assert_eq!(ints(&b, "input_tokens")[i], Some(100));
    assert_eq!(strings(&b, "usage_source")[i].as_deref(), Some("mixed"));
    assert_eq!(
        strings(&b, "correction_reason")[i].as_deref(),
        Some("second look")
    );
    assert_eq!(strings(&b, "corrected")[i].as_deref(), Some("true"));
    let j = ids
        .iter()
        .position(|x| x.as_deref() == Some("req-1"))
        .unwrap();
    assert_eq!(strings(&b, "corrected")[j].as_deref(), Some("false"));
    assert_eq!(ints(&b, "cost_micros")[j], Some(1_000));
    assert_eq!(rows(&b), 8);
}

#[tokio::test]
async fn hourly_daily_and_denials_aggregate_corrected_usage() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let a = &Principal::Admin;
    // acme: 1000 + 0 + 0 + 900 + 600 + 700 (corrected) = 3200; globex 5020.
    assert_eq!(
        scalar(
            &e,
            "SELECT sum(cost_micros) FROM usage_hourly WHERE tenant = 'acme'",
            a
        )
        .await,
        3_200
    );
    assert_eq!(
        scalar(&e, "SELECT sum(requests) FROM usage_hourly", a).await,
        8
    );
    assert_eq!(
        scalar(&e, "SELECT sum(errors) FROM usage_hourly", a).await,
        1
    );
    assert_eq!(
        scalar(&e, "SELECT sum(aborted) FROM usage_hourly", a).await,
        1
    );
    assert_eq!(
        scalar(&e, "SELECT sum(retries) FROM usage_hourly", a).await,
        1
    );
    assert_eq!(
        scalar(&e, "SELECT sum(denied) FROM usage_hourly", a).await,
        1
    );
    let usd = strs(
        &e,
        "SELECT CAST(sum(cost_usd) AS VARCHAR) AS usd FROM spend_daily WHERE tenant = 'globex'",
        a,
        "usd",
    )
    .await;
    assert_eq!(usd[0].as_deref(), Some("0.005020"));
    let denials = strs(&e, "SELECT rule FROM denials ORDER BY rule", a, "rule").await;
    assert_eq!(
        denials,
        vec![Some("monthly-cap".to_owned()), Some("rpm".to_owned())]
    );
}

#[tokio::test]
async fn why_explains_a_denial_in_words() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let r = why(&e, "req-2", &Principal::Admin).await.unwrap();
    assert_eq!(r.verdict, Verdict::Denied);
    assert_eq!(r.tenant.as_deref(), Some("acme"));
    assert_eq!(r.decisions.len(), 2);
    let deny = r.decisions.iter().find(|d| d.outcome == "deny").unwrap();
    assert_eq!(deny.counter_value, Some(99_500_000));
    assert_eq!(deny.counter_unit.as_deref(), Some("usd_micros"));
    let text = r.render_text();
    assert!(
        text.contains(
            "Denied by rule monthly-cap (usage_cap): counter 99.5M µ$ of limit 100M µ$ for tenant:acme, resets 2026-12-01T00:00Z — reason: tenant acme has spent its monthly budget"
        ),
        "{text}"
    );
    assert!(text.contains("Decisions (2, in time order)"), "{text}");
}

#[tokio::test]
async fn why_lists_retries_and_respects_tenants() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let r = why(&e, "req-3", &acme()).await.unwrap();
    assert_eq!(r.verdict, Verdict::Allowed);
    let ids: Vec<&str> = r.attempts.iter().map(|a| a.request_id.as_str()).collect();
    assert_eq!(ids, vec!["req-3", "req-3-r1"]);
    assert_eq!(r.attempts[0].finish_state, "upstream_error");
    assert_eq!(r.attempts[1].retry_attempt, 1);
    assert!(r.render_text().contains("req-3-r1"));

    let shadow = why(&e, "g-2", &Principal::Admin).await.unwrap();
    assert_eq!(shadow.verdict, Verdict::ShadowDenied);

    // Another tenant's request does not exist for acme; nor does an unknown id.
    let err = why(&e, "g-1", &acme()).await.unwrap_err();
    assert_eq!(err.code(), "query.not_found");
    assert_eq!(err.http_status(), 404);
    assert_eq!(
        why(&e, "nope", &Principal::Admin).await.unwrap_err().code(),
        "query.not_found"
    );
    // A request id is bound as a value, never spliced into SQL.
    assert_eq!(
        why(&e, "x' OR '1'='1", &Principal::Admin)
            .await
            .unwrap_err()
            .code(),
        "query.not_found"
    );
}

#[tokio::test]
async fn usage_report_says_where_tokens_went() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let r = usage_report(
        &e,
        &[Dimension::Tenant, Dimension::Model],
        Since::parse("7d").unwrap(),
        &Principal::Admin,
    )
    .await
    .unwrap();
    assert_eq!(r.totals.requests, 8);
    assert_eq!(r.totals.cost_micros, 3_200 + 5_020);
    assert_eq!(r.totals.cached_input_tokens, 20);
    assert_eq!(r.totals.reasoning_tokens, 10);
    // Largest spender first.
    assert_eq!(
        r.rows[0].keys,
        vec![Some("globex".to_owned()), Some("claude-sonnet".to_owned())]
    );
    let w = &r.where_tokens_went;
    assert_eq!(w.denied.len(), 2);
    assert!(w.denied.iter().any(|d| d.rule == "monthly-cap"
        && d.requests == 1
        && d.decisions == 1
        && d.outcome == "deny"));
    assert_eq!(w.failed.requests, 1);
    assert_eq!(w.failed.input_tokens, 200);
    assert_eq!(w.aborted.requests, 1);
    assert_eq!(w.aborted.input_tokens, 300);
    assert_eq!(w.retries.requests, 1);
    assert_eq!(w.retries.output_tokens, 80);
    let est = w
        .by_source
        .iter()
        .find(|s| s.usage_source == "estimated")
        .unwrap();
    assert_eq!(est.tokens, 340);
    let total: i64 = w.by_source.iter().map(|s| s.tokens).sum();
    assert!((est.share - 340.0 / total as f64).abs() < 1e-9);

    let text = r.render_text();
    assert!(text.contains("TENANT"), "{text}");
    assert!(
        text.contains("monthly-cap (usage_cap, deny): 1 requests"),
        "{text}"
    );
    assert!(
        text.contains("Retries: 1 requests, 200 input / 80 output tokens, $0.000900"),
        "{text}"
    );
    // Columns are aligned: every table line has the COST column ending at the same place.
    let table: Vec<&str> = text.lines().skip(2).take_while(|l| !l.is_empty()).collect();
    let widths: Vec<usize> = table.iter().map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");

    // Tenant-scoped: acme sees only acme.
    let r = usage_report(
        &e,
        &[Dimension::Tenant],
        Since::parse("7d").unwrap(),
        &acme(),
    )
    .await
    .unwrap();
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.totals.cost_micros, 3_200);
    assert_eq!(r.where_tokens_went.denied.len(), 1);

    // A range after everything is empty.
    let r = usage_report(
        &e,
        &[Dimension::Status],
        Since::parse("1s").unwrap(),
        &Principal::Admin,
    )
    .await
    .unwrap();
    assert!(r.rows.is_empty());
    assert_eq!(r.totals.requests, 0);
}

#[tokio::test]
async fn top_ranks_spenders() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let since = Since::parse("7d").unwrap();
    let t = top(
        &e,
        TopBy::Spend,
        Dimension::Tenant,
        10,
        since,
        &Principal::Admin,
    )
    .await
    .unwrap();
    let keys: Vec<_> = t.rows.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, vec!["globex", "acme"]);
    assert_eq!(t.rows[0].value, 5_020);
    let t = top(
        &e,
        TopBy::Tokens,
        Dimension::Status,
        1,
        since,
        &Principal::Admin,
    )
    .await
    .unwrap();
    assert_eq!(t.rows.len(), 1);
    assert_eq!(t.rows[0].key.as_deref(), Some("completed"));
    assert!(t.render_text().contains("completed"));
}

#[tokio::test]
async fn denials_count_requests_once_and_every_decision() {
    use tally_events::arrow::Table;
    use tally_events::{Outcome, RuleKind};
    let dir = tempfile::tempdir().unwrap();
    let deny = |request: &str| {
        decision(
            request,
            "acme",
            t0(),
            Outcome::ShadowDeny,
            "rpm",
            RuleKind::RateLimit,
            "over the key's requests per minute",
        )
    };
    // The rule decided req-a twice (two decision events) and req-b once.
    let decisions = vec![deny("req-a"), deny("req-a"), deny("req-b")];
    write_table(dir.path(), Table::Decisions, decisions_batch(&decisions)).await;
    let e = engine(dir.path()).await;
    let r = usage_report(
        &e,
        &[Dimension::Tenant],
        Since::parse("7d").unwrap(),
        &Principal::Admin,
    )
    .await
    .unwrap();
    let denied = &r.where_tokens_went.denied;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0].rule.as_str(), denied[0].outcome.as_str()),
        ("rpm", "shadow_deny")
    );
    assert_eq!((denied[0].requests, denied[0].decisions), (2, 3));
}
