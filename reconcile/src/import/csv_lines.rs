//! A generic CSV of invoice lines plus a YAML column-mapping file → cost rows (and usage
//! rows when a token column is mapped). Also the CSV helpers the billing export parser
//! shares (header matching, time parsing). Pure: bytes in, rows out; must not fetch
//! anything nor touch storage.
//!
//! Mapping file (every column is named by its header text):
//!
//! ```yaml
//! name: acme-invoice          # rows get source `csv.acme-invoice`
//! provider: openai            # provider of every line
//! columns:
//!   start: Date               # required: bucket start (a date or a timestamp)
//!   end: End                  # optional: bucket end; default start + `bucket`
//!   amount: Amount            # required: the line's amount
//!   currency: Currency        # optional; default `currency` below
//!   model: Model
//!   project: Project
//!   description: Description # becomes the line item
//!   token_kind: Kind          # input | cached_input | cache_write | output (see token_kinds)
//!   tokens: Tokens            # with token_kind: usage rows too
//!   requests: Requests
//!   cost_type: Type
//! date_format: "%Y-%m-%d"     # chrono format; default: RFC 3339, `YYYY-MM-DD[ HH:MM:SS]`
//! bucket: 1d                  # 1h | 1d, when there is no end column
//! amount_unit: dollars        # dollars | cents | micros (of the currency)
//! currency: usd
//! delimiter: ","
//! token_kinds:                # cell text → token kind, when the file uses its own words
//!   "Input tokens": input
//! ```
//!
//! Token kinds: `input` is uncached input, `cached_input` cache reads, `cache_write`
//! cache writes, `output` output; a usage row's input counts all three.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use tally_events::Timestamp;

use crate::error::ReconcileError;
use crate::import::Parsed;
use crate::import::decimal;
use crate::model::{ProviderCostRow, ProviderUsageRow};

/// Which column holds what.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MappingColumns {
    pub start: String,
    pub end: Option<String>,
    pub amount: String,
    pub currency: Option<String>,
    pub model: Option<String>,
    pub project: Option<String>,
    pub description: Option<String>,
    pub token_kind: Option<String>,
    pub tokens: Option<String>,
    pub requests: Option<String>,
    pub cost_type: Option<String>,
}

/// Unit of the amount column.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AmountUnit {
    /// Whole currency units (`12.34` = $12.34).
    #[default]
    Dollars,
    /// Hundredths (`1234` = $12.34).
    Cents,
    /// Millionths (`12340000` = $12.34).
    Micros,
}

impl AmountUnit {
    fn shift(self) -> i32 {
        match self {
            AmountUnit::Dollars => 6,
            AmountUnit::Cents => 4,
            AmountUnit::Micros => 0,
        }
    }
}

/// A column-mapping file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CsvMapping {
    /// Name of the mapping; rows get `source` = `csv.<name>`.
    pub name: String,
    /// Provider of every line.
    pub provider: String,
    pub columns: MappingColumns,
    #[serde(default)]
    pub date_format: Option<String>,
    /// `1h` or `1d`: bucket length when there is no end column.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    #[serde(default)]
    pub amount_unit: AmountUnit,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    #[serde(default)]
    pub token_kinds: BTreeMap<String, String>,
}

fn default_bucket() -> String {
    "1d".to_owned()
}
fn default_currency() -> String {
    "usd".to_owned()
}
fn default_delimiter() -> String {
    ",".to_owned()
}

const TOKEN_KINDS: [&str; 4] = ["input", "cached_input", "cache_write", "output"];

impl CsvMapping {
    /// Read and check a mapping file.
    pub fn from_file(path: &Path) -> Result<Self, ReconcileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReconcileError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_yaml(&text, &name)
    }

    /// Parse and check a mapping from YAML text (`name` for messages).
    pub fn from_yaml(text: &str, name: &str) -> Result<Self, ReconcileError> {
        let m: CsvMapping = serde_yaml_ng::from_str(text)
            .map_err(|e| ReconcileError::Config(format!("mapping file {name}: {e}")))?;
        let bad = |d: String| ReconcileError::Config(format!("mapping file {name}: {d}"));
        if m.name.is_empty() || m.provider.is_empty() {
            return Err(bad("`name` and `provider` must not be empty".into()));
        }
        m.bucket_micros().map_err(bad)?;
        if m.delimiter.len() != 1 {
            return Err(bad(format!(
                "`delimiter` must be one character, not `{}`",
                m.delimiter
            )));
        }
        for (text, kind) in &m.token_kinds {
            if !TOKEN_KINDS.contains(&kind.as_str()) {
                return Err(bad(format!(
                    "token_kinds: `{text}` maps to `{kind}`; use one of {}",
                    TOKEN_KINDS.join(", ")
                )));
            }
        }
        if m.columns.tokens.is_some() && m.columns.token_kind.is_none() {
            return Err(bad(
                "`columns.tokens` needs `columns.token_kind` (which kind each line's tokens are)"
                    .into(),
            ));
        }
        Ok(m)
    }

    fn bucket_micros(&self) -> Result<i64, String> {
        match self.bucket.as_str() {
            "1h" => Ok(3_600_000_000),
            "1d" => Ok(86_400_000_000),
            other => Err(format!("`bucket` must be 1h or 1d, not `{other}`")),
        }
    }

    /// `source` of the rows.
    pub fn source(&self) -> String {
        format!("csv.{}", self.name)
    }
}

