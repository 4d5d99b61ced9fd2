//! Tenant isolation: a tenant-scoped principal must see no other tenant's rows, whatever
//! the SQL does.

use std::sync::Arc;

use arrow::array::RecordBatch;
use tally_events::FinishState;
use tally_events::arrow::Table;
use tally_queries::{Principal, TailSource};

use crate::fixtures::*;
use crate::helpers::*;

/// Queries that each try to reach globex's rows; for acme every `tenant`-like column must
/// hold only acme and every count only acme's rows.
const ESCAPES: &[&str] = &[
    "SELECT tenant FROM usage",
    "SELECT tenant FROM usage WHERE tenant = 'globex'",
    "SELECT tenant FROM usage WHERE tenant = 'acme' OR 1 = 1",
    "SELECT tenant FROM usage WHERE tenant <> 'acme'",
    "SELECT tenant FROM \"usage\"",
    "SELECT tenant FROM public.usage",
    "SELECT tenant FROM datafusion.public.usage",
    "SELECT tenant FROM \"datafusion\".\"public\".\"usage\"",
    "SeLeCt TeNaNt FrOm UsAgE",
    "SELECT u.tenant FROM usage AS u",
    "SELECT x.tenant FROM usage x, usage y WHERE x.request_id = y.request_id",
    "SELECT tenant FROM (SELECT * FROM usage) sub",
    "SELECT tenant FROM (SELECT * FROM (SELECT * FROM decisions) a) b",
    "WITH x AS (SELECT * FROM usage) SELECT tenant FROM x",
    "WITH x AS (SELECT tenant FROM decisions), y AS (SELECT tenant FROM x) SELECT tenant FROM y",
    "WITH RECURSIVE r AS (SELECT tenant, 1 AS n FROM usage UNION ALL SELECT tenant, n + 1 FROM r WHERE n < 3) SELECT tenant FROM r",
    "SELECT tenant FROM usage UNION ALL SELECT tenant FROM decisions UNION ALL SELECT tenant FROM corrections",
    "SELECT tenant FROM usage UNION SELECT tenant FROM decisions",
    "SELECT tenant FROM decisions EXCEPT SELECT 'nobody'",
    "SELECT d.tenant AS tenant FROM usage u JOIN decisions d ON true",
    "SELECT d.tenant AS tenant FROM usage u RIGHT JOIN decisions d ON u.request_id = d.request_id",
    "SELECT d.tenant AS tenant FROM usage u FULL OUTER JOIN decisions d ON u.tenant <> d.tenant",
    "SELECT tenant FROM decisions WHERE request_id IN (SELECT request_id FROM usage WHERE tenant = 'globex') OR tenant = 'globex'",
    "SELECT tenant FROM usage WHERE EXISTS (SELECT 1 FROM decisions d WHERE d.tenant = 'globex')",
    "SELECT (SELECT max(tenant) FROM usage WHERE tenant = 'globex') AS tenant",
    "SELECT (SELECT max(d.tenant) FROM decisions d WHERE d.request_id = u.request_id) AS tenant FROM usage u",
    "SELECT tenant FROM requests",
    "SELECT tenant FROM usage_corrected",
    "SELECT tenant FROM usage_hourly",
    "SELECT tenant FROM spend_daily",
    "SELECT tenant FROM denials",
    "SELECT tenant FROM usage, unnest([1, 2]) AS t(n)",
    "SELECT max(tenant) OVER () AS tenant FROM decisions",
    "SELECT tenant FROM usage ORDER BY tenant DESC LIMIT 100",
    "SELECT labels['team'] AS tenant FROM usage",
];

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_rows() {
    let (dir, _) = committed_fixture().await;
    // globex also has an event only in the tail.
    let tail = Arc::new(StaticTail::default());
    tail.batches.lock().push((
        Table::Usage,
        usage_batch(&[usage(
            "g-tail",
            "globex",
            t0(),
            FinishState::Completed,
            1,
            1,
            1,
        )]),
    ));
    let e = engine_with(
        dir.path(),
        Default::default(),
        Some(tail as Arc<dyn TailSource>),
    )
    .await;
    for sql in ESCAPES {
        let b = e
            .collect(sql, &acme())
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        let col = b
            .first()
            .map(|b| b.schema().field(0).name().clone())
            .unwrap_or_else(|| "tenant".into());
        for v in strings(&b, &col).into_iter().flatten() {
            assert!(v.starts_with("acme"), "`{sql}` leaked `{v}`");
        }
        // The same query as admin does reach globex (so the query is a real attempt).
        let admin = e.collect(sql, &Principal::Admin).await.unwrap();
        let col = admin
            .first()
            .map(|b| b.schema().field(0).name().clone())
            .unwrap_or_else(|| "tenant".into());
        let sees_globex = strings(&admin, &col)
            .into_iter()
            .flatten()
            .any(|v| v.starts_with("globex"));
        assert!(
            sees_globex,
            "`{sql}` does not reach globex even for an admin; not a real escape attempt"
        );
    }
}

