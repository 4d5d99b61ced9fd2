//! Fixture events and real Delta tables in a temp dir, shared by the tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use parking_lot::Mutex;
use tally_events::arrow::{
    Table, corrections_to_batch, decisions_to_batch, usage_to_batch, with_day_column,
};
use tally_events::{
    CorrectionEvent, CounterUnit, DecisionEvent, EventHeader, FinishState, Outcome, Provider,
    Route, RuleKind, Timestamp, TokenCounts, UsageEvent, UsageSource,
};
use tally_queries::{QueryConfig, QueryEngine, TailSource};

pub(crate) const HOUR: i64 = 3_600_000_000;

/// A base time an hour ago, so "since 7d" reports include every fixture.
pub(crate) fn t0() -> Timestamp {
    Timestamp::from_micros(Timestamp::now().as_micros() - HOUR)
}

pub(crate) fn header(request_id: &str, tenant: &str, at: Timestamp) -> EventHeader {
    let mut h = EventHeader::new("gw-1", request_id, tenant);
    h.occurred_at = at;
    h.api_key_id = Some(format!("key-{tenant}"));
    h.provider = Some(Provider::Openai);
    h.route = Some(Route::Chat);
    h.model_requested = Some("gpt-4o".into());
    h.model_served = Some("gpt-4o-2024-08-06".into());
    h.labels = BTreeMap::from([("team".to_owned(), format!("{tenant}-team"))]);
    h
}

pub(crate) fn usage(
    request_id: &str,
    tenant: &str,
    at: Timestamp,
    finish: FinishState,
    input: u64,
    output: u64,
    cost: i64,
) -> UsageEvent {
    UsageEvent {
        header: header(request_id, tenant, at),
        upstream: Some("openai-main".into()),
        status_code: Some(200),
        streamed: false,
        finish_state: finish,
        tokens: TokenCounts {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        },
        usage_source: UsageSource::ProviderReported,
        cost_micros: cost,
        price_version: Some("2026-11".into()),
        latency_ms: 120,
        ttft_ms: Some(40),
        retry_attempt: 0,
        retry_of: None,
    }
}

pub(crate) fn decision(
    request_id: &str,
    tenant: &str,
    at: Timestamp,
    outcome: Outcome,
    rule: &str,
    kind: RuleKind,
    reason: &str,
) -> DecisionEvent {
    DecisionEvent {
        header: header(request_id, tenant, at),
        outcome,
        rule: rule.into(),
        rule_kind: kind,
        counter_key: None,
        counter_value: None,
        counter_limit: None,
        counter_unit: None,
        window_start: None,
        window_end: None,
        reset_at: None,
        reserved_tokens: None,
        reserved_cost_micros: None,
        reason: reason.into(),
    }
}

/// The fixture: what happened, in three tables.
pub(crate) struct Fixture {
    pub(crate) usage: Vec<UsageEvent>,
    pub(crate) decisions: Vec<DecisionEvent>,
    pub(crate) corrections: Vec<CorrectionEvent>,
}

