//! Billing exports: per customer (tenant) line items of a billing period — requests,
//! tokens by kind, gateway cost, the billed amount after the pricing file — as CSV, JSONL,
//! Stripe meter events or CloudEvents, read from the ledger's committed Delta tables with
//! corrections applied. Identifiers are deterministic; every export is recorded in the
//! `export_runs` state table; a closed period is re-read at the table versions it was
//! closed at (byte-identical output), and changes that arrive after the close become
//! adjustment lines (`--adjustments`). See docs/billing-exports.md. Must not write to the
//! event tables, and must not print (the CLI does).

mod check;
pub mod cloudevents;
pub mod csv;
mod error;
mod id;
pub mod jsonl;
pub mod lines;
pub mod period;
pub mod pricing;
mod read;
pub mod state;
pub mod stripe;

pub use check::{CheckReport, ProviderCheck};
pub use error::ExportError;
pub use lines::{AdjustmentReason, Figures, LineItem, LineKind};
pub use period::{Granularity, Period};
pub use pricing::{Billed, Pricing};
pub use read::Versions;
pub use state::{EXPORT_RUNS, ExportRun, ExportState, RunKind, export_runs_schema};
pub use stripe::MeterEvent;

use chrono::Utc;
use url::Url;

use lines::{AdjustmentReason as Reason, aggregate, bucket_lines, diff_lines, usage_lines};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
    Stripe,
    CloudEvents,
}

impl ExportFormat {
    /// Parse `csv`, `jsonl`, `stripe` or `cloudevents`.
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::Jsonl),
            "stripe" => Ok(Self::Stripe),
            "cloudevents" => Ok(Self::CloudEvents),
            other => Err(ExportError::Format(format!(
                "format `{other}` is not known; use csv, jsonl, stripe or cloudevents"
            ))),
        }
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
            Self::Stripe => "stripe",
            Self::CloudEvents => "cloudevents",
        }
    }
}

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub period: Period,
    pub format: ExportFormat,
    pub pricing: Pricing,
    /// Bucket width of the Stripe and CloudEvents formats.
    pub granularity: Granularity,
    /// Close the period at the versions read (if not closed yet).
    pub close: bool,
    /// Export the adjustment lines of a closed period instead of its usage; with
    /// `close`, seal them (the next adjustments start from here).
    pub adjustments: bool,
    /// Run the three-way check.
    pub check: bool,
    /// "Now" for Stripe's 35-day window, Unix µs (fixed for reproducible Stripe output).
    pub now_micros: i64,
}

impl ExportRequest {
    /// A request with the defaults: no pricing file (markup 0), hourly buckets, now.
    pub fn new(period: Period, format: ExportFormat) -> Self {
        Self {
            period,
            format,
            pricing: Pricing::default(),
            granularity: Granularity::Hour,
            close: false,
            adjustments: false,
            check: false,
            now_micros: Utc::now().timestamp_micros(),
        }
    }
}

/// What an export produced.
#[derive(Clone, Debug)]
pub struct ExportOutput {
    /// The export, in the requested format.
    pub bytes: Vec<u8>,
    /// Records in `bytes` (lines or events).
    pub rows: usize,
    /// The line items behind it (usage lines, or the adjustment lines).
    pub lines: Vec<LineItem>,
    /// Stripe only: usage it cannot take as meter events, to bill as invoice items.
    pub side_adjustments: Vec<LineItem>,
    /// Versions read.
    pub versions: Versions,
    /// The period was closed (before or by this run).
    pub closed: bool,
    /// The recorded run.
    pub run: ExportRun,
    /// Things the user should know (late changes pending, already closed…).
    pub notes: Vec<String>,
    pub check: Option<CheckReport>,
}

fn root_url(tables_root: &str) -> Result<Url, ExportError> {
    tally_queries::engine::tables_root_url(tables_root)
        .map_err(|e| ExportError::read("the tables root", e))
}

async fn totals_at(
    root: &Url,
    versions: &Versions,
    period: &Period,
) -> Result<std::collections::BTreeMap<lines::LineKey, Figures>, ExportError> {
    let ctx = read::context_at(root, versions).await?;
    let cells = read::cells(&ctx, period).await?;
    Ok(aggregate(&cells, |c| Some(c.corrected)))
}

