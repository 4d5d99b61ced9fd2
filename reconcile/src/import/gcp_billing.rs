//! Google Cloud billing export rows (the standard usage cost export, saved as CSV) →
//! cost rows, and usage rows for Gemini token SKUs. Pure: bytes in, rows out; must not
//! fetch anything nor touch storage.
//!
//! Columns (Cloud Billing export schema): `service.description`, `sku.description`,
//! `usage_start_time`, `usage_end_time`, `project.id`, `cost`, `currency`,
//! `usage.amount`, `usage.unit`, `credits` (a JSON array of `{name, amount, type…}` as
//! a query result saves it, or a number), `cost_type` (`regular`, `tax`, `adjustment`,
//! `rounding_error`). Header names are matched case-insensitively with `.`, `_` and
//! spaces treated alike (`sku.description` = `sku_description` = `SKU description`).
//!
//! Only Gemini lines are imported: the service is the Gemini API (`Generative Language
//! API`, `Gemini API`) or Vertex AI with a Gemini SKU; other lines are counted as
//! skipped. The SKU names the token kind and the model, e.g. `Generate content input
//! token count gemini 2.5 flash short input text` → model `gemini-2.5-flash`, kind
//! `input`; `… cached input token count …` → `cached_input`; `… output token count …`
//! → `output`. `cost` is in units of `currency` (exact decimal → micro-units); each
//! credit becomes its own negative line (`cost_type` `credit`). A token SKU's
//! `usage.amount` (unit `count`/`tokens`) adds to the usage row of its bucket, project
//! and model: input and cached input both count as input, cached also as cached.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::ReconcileError;
use crate::import::Parsed;
use crate::import::csv_lines::{header_key, parse_time};
use crate::import::decimal;
use crate::model::{ProviderCostRow, ProviderUsageRow};

const PROVIDER: &str = "gemini";
/// `source` of every row from a billing export.
pub const SOURCE: &str = "gcp.billing_export";

/// Columns by their normalized header name.
struct Columns(HashMap<String, usize>);

impl Columns {
    fn get<'r>(&self, record: &'r csv::StringRecord, names: &[&str]) -> Option<&'r str> {
        names
            .iter()
            .find_map(|n| self.0.get(*n))
            .and_then(|&i| record.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Parse a billing export CSV.
pub fn parse(bytes: &[u8], file: &str) -> Result<Parsed, ReconcileError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes));
    let headers = reader
        .headers()
        .map_err(|e| ReconcileError::parse(format!("{file}: line 1"), e.to_string()))?
        .clone();
    let cols = Columns(
        headers
            .iter()
            .enumerate()
            .map(|(i, h)| (header_key(h), i))
            .collect(),
    );
    for required in [
        "sku_description",
        "usage_start_time",
        "usage_end_time",
        "cost",
    ] {
        if !cols.has(required) {
            return Err(ReconcileError::parse(
                format!("{file}: line 1"),
                format!(
                    "the header has no `{}` column; is this a Cloud Billing export?",
                    required.replacen('_', ".", 1)
                ),
            ));
        }
    }
    let mut out = Parsed::default();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let place = |col: &str| format!("{file}: line {line}, column {col}");
        let record = record
            .map_err(|e| ReconcileError::parse(format!("{file}: line {line}"), e.to_string()))?;
        out.pages += 1;
        let service = cols
            .get(&record, &["service_description"])
            .unwrap_or_default();
        let sku = cols.get(&record, &["sku_description"]).unwrap_or_default();
        if !is_gemini(service, sku) {
            out.skipped += 1;
            continue;
        }
        let time = |col: &str| -> Result<tally_events::Timestamp, ReconcileError> {
            let text = cols
                .get(&record, &[col])
                .ok_or_else(|| ReconcileError::parse(place(col), "empty"))?;
            parse_time(text, None).map_err(|e| ReconcileError::parse(place(col), e))
        };
        let start = time("usage_start_time")?;
        let end = time("usage_end_time")?;
        if end <= start {
            return Err(ReconcileError::parse(
                place("usage_end_time"),
                "the usage ends before it starts",
            ));
        }
        let project = cols
            .get(&record, &["project_id", "project_name"])
            .map(str::to_owned);
        let currency = cols
            .get(&record, &["currency"])
            .unwrap_or("usd")
            .to_ascii_lowercase();
        let cost_text = cols
            .get(&record, &["cost"])
            .ok_or_else(|| ReconcileError::parse(place("cost"), "empty"))?;
        let cost =
            decimal::scaled(cost_text, 6).map_err(|e| ReconcileError::parse(place("cost"), e))?;
        let (model, kind) = sku_model_and_kind(sku);
        let cost_type = match cols.get(&record, &["cost_type"]) {
            None | Some("regular") if kind.is_some() => Some("tokens".to_owned()),
            other => other.map(str::to_owned),
        };
        let base = ProviderCostRow {
            provider: PROVIDER.to_owned(),
            source: SOURCE.to_owned(),
            bucket_start: start,
            bucket_end: end,
            project_id: project.clone(),
            line_item: Some(sku.to_owned()),
            model: model.clone(),
            token_type: kind.map(str::to_owned),
            cost_type,
            amount_micros: cost,
            currency: currency.clone(),
        };
        for (name, amount) in credits(cols.get(&record, &["credits"]), &place("credits"))? {
            out.costs.push(ProviderCostRow {
                line_item: Some(match name {
                    Some(name) => format!("{sku} / credit: {name}"),
                    None => format!("{sku} / credit"),
                }),
                token_type: None,
                cost_type: Some("credit".to_owned()),
                amount_micros: -amount.abs(),
                ..base.clone()
            });
        }
        out.costs.push(base);
        // Usage, for token SKUs counted in tokens.
        let unit = cols
            .get(&record, &["usage_unit"])
            .unwrap_or("count")
            .to_ascii_lowercase();
        if let (Some(kind), true) = (kind, matches!(unit.as_str(), "count" | "token" | "tokens")) {
            let Some(text) = cols.get(&record, &["usage_amount"]) else {
                continue;
            };
            let tokens = decimal::scaled(text, 0)
                .ok()
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| {
                    ReconcileError::parse(
                        place("usage.amount"),
                        format!("`{text}` is not a non-negative token count"),
                    )
                })?;
            let mut row = ProviderUsageRow {
                provider: PROVIDER.to_owned(),
                source: SOURCE.to_owned(),
                bucket_start: start,
                bucket_end: end,
                project_id: project,
                model,
                ..ProviderUsageRow::default()
            };
            match kind {
                "input" => row.input_tokens = tokens,
                "cached_input" => {
                    row.input_tokens = tokens;
                    row.cached_input_tokens = tokens;
                }
                _ => row.output_tokens = tokens,
            }
            out.usage.push(row);
        }
    }
    Ok(out)
}