pub(crate) fn fixture() -> Fixture {
    let t = t0();
    let at = |min: i64| t.plus_micros(min * 60_000_000);
    let mut usage_events = Vec::new();
    let mut decisions = Vec::new();
    let mut corrections = Vec::new();

    // acme req-1: allowed, completed.
    decisions.push(decision(
        "req-1",
        "acme",
        at(0),
        Outcome::Allow,
        "default",
        RuleKind::Default,
        "no rule matched",
    ));
    let mut u = usage(
        "req-1",
        "acme",
        at(0),
        FinishState::Completed,
        100,
        50,
        1_000,
    );
    u.tokens.cached_input_tokens = 20;
    u.tokens.cache_write_tokens = 10;
    usage_events.push(u);

    // acme req-2: denied by a usage cap.
    let mut d = decision(
        "req-2",
        "acme",
        at(1),
        Outcome::Deny,
        "monthly-cap",
        RuleKind::UsageCap,
        "tenant acme has spent its monthly budget",
    );
    d.counter_key = Some("tenant:acme".into());
    d.counter_value = Some(99_500_000);
    d.counter_limit = Some(100_000_000);
    d.counter_unit = Some(CounterUnit::UsdMicros);
    d.reset_at = Timestamp::parse("2026-12-01T00:00:00Z").ok();
    decisions.push(decision(
        "req-2",
        "acme",
        at(1),
        Outcome::Allow,
        "auth",
        RuleKind::Auth,
        "key ok",
    ));
    decisions.push(d);
    let mut u = usage("req-2", "acme", at(1), FinishState::Denied, 0, 0, 0);
    u.status_code = Some(429);
    u.header.model_served = None;
    usage_events.push(u);

    // acme req-3: first attempt fails upstream, the retry completes.
    decisions.push(decision(
        "req-3",
        "acme",
        at(2),
        Outcome::Allow,
        "default",
        RuleKind::Default,
        "no rule matched",
    ));
    let mut u = usage(
        "req-3",
        "acme",
        at(2),
        FinishState::UpstreamError,
        200,
        0,
        0,
    );
    u.status_code = Some(502);
    usage_events.push(u);
    let mut u = usage(
        "req-3-r1",
        "acme",
        at(3),
        FinishState::Completed,
        200,
        80,
        900,
    );
    u.retry_attempt = 1;
    u.retry_of = Some("req-3".into());
    usage_events.push(u);

    // acme req-4: streamed, aborted by the client, tokens estimated.
    decisions.push(decision(
        "req-4",
        "acme",
        at(4),
        Outcome::Allow,
        "default",
        RuleKind::Default,
        "no rule matched",
    ));
    let mut u = usage(
        "req-4",
        "acme",
        at(4),
        FinishState::ClientAborted,
        300,
        40,
        600,
    );
    u.streamed = true;
    u.usage_source = UsageSource::Estimated;
    u.tokens.reasoning_tokens = 10;
    usage_events.push(u);

    // acme req-5: corrected later (cost 500 -> 700, output 100 -> 120).
    decisions.push(decision(
        "req-5",
        "acme",
        at(5),
        Outcome::Allow,
        "default",
        RuleKind::Default,
        "no rule matched",
    ));
    let u = usage(
        "req-5",
        "acme",
        at(5),
        FinishState::Completed,
        100,
        100,
        500,
    );
    let corrected_id = u.header.event_id;
    usage_events.push(u);
    corrections.push(CorrectionEvent {
        header: header("req-5", "acme", at(30)),
        corrects_event_id: corrected_id,
        reason: "provider usage report differs".into(),
        input_tokens: None,
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: Some(110),
        reasoning_tokens: None,
        cost_micros: Some(650),
        price_version: None,
        usage_source: None,
    });
    corrections.push(CorrectionEvent {
        header: header("req-5", "acme", at(40)),
        corrects_event_id: corrected_id,
        reason: "second look".into(),
        input_tokens: None,
        cached_input_tokens: None,
        cache_write_tokens: None,
        output_tokens: Some(120),
        reasoning_tokens: None,
        cost_micros: Some(700),
        price_version: None,
        usage_source: Some(UsageSource::Mixed),
    });

    // globex: one big completed request and a shadow denial.
    decisions.push(decision(
        "g-1",
        "globex",
        at(6),
        Outcome::Allow,
        "default",
        RuleKind::Default,
        "no rule matched",
    ));
    let mut u = usage(
        "g-1",
        "globex",
        at(6),
        FinishState::Completed,
        1_000,
        500,
        5_000,
    );
    u.header.provider = Some(Provider::Anthropic);
    u.header.route = Some(Route::Messages);
    u.header.model_requested = Some("claude-sonnet".into());
    u.header.model_served = Some("claude-sonnet".into());
    usage_events.push(u);
    decisions.push(decision(
        "g-2",
        "globex",
        at(7),
        Outcome::ShadowDeny,
        "rpm",
        RuleKind::RateLimit,
        "60 requests per minute",
    ));
    let mut u = usage("g-2", "globex", at(7), FinishState::Completed, 10, 10, 20);
    u.header.provider = Some(Provider::Anthropic);
    usage_events.push(u);

    Fixture {
        usage: usage_events,
        decisions,
        corrections,
    }
}

pub(crate) fn usage_batch(events: &[UsageEvent]) -> RecordBatch {
    with_day_column(Table::Usage, &usage_to_batch(events).unwrap()).unwrap()
}

pub(crate) fn decisions_batch(events: &[DecisionEvent]) -> RecordBatch {
    with_day_column(Table::Decisions, &decisions_to_batch(events).unwrap()).unwrap()
}

pub(crate) fn corrections_batch(events: &[CorrectionEvent]) -> RecordBatch {
    with_day_column(Table::Corrections, &corrections_to_batch(events).unwrap()).unwrap()
}

/// Write (append) a batch to the Delta table `table` under `root`, creating it.
pub(crate) async fn write_table(root: &std::path::Path, table: Table, batch: RecordBatch) {
    let dir = root.join(table.name());
    std::fs::create_dir_all(&dir).unwrap();
    let url = url::Url::from_directory_path(&dir).unwrap();
    let t = DeltaTable::try_from_url(url).await.unwrap();
    t.write(vec![batch])
        .with_partition_columns(["day"])
        .await
        .unwrap();
}

/// A temp dir with the fixture committed to the three Delta tables.
pub(crate) async fn committed_fixture() -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    write_table(dir.path(), Table::Usage, usage_batch(&f.usage)).await;
    write_table(dir.path(), Table::Decisions, decisions_batch(&f.decisions)).await;
    write_table(
        dir.path(),
        Table::Corrections,
        corrections_batch(&f.corrections),
    )
    .await;
    (dir, f)
}

/// A tail source over fixed batches.
#[derive(Default)]
pub(crate) struct StaticTail {
    pub(crate) batches: Mutex<Vec<(Table, RecordBatch)>>,
}

impl TailSource for StaticTail {
    fn tail(&self, table: Table) -> Vec<RecordBatch> {
        self.batches
            .lock()
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

pub(crate) async fn engine(root: &std::path::Path) -> QueryEngine {
    engine_with(root, QueryConfig::default(), None).await
}

pub(crate) async fn engine_with(
    root: &std::path::Path,
    config: QueryConfig,
    tail: Option<Arc<dyn TailSource>>,
) -> QueryEngine {
    QueryEngine::new(config, root.to_str().unwrap(), tail)
        .await
        .unwrap()
}