/// Run an export over the tables under `tables_root` and record it in `export_runs`.
pub async fn export(tables_root: &str, req: &ExportRequest) -> Result<ExportOutput, ExportError> {
    let root = root_url(tables_root)?;
    let mut state = ExportState::load(&root).await?;
    let current = read::latest_versions(&root).await?;
    let close = state.close_of(&req.period).cloned();
    let p = &req.period;
    let mut notes = Vec::new();

    let (bytes, rows, lines, side, versions, base, kind, closes, check) = if req.adjustments {
        if close.is_none() {
            return Err(ExportError::Closed(format!(
                "period {p} is not closed, so it has no adjustments; export it with --close first"
            )));
        }
        if req.format == ExportFormat::Stripe {
            return Err(ExportError::Format(
                "adjustments of a closed period cannot be sent as Stripe meter events (Stripe \
                 cancels only within 24 hours, and the period's events were sent); export them \
                 with --format csv or jsonl and bill them as invoice items"
                    .into(),
            ));
        }
        let base = state.adjustment_base(p).unwrap_or_default();
        let before = totals_at(&root, &base, p).await?;
        let after = totals_at(&root, &current, p).await?;
        let lines = diff_lines(
            &req.pricing,
            p,
            Reason::LateEvents,
            &before,
            &after,
            &[&base.to_string(), &current.to_string()],
        );
        let bytes = match req.format {
            ExportFormat::Csv => csv::encode(&lines),
            ExportFormat::Jsonl => jsonl::encode(&lines)?,
            _ => cloudevents::encode_adjustments(&req.pricing, &lines)?,
        };
        if lines.is_empty() {
            notes.push(format!("no changes to {p} since {base}: nothing to adjust"));
        }
        let n = lines.len();
        (
            bytes,
            n,
            lines,
            Vec::new(),
            current,
            Some(base),
            RunKind::Adjustments,
            req.close,
            None,
        )
    } else {
        let versions = close.as_ref().map_or(current, |c| c.versions);
        let ctx = read::context_at(&root, &versions).await?;
        let cells = read::cells(&ctx, p).await?;
        let totals = aggregate(&cells, |c| Some(c.corrected));
        let lines = usage_lines(&req.pricing, p, &totals);
        let mut side = Vec::new();
        let (bytes, rows) = match req.format {
            ExportFormat::Csv => (csv::encode(&lines), lines.len()),
            ExportFormat::Jsonl => (jsonl::encode(&lines)?, lines.len()),
            ExportFormat::Stripe => {
                let s = stripe::build(&req.pricing, p, req.granularity, &cells, req.now_micros)?;
                side = s.adjustments;
                (stripe::encode(&s.events)?, s.events.len())
            }
            ExportFormat::CloudEvents => {
                let b = bucket_lines(&req.pricing, req.granularity, &cells, |c| Some(c.corrected));
                (
                    cloudevents::encode_usage(&req.pricing, p, req.granularity, &b)?,
                    b.len(),
                )
            }
        };
        if let Some(c) = &close {
            notes.push(format!(
                "period {p} is closed: reproduced at the versions it was closed at ({})",
                c.versions
            ));
            let base = state.adjustment_base(p).unwrap_or(c.versions);
            if base != current {
                let after = totals_at(&root, &current, p).await?;
                let before = totals_at(&root, &base, p).await?;
                let pending = diff_lines(&req.pricing, p, Reason::LateEvents, &before, &after, &[]);
                if !pending.is_empty() {
                    notes.push(format!(
                        "{} line(s) of {p} changed after it was closed: export them with --adjustments",
                        pending.len()
                    ));
                }
            }
        }
        if !side.is_empty() {
            notes.push(format!(
                "{} adjustment line(s) cannot be sent to Stripe (usage older than its {}-day window, \
                 or corrections past its 24-hour cancel window): bill them as invoice items",
                side.len(),
                stripe::WINDOW_DAYS
            ));
        }
        let check = if req.check {
            Some(check::run(&ctx, &root, p, versions, &lines).await?)
        } else {
            None
        };
        (
            bytes,
            rows,
            lines,
            side,
            versions,
            None,
            RunKind::Usage,
            req.close && close.is_none(),
            check,
        )
    };
    if req.close && !closes && kind == RunKind::Usage {
        notes.push(format!("period {p} was already closed; nothing changed"));
    }

    let created_at = Utc::now().timestamp_micros();
    let sha = id::sha256_hex(&bytes);
    let run = ExportRun {
        run_id: id::stable_id(&[
            "run",
            &created_at.to_string(),
            &p.label,
            req.format.name(),
            &sha,
        ]),
        period: p.label.clone(),
        period_start: p.start_micros(),
        period_end: p.end_micros(),
        format: req.format.name().to_owned(),
        kind,
        closed: closes,
        versions,
        base,
        rows: i64::try_from(rows).unwrap_or(i64::MAX),
        content_sha256: sha,
        created_at,
    };
    state.record(run.clone()).await?;
    Ok(ExportOutput {
        bytes,
        rows,
        lines,
        side_adjustments: side,
        versions,
        closed: close.is_some() || closes,
        run,
        notes,
        check,
    })
}
