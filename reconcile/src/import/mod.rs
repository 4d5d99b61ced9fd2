//! Provider report importers: one pure parser per format (bytes → normalized rows), the
//! format enum and its detection from content, and the entry points the CLI calls —
//! [`import_file`] (a saved report) and [`pull`] (the providers' admin APIs) — which
//! upsert the rows into `provider_usage` / `provider_costs`. Must not match, classify
//! or report (the matcher does), nor write any other table.
//!
//! Rows whose group the tables do not keep (e.g. OpenAI `user_id`, Anthropic
//! `context_window`) would share a `row_id`; within one page or file they are summed,
//! so totals are kept and the import stays idempotent.

pub mod anthropic;
pub mod csv_lines;
mod decimal;
pub mod gcp_billing;
mod json;
pub mod openai;
pub mod pull;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use csv_lines::CsvMapping;
pub use pull::{BucketWidth, Period, PullConfig, PullProgress, PullProvider, pull};

use crate::error::ReconcileError;
use crate::model::{ProviderCostRow, ProviderUsageRow};
use crate::tables::{ReconStore, UpsertSummary};

/// A report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Format {
    /// OpenAI organization Usage API pages (any usage endpoint).
    OpenAiUsage,
    /// OpenAI Costs API pages.
    OpenAiCosts,
    /// Anthropic Messages usage report pages.
    AnthropicUsage,
    /// Anthropic cost report pages.
    AnthropicCosts,
    /// Google Cloud billing export rows (CSV), Gemini lines.
    GcpBilling,
    /// A generic CSV of invoice lines with a column-mapping file.
    Csv,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 6] = [
        Format::OpenAiUsage,
        Format::OpenAiCosts,
        Format::AnthropicUsage,
        Format::AnthropicCosts,
        Format::GcpBilling,
        Format::Csv,
    ];

    /// The name users type (`openai-usage`, …).
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAiUsage => "openai-usage",
            Format::OpenAiCosts => "openai-costs",
            Format::AnthropicUsage => "anthropic-usage",
            Format::AnthropicCosts => "anthropic-costs",
            Format::GcpBilling => "gcp-billing",
            Format::Csv => "csv",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = ReconcileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                ReconcileError::Config(format!(
                    "unknown report format `{s}` (known: {})",
                    Format::ALL.map(Format::name).join(", ")
                ))
            })
    }
}

/// One page of a report as parsed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Page {
    pub(crate) usage: Vec<ProviderUsageRow>,
    pub(crate) costs: Vec<ProviderCostRow>,
    pub(crate) has_more: bool,
    pub(crate) next_page: Option<String>,
}

/// Rows parsed from one file (or one page), with same-group rows already summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Usage rows.
    pub usage: Vec<ProviderUsageRow>,
    /// Cost rows.
    pub costs: Vec<ProviderCostRow>,
    /// Pages (JSON documents) or CSV lines read.
    pub pages: u64,
    /// CSV lines left out (not Gemini, or empty), counted so nothing goes silently.
    pub skipped: u64,
}

impl Parsed {
    pub(crate) fn push(&mut self, page: Page) {
        self.pages += 1;
        self.usage.extend(page.usage);
        self.costs.extend(page.costs);
    }

    /// Sum rows sharing a `row_id` (first-seen order kept).
    pub(crate) fn merged(mut self) -> Self {
        self.usage = merge_usage(std::mem::take(&mut self.usage));
        self.costs = merge_costs(std::mem::take(&mut self.costs));
        self
    }
}

pub(crate) fn merge_usage(rows: Vec<ProviderUsageRow>) -> Vec<ProviderUsageRow> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<ProviderUsageRow> = Vec::with_capacity(rows.len());
    for r in rows {
        match index.get(&r.row_id()) {
            Some(&i) => {
                let o = &mut out[i];
                o.input_tokens += r.input_tokens;
                o.cached_input_tokens += r.cached_input_tokens;
                o.cache_write_tokens += r.cache_write_tokens;
                o.output_tokens += r.output_tokens;
                o.audio_input_tokens += r.audio_input_tokens;
                o.audio_output_tokens += r.audio_output_tokens;
                o.requests = match (o.requests, r.requests) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                };
            }
            None => {
                index.insert(r.row_id(), out.len());
                out.push(r);
            }
        }
    }
    out
}

