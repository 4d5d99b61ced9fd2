//! `tally sql`, `tally why`, `tally usage`, `tally top`: queries over the Delta tables in
//! the data directory plus the log tail the ledger has not committed yet, read-only (it
//! works while `tally up` runs). Local file access is admin access: a tenant-scoped view
//! comes from `--token` with a tenant token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tally_events::arrow::Table;
use tally_events::log::{EventLog, LogError, Position, Receipt, Record, SegmentLog};
use tally_queries::{Dimension, Format, Principal, QueryEngine, Since, TopBy};

use crate::GlobalArgs;
use crate::config::TallyConfig;

/// The local log read from its directory, for a process that does not own it.
#[derive(Debug)]
pub(crate) struct ReadOnlyLog {
    dir: PathBuf,
}

impl ReadOnlyLog {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl EventLog for ReadOnlyLog {
    fn append(&self, _key: &str, _payload: &[u8]) -> Result<Receipt, LogError> {
        Err(LogError::Closed(
            "this process reads the log; it does not write it".into(),
        ))
    }

    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        SegmentLog::read_dir(&self.dir, from, max)
    }

    fn checkpoint(&self, _upto: Position) -> Result<(), LogError> {
        Ok(())
    }

    fn durable_end(&self) -> Position {
        // Read until the reader finds no more complete records.
        Position::new(u64::MAX, u64::MAX)
    }
}

/// Which rows the caller may see.
#[derive(Args, Debug, Clone)]
pub(crate) struct Access {
    /// A query token (admin or tenant); without it, local access sees everything.
    #[arg(long, env = "TALLY_TOKEN")]
    token: Option<String>,
}

/// A query engine over the data directory's tables and uncommitted log tail.
pub(crate) async fn local_engine(cfg: &TallyConfig) -> Result<QueryEngine> {
    let root = cfg.tables_root();
    let status = tally_ledger::ledger_status(&cfg.ledger, &root, None)
        .await
        .context("reading the ledger's committed positions")?;
    let committed: HashMap<String, Position> = status
        .tables
        .iter()
        .map(|t| {
            (
                t.table.clone(),
                t.committed_position.unwrap_or(Position::START),
            )
        })
        .collect();
    let positions = move |t: Table| committed.get(t.name()).copied().unwrap_or(Position::START);
    let log: Arc<dyn EventLog> = Arc::new(ReadOnlyLog::new(cfg.log_dir()));
    let tail = tally_queries::LogTail::new(log, Arc::new(positions))
        .with_ledger_app_id(tally_ledger::app_id(&cfg.ledger.source_name));
    Ok(QueryEngine::new(cfg.queries.clone(), &root, Some(Arc::new(tail))).await?)
}

fn principal(cfg: &TallyConfig, access: &Access) -> Result<Principal> {
    match &access.token {
        None => Ok(Principal::Admin),
        Some(t) => tally_queries::Authenticator::new(&cfg.queries)
            .resolve(t)
            .context("query.unauthorized: the token is not an admin or tenant token of queries.admin_tokens / queries.tenant_tokens"),
    }
}

pub(crate) fn sql(global: &GlobalArgs, sql: String, format: Format, access: Access) -> Result<()> {
    let cfg = super::load_config(global)?;
    let who = principal(&cfg, &access)?;
    super::runtime()?.block_on(async move {
        let engine = local_engine(&cfg).await?;
        let stream = engine.execute(&sql, &who).await?;
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let out = ClosedPipeAware {
            inner: std::io::stdout().lock(),
            closed: closed.clone(),
        };
        match tally_queries::write_stream(format, stream, out).await {
            // The reader stopped early (`| head`): not an error.
            Err(_) if closed.load(std::sync::atomic::Ordering::Relaxed) => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    })
}

/// A writer that notes when its reader has gone away (broken pipe).
struct ClosedPipeAware<W> {
    inner: W,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl<W: std::io::Write> ClosedPipeAware<W> {
    fn note<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<W: std::io::Write> std::io::Write for ClosedPipeAware<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

pub(crate) fn why(
    global: &GlobalArgs,
    request_ids: Vec<String>,
    json: bool,
    access: Access,
) -> Result<()> {
    let cfg = super::load_config(global)?;
    let who = principal(&cfg, &access)?;
    super::runtime()?.block_on(async move {
        let engine = local_engine(&cfg).await?;
        let mut reports = Vec::with_capacity(request_ids.len());
        for id in &request_ids {
            reports.push(tally_queries::why(&engine, id, &who).await?);
        }
        match (json, reports.as_slice()) {
            (true, [one]) => println!("{}", serde_json::to_string_pretty(one)?),
            (true, _) => println!("{}", serde_json::to_string_pretty(&reports)?),
            (false, _) => {
                let texts: Vec<String> = reports.iter().map(|r| r.render_text()).collect();
                print!("{}", texts.join("\n"));
            }
        }
        Ok(())
    })
}

pub(crate) fn usage(
    global: &GlobalArgs,
    by: String,
    since: String,
    format: &str,
    access: Access,
) -> Result<()> {
    let cfg = super::load_config(global)?;
    let who = principal(&cfg, &access)?;
    let dims = Dimension::parse_list(&by)?;
    let since = Since::parse(&since)?;
    super::runtime()?.block_on(async move {
        let engine = local_engine(&cfg).await?;
        if format == "html" {
            print!(
                "{}",
                tally_queries::html_report(&engine, since, &who).await?
            );
            return Ok(());
        }
        let report = tally_queries::usage_report(&engine, &dims, since, &who).await?;
        if format == "json" {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render_text());
        }
        Ok(())
    })
}

pub(crate) fn top(
    global: &GlobalArgs,
    by: String,
    dimension: String,
    limit: usize,
    since: String,
    access: Access,
) -> Result<()> {
    let cfg = super::load_config(global)?;
    let who = principal(&cfg, &access)?;
    let by = match by.as_str() {
        "spend" => TopBy::Spend,
        "tokens" => TopBy::Tokens,
        other => {
            anyhow::bail!("query.bad_request: --by must be `spend` or `tokens`, not `{other}`")
        }
    };
    let dims = Dimension::parse_list(&dimension)?;
    let dim = *dims
        .first()
        .context("query.bad_request: --dimension is empty")?;
    let since = Since::parse(&since)?;
    super::runtime()?.block_on(async move {
        let engine = local_engine(&cfg).await?;
        let report = tally_queries::top(&engine, by, dim, limit, since, &who).await?;
        print!("{}", report.render_text());
        Ok(())
    })
}
