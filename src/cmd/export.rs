//! `tally export`: billing exports of a period (CSV, JSONL, Stripe meter events,
//! CloudEvents) from the committed Delta tables in the data directory, recorded in the
//! `export_runs` table. Wiring only: the work is `tally_reconcile::export`. The export
//! goes to stdout or `--out`; notes and the check go to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use tally_reconcile::export::{
    ExportFormat, ExportRequest, Granularity, Period, Pricing, csv, export,
};

use crate::GlobalArgs;

/// Arguments of `tally export`.
#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// Billing period: a UTC month (2026-10) or UTC days, both included
    /// (2026-10-01..2026-10-15).
    #[arg(long)]
    period: String,
    /// csv, jsonl (line items), stripe (meter events), cloudevents.
    #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl", "stripe", "cloudevents"])]
    format: String,
    /// Write the export to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pricing file (YAML): markup and prices per tenant, Stripe customer ids.
    #[arg(long, env = "TALLY_EXPORT_PRICING")]
    pricing: Option<PathBuf>,
    /// Close the period at the table versions read; later exports reproduce it exactly.
    #[arg(long)]
    close: bool,
    /// Export the adjustment lines of a closed period (changes since it was closed).
    #[arg(long)]
    adjustments: bool,
    /// Bucket width of the stripe and cloudevents formats: hour or day.
    #[arg(long, default_value = "hour", value_parser = ["hour", "day"])]
    granularity: String,
    /// Check the export against the ledger (and provider costs); non-zero exit if it
    /// does not add up.
    #[arg(long)]
    check: bool,
    /// stripe: write the lines Stripe cannot take (older than 35 days, late
    /// corrections) to this CSV file instead of stderr.
    #[arg(long)]
    adjustments_out: Option<PathBuf>,
    /// "Now" for Stripe's 35-day window (RFC 3339); default: the current time.
    #[arg(long)]
    now: Option<String>,
}

pub(crate) fn run(global: &GlobalArgs, args: ExportArgs) -> Result<()> {
    let cfg = super::load_config(global)?;
    let mut req = ExportRequest::new(
        Period::parse(&args.period)?,
        ExportFormat::parse(&args.format)?,
    );
    if let Some(p) = &args.pricing {
        req.pricing = Pricing::load(p)?;
    }
    req.granularity = Granularity::parse(&args.granularity)?;
    req.close = args.close;
    req.adjustments = args.adjustments;
    req.check = args.check;
    if let Some(now) = &args.now {
        req.now_micros = tally_events::Timestamp::parse(now)
            .with_context(|| format!("export.period: --now `{now}` is not an RFC 3339 time"))?
            .as_micros();
    }
    let root = cfg.tables_root();
    let out = super::runtime()?.block_on(export(&root, &req))?;

    match &args.out {
        Some(path) => std::fs::write(path, &out.bytes)
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&out.bytes)?;
            stdout.flush()?;
        }
    }
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    if !out.side_adjustments.is_empty() {
        let text = csv::encode(&out.side_adjustments);
        match &args.adjustments_out {
            Some(path) => std::fs::write(path, &text)
                .with_context(|| format!("writing {}", path.display()))?,
            None => {
                eprintln!(
                    "adjustment lines (bill as invoice items; --adjustments-out FILE writes them to a file):"
                );
                std::io::stderr().write_all(&text)?;
            }
        }
    }
    if args.out.is_some() {
        eprintln!(
            "exported {} record(s) of {} ({}{}), sha256 {}",
            out.rows,
            req.period,
            out.versions,
            if out.closed { ", closed" } else { "" },
            out.run.content_sha256
        );
    }
    if let Some(check) = &out.check {
        eprint!("{}", check.render_text());
        if !check.export_matches_ledger {
            bail!(
                "export.check: the export does not add up to the ledger for {}; please report this",
                req.period
            );
        }
    }
    Ok(())
}
