//! The Postgres wire protocol with the real psql client: login by token, scoping by
//! tenant, catalog listing.

use std::process::Command;
use std::sync::Arc;

use tally_queries::{QueryConfig, hash_token};

use crate::fixtures::*;

const ADMIN: &str = "admin-secret";
const ACME: &str = "acme-secret";

fn psql_available() -> bool {
    Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Pg {
    port: u16,
    _dir: tempfile::TempDir,
}

async fn start() -> Pg {
    let (dir, _) = committed_fixture().await;
    let mut config = QueryConfig::default();
    config.admin_tokens.push(hash_token(ADMIN));
    config.tenant_tokens.insert(hash_token(ACME), "acme".into());
    let engine = Arc::new(engine_with(dir.path(), config, None).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(tally_queries::serve_postgres_on(engine, listener));
    Pg { port, _dir: dir }
}

/// Run psql; returns (success, stdout, stderr).
async fn psql(port: u16, user: &str, password: &str, command: &str) -> (bool, String, String) {
    let (user, password, command) = (user.to_owned(), password.to_owned(), command.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = Command::new("psql")
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                &user,
                "-d",
                "datafusion",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &command,
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_through_the_wire_protocol_with_tenant_scoping() {
    if !psql_available() {
        eprintln!("psql is not installed; skipping the Postgres wire protocol test");
        return;
    }
    let pg = start().await;

    let (ok, out, err) = psql(pg.port, "admin", ADMIN, "SELECT count(*) FROM usage").await;
    assert!(ok, "{err}");
    assert_eq!(out, "8");

    let (ok, out, err) = psql(pg.port, "acme", ACME, "SELECT count(*) FROM usage").await;
    assert!(ok, "{err}");
    assert_eq!(out, "6", "a tenant login sees only its rows");
    let (ok, out, err) = psql(
        pg.port,
        "acme",
        ACME,
        "SELECT DISTINCT tenant FROM requests UNION SELECT tenant FROM (SELECT tenant FROM decisions) d",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "acme");

    let (ok, out, err) = psql(pg.port, "acme", ACME, "\\dt").await;
    assert!(ok, "{err}");
    for t in ["usage", "decisions", "corrections"] {
        assert!(
            out.lines().any(|l| l.contains(&format!("|{t}|"))),
            "{t} not in:\n{out}"
        );
    }

    // Read-only here too.
    let (ok, _, err) = psql(pg.port, "admin", ADMIN, "DROP TABLE usage").await;
    assert!(!ok);
    assert!(err.contains("query.forbidden"), "{err}");
    let (ok, _, err) = psql(
        pg.port,
        "admin",
        ADMIN,
        "SET datafusion.execution.batch_size = 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("query.forbidden"), "{err}");

    // Wrong password, or a tenant token under another user name: no login.
    let (ok, _, err) = psql(pg.port, "acme", "wrong", "SELECT 1").await;
    assert!(!ok, "{err}");
    let (ok, _, err) = psql(pg.port, "globex", ACME, "SELECT 1").await;
    assert!(!ok, "{err}");
}
