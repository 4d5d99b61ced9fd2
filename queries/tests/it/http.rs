//! The HTTP API over loopback, with admin and tenant tokens.

use std::io::Cursor;
use std::sync::Arc;

use arrow::ipc::reader::StreamReader;
use reqwest::StatusCode;
use serde_json::Value;
use tally_queries::{QueryConfig, hash_token};

use crate::fixtures::*;

const ADMIN: &str = "admin-secret";
const ACME: &str = "acme-secret";
const GLOBEX: &str = "globex-secret";

fn config() -> QueryConfig {
    let mut c = QueryConfig::default();
    c.admin_tokens.push(hash_token(ADMIN));
    c.tenant_tokens.insert(hash_token(ACME), "acme".into());
    c.tenant_tokens.insert(hash_token(GLOBEX), "globex".into());
    c
}

struct Server {
    base: String,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Server {
    async fn start(config: QueryConfig) -> Server {
        let (dir, _) = committed_fixture().await;
        let engine = engine_with(dir.path(), config, None).await;
        let app = tally_queries::router(Arc::new(engine));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            _dir: dir,
            client: reqwest::Client::new(),
        }
    }

    fn sql(&self, token: Option<&str>, sql: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .post(format!("{}/v1/sql", self.base))
            .body(sql.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn get(&self, token: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
    }
}

async fn json(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

#[tokio::test]
async fn credentials_decide_what_is_seen() {
    let s = Server::start(config()).await;
    let q = "SELECT request_id, tenant FROM usage ORDER BY request_id";

    let (status, v) = json(s.sql(None, q)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "query.unauthorized");
    let resp = s.sql(Some("wrong"), q).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    let (status, v) = json(s.sql(Some(ADMIN), q)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["columns"][0]["name"], "request_id");
    assert_eq!(v["columns"][0]["type"], "Utf8");
    assert_eq!(v["rows"].as_array().unwrap().len(), 8);
    assert_eq!(v["row_count"], 8);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["row_limit"], 100_000);

    let (status, v) = json(s.sql(Some(ACME), q)).await;
    assert_eq!(status, StatusCode::OK);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["tenant"] == "acme"));

    // JSON request body.
    let (status, v) = json(
        s.client
            .post(format!("{}/v1/sql", s.base))
            .bearer_auth(GLOBEX)
            .json(&serde_json::json!({"sql": "SELECT count(*) AS n FROM requests"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["rows"][0]["n"], 2);
}

#[tokio::test]
async fn errors_are_json_with_codes_and_statuses() {
    let s = Server::start(config()).await;
    for (sql, status, code) in [
        ("DROP TABLE usage", StatusCode::FORBIDDEN, "query.forbidden"),
        (
            "INSERT INTO usage SELECT * FROM usage",
            StatusCode::FORBIDDEN,
            "query.forbidden",
        ),
        ("SELEC 1", StatusCode::BAD_REQUEST, "query.sql"),
        (
            "SELECT * FROM nowhere",
            StatusCode::BAD_REQUEST,
            "query.sql",
        ),
        ("  ", StatusCode::BAD_REQUEST, "query.bad_request"),
    ] {
        let (st, v) = json(s.sql(Some(ACME), sql)).await;
        assert_eq!(st, status, "{sql}: {v}");
        assert_eq!(v["error"]["code"], code, "{sql}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(code));
    }
    let (st, v) = json(
        s.sql(Some(ADMIN), "SELECT 1")
            .header("accept", "application/xml"),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(v["error"]["code"], "query.not_acceptable");
}

#[tokio::test]
async fn csv_ndjson_and_arrow_by_accept() {
    let s = Server::start(config()).await;
    let q = "SELECT request_id, cost_micros FROM usage ORDER BY request_id";

    let resp = s
        .sql(Some(ACME), q)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "request_id,cost_micros");
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[1], "req-1,1000");

    let resp = s
        .sql(Some(ADMIN), q)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap().lines().count(), 8);

    let resp = s
        .sql(Some(ADMIN), q)
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let body = resp.bytes().await.unwrap();
    let reader = StreamReader::try_new(Cursor::new(body.to_vec()), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 8);
}

#[tokio::test]
async fn rows_past_the_limit_are_cut_and_flagged() {
    let s = Server::start(QueryConfig {
        max_rows: 3,
        ..config()
    })
    .await;
    let (status, v) = json(s.sql(Some(ADMIN), "SELECT * FROM usage")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["row_count"], 3);
    assert_eq!(v["row_limit"], 3);
    // Exactly at the limit is not truncated.
    let (_, v) = json(s.sql(Some(ADMIN), "SELECT * FROM usage LIMIT 3")).await;
    assert_eq!(v["truncated"], false);

    let resp = s
        .sql(Some(ADMIN), "SELECT value FROM generate_series(1, 1000000)")
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-tally-row-limit"], "3");
    assert_eq!(resp.text().await.unwrap().lines().count(), 4);
}

#[tokio::test]
async fn slow_queries_get_a_timeout_error() {
    let s = Server::start(QueryConfig {
        timeout_ms: 300,
        ..config()
    })
    .await;
    let started = std::time::Instant::now();
    let (status, v) = json(s.sql(
        Some(ADMIN),
        "SELECT count(*) FROM generate_series(1, 1000000000) a CROSS JOIN generate_series(1, 1000000) b",
    ))
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "query.timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_failure_after_the_first_rows_ends_the_json_with_the_error() {
    let s = Server::start(QueryConfig {
        timeout_ms: 1_000,
        ..config()
    })
    .await;
    // The first row comes at once, the second only after a count that outlasts the
    // deadline.
    let (status, v) = json(s.sql(
        Some(ADMIN),
        "SELECT 1 AS n UNION ALL SELECT count(*) AS n FROM generate_series(1, 1000000000000)",
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(!v["rows"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["error"]["code"], "query.timeout", "{v}");
}

#[tokio::test]
async fn why_usage_and_top_endpoints() {
    let s = Server::start(config()).await;
    let (status, v) = json(s.get(ACME, "/v1/why/req-2")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["verdict"], "denied");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2);
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .starts_with("Denied by rule monthly-cap")
    );

    let (status, v) = json(s.get(GLOBEX, "/v1/why/req-2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "query.not_found");

    let text = s
        .get(ACME, "/v1/why/req-2")
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("Denied by rule monthly-cap (usage_cap)"),
        "{text}"
    );

    let (status, v) = json(s.get(ADMIN, "/v1/usage?by=tenant,model&since=7d")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["totals"]["requests"], 8);
    assert_eq!(v["by"], serde_json::json!(["tenant", "model"]));
    assert_eq!(v["where_tokens_went"]["retries"]["requests"], 1);

    let (status, v) = json(s.get(ACME, "/v1/usage?by=status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["totals"]["requests"], 6);

    let (status, v) = json(s.get(ADMIN, "/v1/usage?by=tenant;DROP")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "query.bad_request");
    let (status, _) = json(s.get(ADMIN, "/v1/usage?since=forever")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, v) = json(s.get(ADMIN, "/v1/top?by=spend&dimension=tenant&limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["rows"][0]["key"], "globex");
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);

    let resp = s
        .client
        .get(format!("{}/v1/usage", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