#[tokio::test]
async fn counts_and_sums_are_scoped() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let a = acme();
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &a).await, 6);
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &globex()).await, 2);
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM usage", &Principal::Admin).await,
        8
    );
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM usage WHERE tenant = 'globex'", &a).await,
        0
    );
    assert_eq!(
        scalar(&e, "SELECT sum(cost_micros) FROM usage_corrected", &a).await,
        3_200
    );
    assert_eq!(
        scalar(
            &e,
            "SELECT count(*) FROM usage u JOIN decisions d ON true",
            &a
        )
        .await,
        6 * 6
    );
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM (SELECT tenant FROM usage UNION ALL SELECT tenant FROM decisions)", &a).await,
        12
    );
    assert_eq!(
        scalar(
            &e,
            "SELECT (SELECT count(*) FROM decisions WHERE tenant = 'globex')",
            &a
        )
        .await,
        0
    );
    // A tenant that does not exist sees nothing at all.
    let nobody = Principal::Tenant("nobody".into());
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM requests", &nobody).await,
        0
    );
    // A tenant name is a value, not SQL.
    let tricky = Principal::Tenant("acme' OR '1'='1".into());
    assert_eq!(scalar(&e, "SELECT count(*) FROM usage", &tricky).await, 0);
}

#[tokio::test]
async fn every_scan_in_the_rewritten_plan_is_filtered_by_tenant() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    for sql in ESCAPES {
        let plan = e.logical_plan(sql, &acme()).await.unwrap();
        let text = plan.display_indent().to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut scans = 0;
        for (i, line) in lines.iter().enumerate() {
            let scanned = line
                .trim_start()
                .strip_prefix("TableScan: ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(|name| {
                    name.rsplit('.')
                        .next()
                        .unwrap_or(name)
                        .trim_matches('"')
                        .to_owned()
                });
            let is_event_scan = scanned
                .as_deref()
                .is_some_and(|t| ["usage", "decisions", "corrections"].contains(&t));
            if is_event_scan {
                scans += 1;
                assert!(
                    i > 0
                        && lines[i - 1].contains("Filter:")
                        && lines[i - 1].contains("tenant = Utf8(\"acme\")"),
                    "`{sql}`: scan without a tenant filter right above it:\n{text}"
                );
            }
        }
        assert!(
            scans > 0 || sql.contains("unnest"),
            "`{sql}` has no scans:\n{text}"
        );
        // Admin plans are not rewritten.
        let admin = e.logical_plan(sql, &Principal::Admin).await.unwrap();
        assert!(
            !admin
                .display_indent()
                .to_string()
                .contains("Utf8(\"acme\")")
                || sql.contains("'acme'")
        );
    }
}

#[tokio::test]
async fn metadata_does_not_leak_data_and_explain_is_admin_only() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let a = acme();
    // The catalog is visible (it holds no rows of anyone).
    let tables = strs(
        &e,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        &a,
        "table_name",
    )
    .await;
    assert!(tables.iter().any(|t| t.as_deref() == Some("usage")));
    e.collect("SELECT * FROM information_schema.columns", &a)
        .await
        .unwrap();
    // EXPLAIN shows files and row counts of every tenant: admins only.
    for sql in [
        "EXPLAIN SELECT * FROM usage",
        "EXPLAIN ANALYZE SELECT count(*) FROM usage",
    ] {
        assert_eq!(err(&e, sql, &a).await.code(), "query.forbidden", "{sql}");
        e.collect(sql, &Principal::Admin).await.unwrap();
    }
}

/// Organisation-wide tables under the same root (here `provider_costs`, as the
/// reconciler writes it) are queryable by admins and refused to tenant tokens, directly
/// and through subqueries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tables_are_admin_only() {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let (dir, _f) = committed_fixture().await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("provider", DataType::Utf8, false),
        Field::new("amount_micros", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["openai", "anthropic"])),
            Arc::new(Int64Array::from(vec![1_250_000, 40_000])),
        ],
    )
    .unwrap();
    let table_dir = dir.path().join("provider_costs");
    std::fs::create_dir_all(&table_dir).unwrap();
    let url = url::Url::from_directory_path(&table_dir).unwrap();
    deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .write(vec![batch])
        .await
        .unwrap();

    let e = tally_queries::QueryEngine::new(Default::default(), dir.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        scalar(
            &e,
            "SELECT sum(amount_micros) FROM provider_costs",
            &Principal::Admin
        )
        .await,
        1_290_000
    );
    // Again (the table is registered already), and as a join with an event table.
    assert_eq!(
        scalar(
            &e,
            "SELECT count(*) FROM provider_costs, usage WHERE provider_costs.provider = 'openai'",
            &Principal::Admin
        )
        .await,
        scalar(&e, "SELECT count(*) FROM usage", &Principal::Admin).await
    );
    for sql in [
        "SELECT * FROM provider_costs",
        "SELECT count(*) FROM usage WHERE cost_micros < (SELECT max(amount_micros) FROM provider_costs)",
        "WITH c AS (SELECT * FROM provider_costs) SELECT count(*) FROM c",
    ] {
        let err = e.collect(sql, &acme()).await.unwrap_err();
        assert_eq!(err.code(), "query.forbidden", "{sql}: {err}");
    }
}
