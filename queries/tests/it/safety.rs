//! Read-only: anything that writes, changes the session or reads outside the tables is
//! rejected with `query.forbidden`, decided from the plan.

use tally_queries::Principal;

use crate::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn writes_ddl_and_statements_are_forbidden() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let target = dir.path().join("copied");
    let copy = format!(
        "COPY (SELECT * FROM usage) TO '{}' STORED AS CSV",
        target.display()
    );
    let external = format!(
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
        dir.path().join("usage").display()
    );
    for sql in [
        external.as_str(),
        "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION '/etc/'",
        "CREATE TABLE t AS SELECT * FROM usage",
        "CREATE VIEW v AS SELECT 1",
        "CREATE OR REPLACE VIEW requests AS SELECT * FROM usage",
        "CREATE SCHEMA s",
        "DROP TABLE usage",
        "DROP VIEW requests",
        "INSERT INTO usage SELECT * FROM usage",
        "DELETE FROM usage",
        "UPDATE usage SET cost_micros = 0",
        "TRUNCATE usage",
        copy.as_str(),
        "SET datafusion.execution.batch_size = 1",
        "BEGIN",
        "PREPARE p AS SELECT 1",
        "DEALLOCATE p",
    ] {
        let err = err(&e, sql, &Principal::Admin).await;
        assert!(
            matches!(err.code(), "query.forbidden" | "query.sql"),
            "`{sql}`: {err}"
        );
        if err.code() == "query.sql" {
            // Only statements DataFusion cannot even plan may fail as SQL errors.
            assert!(
                sql.starts_with("TRUNCATE")
                    || sql.starts_with("DEALLOCATE")
                    || sql.starts_with("BEGIN")
                    || sql.starts_with("UPDATE")
                    || sql.starts_with("DELETE"),
                "`{sql}` should be forbidden: {err}"
            );
        } else {
            assert_eq!(err.http_status(), 403);
            assert!(err.to_string().contains("read-only"), "{err}");
        }
    }
    assert!(!target.exists(), "COPY must not write");
    // Nothing changed: the views and tables are intact.
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM requests", &Principal::Admin).await,
        8
    );
}

#[tokio::test]
async fn the_main_statements_are_forbidden_not_merely_unplannable() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    for sql in [
        "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION '/etc/'",
        "INSERT INTO usage SELECT * FROM usage",
        "COPY (SELECT 1) TO '/tmp/tally-should-not-exist.csv'",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE usage",
    ] {
        assert_eq!(
            err(&e, sql, &Principal::Admin).await.code(),
            "query.forbidden",
            "{sql}"
        );
    }
    assert!(!std::path::Path::new("/tmp/tally-should-not-exist.csv").exists());
}

#[tokio::test]
async fn files_cannot_be_read_as_tables() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let file = dir
        .path()
        .join("usage/_delta_log/00000000000000000000.json");
    for sql in [
        format!("SELECT * FROM '{}'", file.display()),
        "SELECT * FROM '/etc/passwd'".to_owned(),
        "SELECT * FROM read_csv('/etc/passwd')".to_owned(),
        "SELECT * FROM read_parquet('/etc/passwd')".to_owned(),
    ] {
        let err = err(&e, &sql, &Principal::Admin).await;
        assert!(
            matches!(err.code(), "query.sql" | "query.forbidden"),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn reading_queries_are_allowed() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    let a = &Principal::Admin;
    for sql in [
        "SELECT 1",
        "SELECT count(*) FROM generate_series(1, 10)",
        "SHOW TABLES",
        "SELECT table_name FROM information_schema.tables",
        "SELECT definition FROM information_schema.views",
        "DESCRIBE usage",
        "EXPLAIN SELECT * FROM usage",
        "WITH x AS (SELECT * FROM usage) SELECT count(*) FROM x",
        "VALUES (1), (2)",
    ] {
        e.collect(sql, a)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
    let tables = strs(&e, "SHOW TABLES", a, "table_name").await;
    for t in [
        "usage",
        "decisions",
        "corrections",
        "requests",
        "usage_corrected",
        "usage_hourly",
        "spend_daily",
        "denials",
    ] {
        assert!(
            tables.iter().any(|x| x.as_deref() == Some(t)),
            "{t} missing from {tables:?}"
        );
    }
}

#[tokio::test]
async fn bad_sql_is_a_clear_400() {
    let (dir, _) = committed_fixture().await;
    let e = engine(dir.path()).await;
    for sql in [
        "SELEC 1",
        "SELECT nope FROM usage",
        "SELECT * FROM nowhere",
        "SELECT 1; SELECT 2",
    ] {
        let err = err(&e, sql, &Principal::Admin).await;
        assert_eq!(err.code(), "query.sql", "{sql}: {err}");
        assert_eq!(err.http_status(), 400);
    }
}

#[tokio::test]
async fn memory_is_limited_per_query() {
    let (dir, _) = committed_fixture().await;
    let config = tally_queries::QueryConfig {
        memory_limit_bytes: 1024 * 1024,
        ..Default::default()
    };
    let e = engine_with(dir.path(), config, None).await;
    let err = err(
        &e,
        "SELECT array_agg(value) FROM generate_series(1, 3000000)",
        &Principal::Admin,
    )
    .await;
    assert_eq!(err.code(), "query.memory", "{err}");
    assert!(err.to_string().contains("1048576 bytes"), "{err}");
    // Small queries still run under the same limit.
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM usage", &Principal::Admin).await,
        8
    );
}

#[tokio::test]
async fn slow_queries_time_out() {
    let (dir, _) = committed_fixture().await;
    let config = tally_queries::QueryConfig {
        timeout_ms: 300,
        ..Default::default()
    };
    let e = engine_with(dir.path(), config, None).await;
    let started = std::time::Instant::now();
    let err = err(
        &e,
        "SELECT count(*) FROM generate_series(1, 1000000000) a CROSS JOIN generate_series(1, 1000000) b",
        &Principal::Admin,
    )
    .await;
    assert_eq!(err.code(), "query.timeout", "{err}");
    assert_eq!(err.http_status(), 504);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