pub(crate) fn merge_costs(rows: Vec<ProviderCostRow>) -> Vec<ProviderCostRow> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<ProviderCostRow> = Vec::with_capacity(rows.len());
    for r in rows {
        match index.get(&r.row_id()) {
            Some(&i) => out[i].amount_micros += r.amount_micros,
            None => {
                index.insert(r.row_id(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// The format of a report, from its content (`name` only for error messages).
pub fn detect(bytes: &[u8], name: &str) -> Result<Format, ReconcileError> {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    let trimmed = head.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let markers = [
            ("organization.usage.", Format::OpenAiUsage),
            ("organization.costs.result", Format::OpenAiCosts),
            ("uncached_input_tokens\"", Format::AnthropicUsage),
            ("\"starting_at\"", Format::AnthropicCosts),
        ];
        for (marker, format) in markers {
            // A cost report names token types such as `uncached_input_tokens` as values,
            // never as keys: the usage marker has the closing quote of a key.
            if marker == "uncached_input_tokens\"" {
                if head.contains("\"uncached_input_tokens\":")
                    || head.contains("\"uncached_input_tokens\" :")
                {
                    return Ok(format);
                }
                continue;
            }
            if head.contains(marker) {
                return Ok(format);
            }
        }
        return Err(ReconcileError::parse(
            name,
            "a JSON file, but not a report this importer knows (or a page without results); name the format (`tally reconcile --import-format openai-usage|openai-costs|anthropic-usage|anthropic-costs`)",
        ));
    }
    let first_line = trimmed
        .lines()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if first_line.contains("sku.description")
        || first_line.contains("sku_description")
        || first_line.contains("sku description")
    {
        return Ok(Format::GcpBilling);
    }
    if first_line.contains(',') || first_line.contains(';') || first_line.contains('\t') {
        return Ok(Format::Csv);
    }
    Err(ReconcileError::parse(
        name,
        "neither JSON nor CSV with a header line; name the format (`tally reconcile --import-format …`)",
    ))
}

/// Parse `bytes` as `format`; `mapping` is required for [`Format::Csv`].
pub fn parse(
    format: Format,
    bytes: &[u8],
    name: &str,
    mapping: Option<&CsvMapping>,
) -> Result<Parsed, ReconcileError> {
    let parsed = match format {
        Format::OpenAiUsage => openai::parse_usage(bytes, name)?,
        Format::OpenAiCosts => openai::parse_costs(bytes, name)?,
        Format::AnthropicUsage => anthropic::parse_usage(bytes, name)?,
        Format::AnthropicCosts => anthropic::parse_costs(bytes, name)?,
        Format::GcpBilling => gcp_billing::parse(bytes, name)?,
        Format::Csv => {
            let mapping = mapping.ok_or_else(|| {
                ReconcileError::Config(format!(
                    "{name}: a generic CSV needs a column-mapping file (--mapping FILE); see docs/reconciliation.md"
                ))
            })?;
            csv_lines::parse(bytes, name, mapping)?
        }
    };
    Ok(parsed.merged())
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    /// Formats imported (one for a file; the reports pulled for a pull).
    pub formats: Vec<Format>,
    /// Pages (or CSV lines) read.
    pub pages: u64,
    /// Effect on `provider_usage`.
    pub usage: UpsertSummary,
    /// Effect on `provider_costs`.
    pub costs: UpsertSummary,
    /// CSV lines left out (not model usage).
    pub skipped: u64,
}

impl ImportSummary {
    pub(crate) fn absorb(&mut self, format: Format, parsed_pages: u64, skipped: u64) {
        if !self.formats.contains(&format) {
            self.formats.push(format);
        }
        self.pages += parsed_pages;
        self.skipped += skipped;
    }
}

/// Import the report at `path` (format detected from the content unless given; a CSV
/// mapping file for [`Format::Csv`]) into the store. Idempotent.
pub async fn import_file(
    store: &ReconStore,
    format: Option<Format>,
    path: &Path,
    mapping: Option<&Path>,
) -> Result<ImportSummary, ReconcileError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReconcileError::Io {
        path: name.clone(),
        source,
    })?;
    let mapping = match mapping {
        Some(p) => Some(CsvMapping::from_file(p)?),
        None => None,
    };
    import_bytes(store, format, &bytes, &name, mapping.as_ref()).await
}

/// Import a report held in memory (see [`import_file`]).
pub async fn import_bytes(
    store: &ReconStore,
    format: Option<Format>,
    bytes: &[u8],
    name: &str,
    mapping: Option<&CsvMapping>,
) -> Result<ImportSummary, ReconcileError> {
    let format = match format {
        Some(f) => f,
        None => detect(bytes, name)?,
    };
    let parsed = parse(format, bytes, name, mapping)?;
    let mut summary = ImportSummary::default();
    summary.absorb(format, parsed.pages, parsed.skipped);
    summary.usage = store.upsert_usage(&parsed.usage).await?;
    summary.costs = store.upsert_costs(&parsed.costs).await?;
    Ok(summary)
}