/// A header as a lookup key: lower case, runs of anything but letters and digits become
/// one `_` (`SKU description` = `sku.description` = `sku_description`).
pub(crate) fn header_key(h: &str) -> String {
    let mut out = String::new();
    for c in h.trim().trim_start_matches('\u{feff}').chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

/// A time cell: with `format` (chrono, date or date-time, UTC), else RFC 3339,
/// `YYYY-MM-DD HH:MM:SS[.f][ UTC]`, `YYYY-MM-DDTHH:MM:SS` (UTC) or `YYYY-MM-DD`.
pub(crate) fn parse_time(text: &str, format: Option<&str>) -> Result<Timestamp, String> {
    let t = text.trim();
    let from_naive =
        |n: NaiveDateTime| Timestamp::from_micros(Utc.from_utc_datetime(&n).timestamp_micros());
    if let Some(f) = format {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(from_naive(n));
        }
        if let Ok(d) = NaiveDate::parse_from_str(t, f)
            && let Some(n) = d.and_hms_opt(0, 0, 0)
        {
            return Ok(from_naive(n));
        }
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Ok(Timestamp::from_micros(d.timestamp_micros()));
        }
        return Err(format!("`{t}` does not match the date format `{f}`"));
    }
    if let Ok(ts) = Timestamp::parse(t) {
        return Ok(ts);
    }
    let bare = t.strip_suffix(" UTC").unwrap_or(t);
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(bare, f) {
            return Ok(from_naive(n));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(bare, "%Y-%m-%d")
        && let Some(n) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(from_naive(n));
    }
    Err(format!(
        "`{t}` is not a date or timestamp (expected RFC 3339, `YYYY-MM-DD HH:MM:SS UTC` or `YYYY-MM-DD`)"
    ))
}

