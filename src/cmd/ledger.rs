//! `tally ledger status`: lag, last commit and size of each table, read-only.

use anyhow::Result;
use clap::Subcommand;

use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum LedgerCommand {
    /// Per table: committed log position, lag, last commit, files and bytes.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(global: &GlobalArgs, cmd: LedgerCommand) -> Result<()> {
    let cfg = super::load_config(global)?;
    match cmd {
        LedgerCommand::Status { json } => super::runtime()?.block_on(async move {
            let root = cfg.tables_root();
            let log: std::sync::Arc<dyn tally_events::log::EventLog> =
                std::sync::Arc::new(super::query::ReadOnlyLog::new(cfg.log_dir()));
            let status = tally_ledger::ledger_status(&cfg.ledger, &root, Some(log)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!("tables: {}", status.tables_uri);
            if let Some(end) = status.log_durable_end {
                println!("log durable end: {end}");
            }
            println!(
                "{:<12} {:>14} {:>10} {:>10} {:>8} {:>7} {:>12} {:>10}",
                "table", "committed", "lag_events", "lag_s", "version", "files", "bytes", "rows"
            );
            for t in &status.tables {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{:<12} {:>14} {:>10} {:>10} {:>8} {:>7} {:>12} {:>10}",
                    t.table,
                    opt(t.committed_position.map(|p| p.to_string())),
                    opt(t.lag_events.map(|n| n.to_string())),
                    opt(t.lag_seconds.map(|s| format!("{s:.1}"))),
                    opt(t.version.map(|v| v.to_string())),
                    t.files,
                    t.bytes,
                    opt(t.rows.map(|r| r.to_string())),
                );
            }
            for u in &status.undecodable {
                println!("undecodable record: {u:?}");
            }
            Ok(())
        }),
    }
}
