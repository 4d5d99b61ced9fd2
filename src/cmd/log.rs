//! `tally log`: read the local event log: decoded events as JSON lines, and statistics.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Subcommand;
use tally_events::log::{Position, SegmentLog};

use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum LogCommand {
    /// Print events as JSON lines, oldest first.
    Inspect {
        /// Start position `segment:offset` (default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// Stop after this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Segments, size and end position of the log.
    Stats,
}

fn parse_position(s: &str) -> Result<Position> {
    let (seg, off) = s
        .split_once(':')
        .context("log.position: expected `segment:offset`, e.g. 0:16")?;
    Ok(Position::new(seg.parse()?, off.parse()?))
}

pub(crate) fn run(global: &GlobalArgs, cmd: LogCommand) -> Result<()> {
    let cfg = super::load_config(global)?;
    let dir = cfg.log_dir();
    anyhow::ensure!(
        dir.exists(),
        "log.missing: no event log at {} (run `tally up` first, or pass --data-dir)",
        dir.display()
    );
    match cmd {
        LogCommand::Inspect { from, limit } => {
            let mut pos = match from {
                Some(f) => parse_position(&f)?,
                None => Position::START,
            };
            let mut left = limit;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            while left > 0 {
                let records = SegmentLog::read_dir(&dir, pos, left.min(1000))?;
                if records.is_empty() {
                    break;
                }
                for r in &records {
                    match tally_events::decode(&r.payload) {
                        Ok(event) => writeln!(out, "{}", serde_json::to_string(&event)?)?,
                        Err(e) => eprintln!("{}: skipped record at {}: {e}", e.code(), r.position),
                    }
                    pos = r.next;
                }
                left = left.saturating_sub(records.len());
            }
            Ok(())
        }
        LogCommand::Stats => {
            // Read-only: works while `tally up` holds the log open.
            let mut segments = 0u64;
            let mut bytes = 0u64;
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".seg") {
                    segments += 1;
                    bytes += entry.metadata()?.len();
                    names.push(name);
                }
            }
            names.sort();
            println!("log directory: {}", dir.display());
            println!("segments:      {segments}");
            println!("bytes:         {bytes}");
            if let (Some(first), Some(last)) = (names.first(), names.last()) {
                println!("oldest:        {first}");
                println!("newest:        {last}");
            }
            Ok(())
        }
    }
}
