//! The ledger on an S3-compatible object store: a real `moto_server` on loopback, tables
//! under `s3://bucket/prefix`, endpoint and credentials from storage options. Must skip —
//! saying so — only when moto is not installed, and must stop the server it started.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltalake::datafusion::prelude::SessionContext;
use tally_events::Event;
use tally_events::arrow::Table;
use tally_events::log::EventLog;

use super::external::venv_bin;
use super::support::*;
use crate::config::LedgerConfig;

/// The moto server this test started; stopped (by its own pid) when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> TestResult<Option<Moto>> {
    let Some(bin) = venv_bin("moto_server") else {
        return Ok(None);
    };
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("moto_server did not start listening within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(moto))
}

/// `PUT /<bucket>` (moto accepts unsigned requests).
fn create_bucket(port: u16, bucket: &str) -> TestResult {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("creating bucket: {response}").into());
    }
    Ok(())
}

async fn s3_count(uri: &str, options: &HashMap<String, String>, sql: &str) -> TestResult<i64> {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Int64Type;
    let ctx = SessionContext::new();
    for table in Table::ALL {
        let url = url::Url::parse(&format!("{uri}/{}/", table.name()))?;
        let delta = deltalake::open_table_with_storage_options(url, options.clone()).await?;
        delta.update_datafusion_session(&ctx.state())?;
        ctx.register_table(table.name(), delta.table_provider().await?)?;
    }
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches
        .first()
        .ok_or("no result")?
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_an_s3_compatible_store() -> TestResult {
    let Some(moto) = start_moto()? else {
        println!(
            "SKIPPED tables_on_an_s3_compatible_store: moto is not installed (python3 -m pip install 'moto[server]>=5,<6' into ~/.cache/tally/venv)"
        );
        return Ok(());
    };
    create_bucket(moto.port, "tally-test")?;
    let options: BTreeMap<String, String> = [
        ("endpoint", format!("http://127.0.0.1:{}", moto.port)),
        ("allow_http", "true".into()),
        ("region", "us-east-1".into()),
        ("access_key_id", "test".into()),
        ("secret_access_key", "test".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = LedgerConfig {
        storage_options: options.clone(),
        checkpoint_interval: 2,
        ..config()
    };
    let uri = "s3://tally-test/lake/tables";

    let env = Env::new()?;
    let mut events: Vec<Event> = (0..10).map(|_| usage("acme")).collect();
    events.push(decision("acme"));
    events.push(correction("acme", events[0].header().event_id));
    env.append(&events)?;

    let mut ledger = crate::Ledger::open(cfg.clone(), uri, env.log()).await?;
    assert_eq!(ledger.step().await?.rows, [10, 1, 1]);
    env.append(&[usage("acme")])?;
    ledger.step().await?;
    drop(ledger);

    // Restart, with the first events appended again: nothing twice.
    env.append(&events)?;
    let mut ledger = crate::Ledger::open(cfg.clone(), uri, env.log()).await?;
    for p in ledger.committed_positions().values() {
        assert_ne!(*p, tally_events::log::Position::START);
    }
    let step = ledger.catch_up(|_| {}).await?;
    assert_eq!(step.total_rows(), 0);
    assert_eq!(step.duplicates, events.len() as u64);
    let compacted = ledger.optimize().await?;
    assert!(
        compacted[0].files_added < compacted[0].files_removed,
        "{compacted:?}"
    );

    let opts: HashMap<String, String> = options.into_iter().collect();
    assert_eq!(
        s3_count(uri, &opts, "SELECT count(*) FROM usage").await?,
        11
    );
    assert_eq!(
        s3_count(uri, &opts, "SELECT count(DISTINCT event_id) FROM usage").await?,
        11
    );
    assert_eq!(
        s3_count(uri, &opts, "SELECT count(*) FROM decisions").await?,
        1
    );
    assert_eq!(
        s3_count(uri, &opts, "SELECT count(*) FROM corrections").await?,
        1
    );
    let status = crate::ledger_status(&cfg, uri, Some(env.log())).await?;
    assert!(
        status
            .tables
            .iter()
            .all(|t| t.exists && t.lag_events == Some(0))
    );
    assert_eq!(status.log_durable_end, Some(env.log.durable_end()));
    drop(moto);
    Ok(())
}