/// Parse an invoice CSV with `mapping`.
pub fn parse(bytes: &[u8], file: &str, mapping: &CsvMapping) -> Result<Parsed, ReconcileError> {
    let delimiter = mapping
        .delimiter
        .as_bytes()
        .first()
        .copied()
        .unwrap_or(b',');
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes));
    let headers = reader
        .headers()
        .map_err(|e| ReconcileError::parse(format!("{file}: line 1"), e.to_string()))?
        .clone();
    let index: HashMap<&str, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim(), i))
        .collect();
    let c = &mapping.columns;
    let col = |name: &Option<String>| -> Result<Option<(String, usize)>, ReconcileError> {
        match name {
            None => Ok(None),
            Some(n) => index
                .get(n.as_str())
                .map(|&i| Some((n.clone(), i)))
                .ok_or_else(|| {
                    ReconcileError::parse(
                        format!("{file}: line 1"),
                        format!(
                            "the mapping names column `{n}`, which the header does not have (it has: {})",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                }),
        }
    };
    let start_col = col(&Some(c.start.clone()))?;
    let amount_col = col(&Some(c.amount.clone()))?;
    let (end_col, currency_col, model_col, project_col, desc_col) = (
        col(&c.end)?,
        col(&c.currency)?,
        col(&c.model)?,
        col(&c.project)?,
        col(&c.description)?,
    );
    let (kind_col, tokens_col, requests_col, cost_type_col) = (
        col(&c.token_kind)?,
        col(&c.tokens)?,
        col(&c.requests)?,
        col(&c.cost_type)?,
    );
    let bucket = mapping.bucket_micros().map_err(ReconcileError::Config)?;
    let source = mapping.source();
    let mut out = Parsed::default();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record = record
            .map_err(|e| ReconcileError::parse(format!("{file}: line {line}"), e.to_string()))?;
        if record.iter().all(|f| f.trim().is_empty()) {
            out.skipped += 1;
            continue;
        }
        out.pages += 1;
        let cell = |c: &Option<(String, usize)>| -> Option<(String, String)> {
            c.as_ref().and_then(|(name, i)| {
                record
                    .get(*i)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|v| (name.clone(), v.to_owned()))
            })
        };
        let place = |name: &str| format!("{file}: line {line}, column {name}");
        let required = |c: &Option<(String, usize)>| -> Result<(String, String), ReconcileError> {
            let (name, _) = c.clone().unwrap_or_default();
            cell(c).ok_or_else(|| ReconcileError::parse(place(&name), "empty"))
        };
        let (sname, stext) = required(&start_col)?;
        let start = parse_time(&stext, mapping.date_format.as_deref())
            .map_err(|e| ReconcileError::parse(place(&sname), e))?;
        let end = match cell(&end_col) {
            Some((name, text)) => parse_time(&text, mapping.date_format.as_deref())
                .map_err(|e| ReconcileError::parse(place(&name), e))?,
            None => start.plus_micros(bucket),
        };
        if end <= start {
            return Err(ReconcileError::parse(
                place(&c.end.clone().unwrap_or_default()),
                "the line ends before it starts",
            ));
        }
        let (aname, atext) = required(&amount_col)?;
        let amount = decimal::scaled(&atext.replace([' ', '$'], ""), mapping.amount_unit.shift())
            .map_err(|e| ReconcileError::parse(place(&aname), e))?;
        let kind = match cell(&kind_col) {
            None => None,
            Some((name, text)) => {
                let k = mapping
                    .token_kinds
                    .get(&text)
                    .cloned()
                    .unwrap_or_else(|| text.to_ascii_lowercase().replace(' ', "_"));
                if TOKEN_KINDS.contains(&k.as_str()) {
                    Some(k)
                } else if tokens_col.is_some() && cell(&tokens_col).is_some() {
                    return Err(ReconcileError::parse(
                        place(&name),
                        format!(
                            "`{text}` is not a token kind ({}); map it under `token_kinds`",
                            TOKEN_KINDS.join(", ")
                        ),
                    ));
                } else {
                    None
                }
            }
        };
        let project = cell(&project_col).map(|(_, v)| v);
        let model = cell(&model_col).map(|(_, v)| v);
        out.costs.push(ProviderCostRow {
            provider: mapping.provider.clone(),
            source: source.clone(),
            bucket_start: start,
            bucket_end: end,
            project_id: project.clone(),
            line_item: cell(&desc_col).map(|(_, v)| v),
            model: model.clone(),
            token_type: kind.clone(),
            cost_type: cell(&cost_type_col)
                .map(|(_, v)| v)
                .or_else(|| kind.as_ref().map(|_| "tokens".to_owned())),
            amount_micros: amount,
            currency: cell(&currency_col)
                .map(|(_, v)| v)
                .unwrap_or_else(|| mapping.currency.clone())
                .to_ascii_lowercase(),
        });
        let whole = |c: &Option<(String, usize)>| -> Result<Option<u64>, ReconcileError> {
            match cell(c) {
                None => Ok(None),
                Some((name, text)) => decimal::scaled(&text.replace([',', '_', ' '], ""), 0)
                    .ok()
                    .and_then(|v| u64::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        ReconcileError::parse(place(&name), format!("`{text}` is not a count"))
                    }),
            }
        };
        let tokens = whole(&tokens_col)?;
        let requests = whole(&requests_col)?;
        if let (Some(kind), Some(tokens)) = (&kind, tokens) {
            let mut row = ProviderUsageRow {
                provider: mapping.provider.clone(),
                source: source.clone(),
                bucket_start: start,
                bucket_end: end,
                project_id: project,
                model,
                requests,
                ..ProviderUsageRow::default()
            };
            match kind.as_str() {
                "input" => row.input_tokens = tokens,
                "cached_input" => {
                    row.input_tokens = tokens;
                    row.cached_input_tokens = tokens;
                }
                "cache_write" => {
                    row.input_tokens = tokens;
                    row.cache_write_tokens = tokens;
                }
                _ => row.output_tokens = tokens,
            }
            out.usage.push(row);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_keys() {
        assert_eq!(header_key("sku.description"), "sku_description");
        assert_eq!(header_key("SKU description"), "sku_description");
        assert_eq!(header_key(" usage_start_time "), "usage_start_time");
        assert_eq!(header_key("Cost ($)"), "cost");
    }

    #[test]
    fn times() {
        let day = Timestamp::parse("2026-10-01T00:00:00Z").unwrap();
        assert_eq!(parse_time("2026-10-01", None).unwrap(), day);
        assert_eq!(parse_time("2026-10-01 00:00:00 UTC", None).unwrap(), day);
        assert_eq!(parse_time("2026-10-01T02:00:00+02:00", None).unwrap(), day);
        assert_eq!(parse_time("01/10/2026", Some("%d/%m/%Y")).unwrap(), day);
        assert!(parse_time("yesterday", None).is_err());
    }

    #[test]
    fn mapping_checks() {
        let ok = "name: x\nprovider: openai\ncolumns: {start: D, amount: A}\n";
        assert!(CsvMapping::from_yaml(ok, "m.yaml").is_ok());
        let bad_kind = format!("{ok}token_kinds: {{foo: bar}}\n");
        assert_eq!(
            CsvMapping::from_yaml(&bad_kind, "m.yaml")
                .unwrap_err()
                .code(),
            "reconcile.config"
        );
        let unknown = format!("{ok}amount_units: cents\n");
        assert!(CsvMapping::from_yaml(&unknown, "m.yaml").is_err());
    }
}