/// Whether a line is Gemini usage.
fn is_gemini(service: &str, sku: &str) -> bool {
    let service = service.to_ascii_lowercase();
    let sku = sku.to_ascii_lowercase();
    service == "generative language api"
        || service == "gemini api"
        || (service.contains("vertex ai") && sku.contains("gemini"))
        || (service.is_empty() && sku.contains("gemini"))
}

/// Words that end the model name in a SKU description.
const NOT_MODEL: [&str; 16] = [
    "input",
    "output",
    "text",
    "cached",
    "cache",
    "token",
    "tokens",
    "count",
    "short",
    "long",
    "audio",
    "image",
    "video",
    "thinking",
    "batch",
    "characters",
];

/// (model, token kind) named by a Gemini SKU description.
pub(crate) fn sku_model_and_kind(sku: &str) -> (Option<String>, Option<&'static str>) {
    let lower = sku.to_ascii_lowercase();
    let kind = if lower.contains("storage") {
        None
    } else if lower.contains("cached input")
        || lower.contains("cache read")
        || lower.contains("cached content")
    {
        Some("cached_input")
    } else if lower.contains("output") {
        Some("output")
    } else if lower.contains("input") {
        Some("input")
    } else {
        None
    };
    let model = lower.find("gemini").map(|i| {
        lower[i..]
            .split_whitespace()
            .take_while(|w| !NOT_MODEL.contains(w))
            .collect::<Vec<_>>()
            .join("-")
    });
    (model.filter(|m| !m.is_empty()), kind)
}

/// `(name, amount in micro-units)` of each credit in a `credits` cell: a JSON array of
/// `{name, amount, …}` or a plain number (the credits' sum).
fn credits(cell: Option<&str>, place: &str) -> Result<Vec<(Option<String>, i64)>, ReconcileError> {
    let Some(cell) = cell else {
        return Ok(Vec::new());
    };
    if cell == "[]" {
        return Ok(Vec::new());
    }
    if !cell.starts_with('[') {
        let amount = decimal::scaled(cell, 6).map_err(|e| ReconcileError::parse(place, e))?;
        return Ok(if amount == 0 {
            Vec::new()
        } else {
            vec![(None, amount)]
        });
    }
    let v: Value = serde_json::from_str(cell)
        .map_err(|e| ReconcileError::parse(place, format!("not a JSON array of credits: {e}")))?;
    let mut out = Vec::new();
    for (i, c) in v.as_array().into_iter().flatten().enumerate() {
        let amount = match c.get("amount") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ReconcileError::parse(
                    format!("{place}[{i}].amount"),
                    "missing or not a number",
                ));
            }
        };
        let amount = decimal::scaled(&amount, 6)
            .map_err(|e| ReconcileError::parse(format!("{place}[{i}].amount"), e))?;
        let name = c
            .get("name")
            .or_else(|| c.get("full_name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if amount != 0 {
            out.push((name, amount));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_name_model_and_kind() {
        assert_eq!(
            sku_model_and_kind(
                "Generate content input token count gemini 2.5 flash short input text"
            ),
            (Some("gemini-2.5-flash".into()), Some("input"))
        );
        assert_eq!(
            sku_model_and_kind(
                "Generate content output token count gemini 2.5 pro long input text"
            ),
            (Some("gemini-2.5-pro".into()), Some("output"))
        );
        assert_eq!(
            sku_model_and_kind(
                "Generate content cached input token count gemini 2.5 flash short input text"
            ),
            (Some("gemini-2.5-flash".into()), Some("cached_input"))
        );
        assert_eq!(
            sku_model_and_kind("Gemini 2.0 Flash Input Text"),
            (Some("gemini-2.0-flash".into()), Some("input"))
        );
        assert_eq!(
            sku_model_and_kind("Cache storage gemini 2.5 flash"),
            (Some("gemini-2.5-flash".into()), None)
        );
    }
}
