//! `tally reconcile`: import provider reports (files or a pull from the admin API), match
//! them against the gateway's usage for a period, print the report and store the run.
//! Wiring only: parsing, matching and rendering live in `tally-reconcile`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use tally_enforcer::pricing::PriceTable;
use tally_events::Timestamp;
use tally_reconcile::config::ReconcileConfig;
use tally_reconcile::import::{self, Period, PullConfig, PullProvider};
use tally_reconcile::matcher::{Inputs, reconcile};
use tally_reconcile::report::{self, ReportFormat};
use tally_reconcile::{ReconStore, gateway, runs};

use crate::GlobalArgs;

/// Exit status when unexplained differences exceed tolerance.
pub(crate) const EXIT_UNEXPLAINED: i32 = 3;

#[derive(Debug, Args)]
pub(crate) struct ReconcileArgs {
    /// Provider to reconcile: openai, anthropic or gemini.
    #[arg(long)]
    provider: String,
    /// Period: a UTC month `2026-10`, UTC days `2026-10-01..2026-10-15` (both included)
    /// or one UTC day `2026-10-01`.
    #[arg(long)]
    period: String,
    /// Pull the provider's usage and cost reports from its admin API first (admin key
    /// from OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY).
    #[arg(long)]
    pull: bool,
    /// Base URL of the provider's admin API for --pull (e.g. the simulator's).
    #[arg(long, env = "TALLY_RECONCILE_BASE_URL")]
    base_url: Option<String>,
    /// Import these report files first (format detected from the content unless
    /// --import-format names it). Repeatable.
    #[arg(long = "from-file", value_name = "FILE")]
    from_file: Vec<PathBuf>,
    /// Format of the --from-file files: openai-usage, openai-costs, anthropic-usage,
    /// anthropic-costs, gcp-billing or csv. Default: detected from each file's content.
    #[arg(long, value_name = "FORMAT")]
    import_format: Option<String>,
    /// Column mapping for generic CSV invoice files.
    #[arg(long, value_name = "FILE")]
    mapping: Option<PathBuf>,
    /// Reconciliation settings (accounts, aliases, tolerances) as YAML; default: the
    /// `reconcile:` section of the config.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Report format: markdown, html, json or csv.
    #[arg(long, default_value = "markdown")]
    format: String,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Do not store the run in the reconciliation_runs / discrepancies tables.
    #[arg(long)]
    no_store: bool,
}

/// The same period syntax as `tally export`: a UTC month, UTC days (both included) or
/// one UTC day.
fn period(text: &str) -> Result<Period> {
    use tally_reconcile::export::ExportError;
    let p = tally_reconcile::export::Period::parse(text).map_err(|e| match e {
        ExportError::Period(m) => anyhow::anyhow!("reconcile.period: {m}"),
        other => anyhow::anyhow!(other),
    })?;
    Ok(Period {
        start: Timestamp::from_micros(p.start_micros()),
        end: Timestamp::from_micros(p.end_micros()),
    })
}

pub(crate) fn run(global: &GlobalArgs, args: ReconcileArgs) -> Result<i32> {
    let cfg = super::load_config(global)?;
    let format: ReportFormat = args
        .format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let rules = match &args.rules {
        Some(p) => ReconcileConfig::from_yaml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("reconcile.config: {}", p.display()))?,
        None => cfg.reconcile.clone(),
    };
    let problems = rules.problems();
    if !problems.is_empty() {
        bail!("reconcile.config: {}", problems.join("; "));
    }
    let period = period(&args.period)?;
    let import_format: Option<import::Format> = match &args.import_format {
        Some(f) => Some(f.parse().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let provider = args.provider.to_ascii_lowercase();
    if !matches!(provider.as_str(), "openai" | "anthropic" | "gemini") {
        bail!("reconcile.provider: unknown provider `{provider}`: use openai, anthropic or gemini");
    }
    let rt = super::runtime()?;
    rt.block_on(async move {
        let root = cfg.tables_root();
        let store = ReconStore::open(&root, Vec::<(String, String)>::new())?;
        for f in &args.from_file {
            let s = import::import_file(&store, import_format, f, args.mapping.as_deref()).await?;
            eprintln!(
                "imported {}: {} page(s); usage {} new, {} replaced; costs {} new, {} replaced",
                f.display(),
                s.pages,
                s.usage.inserted,
                s.usage.replaced,
                s.costs.inserted,
                s.costs.replaced
            );
        }
        if args.pull {
            let which = match provider.as_str() {
                "openai" => PullProvider::OpenAi,
                "anthropic" => PullProvider::Anthropic,
                _ => bail!(
                    "reconcile.pull: {provider} has no usage API; import its billing export with --from-file"
                ),
            };
            let mut pc = PullConfig::new(which);
            pc.base_url = args.base_url.clone();
            pc.bucket_width = match rules.bucket_seconds {
                60 => import::BucketWidth::Minute,
                86_400 => import::BucketWidth::Day,
                _ => import::BucketWidth::Hour,
            };
            pc.progress = Some(Arc::new(|p: &import::PullProgress| {
                eprint!("\rpulling {}: {} page(s), {} row(s)   ", p.report, p.pages, p.rows);
            }));
            let s = import::pull(&store, pc, period).await?;
            eprintln!(
                "\rpulled {} page(s): usage {} new, {} replaced; costs {} new, {} replaced",
                s.pages, s.usage.inserted, s.usage.replaced, s.costs.inserted, s.costs.replaced
            );
        }
        let engine = super::query::local_engine(&cfg).await?;
        let (gw, minutes) = gateway::gateway_side(
            &engine,
            &provider,
            period.start,
            period.end,
            rules.bucket_seconds,
        )
        .await?;
        let provider_usage = store
            .read_usage(Some(&provider), Some(period.start), Some(period.end))
            .await?;
        let provider_costs = store
            .read_costs(Some(&provider), Some(period.start), Some(period.end))
            .await?;
        if provider_usage.is_empty() && provider_costs.is_empty() {
            eprintln!(
                "warning: no {provider} usage or cost report rows for this period: import one with --from-file or --pull"
            );
        }
        let inputs = Inputs {
            provider: provider.clone(),
            start: period.start.as_micros(),
            end: period.end.as_micros(),
            gateway: gw,
            minutes,
            provider_usage,
            provider_costs,
        };
        let prices = match &cfg.proxy.prices {
            Some(p) => PriceTable::load(p)?,
            None => PriceTable::built_in(),
        };
        let r = reconcile(&inputs, &rules, &prices);
        let text = report::render(&r, format);
        match &args.out {
            Some(p) => std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?,
            None => print!("{text}"),
        }
        if !args.no_store {
            let id = runs::store(&store, &r).await?;
            eprintln!("stored run {id} ({} finding(s))", r.findings.len());
        }
        eprintln!("{}", report::verdict(&r));
        Ok(if r.unexplained_over_tolerance > 0 {
            EXIT_UNEXPLAINED
        } else {
            0
        })
    })
}
