//! Google Cloud billing export rows (CSV) for the Gemini API, since Gemini has no usage
//! API; it must not parse HTTP.
//!
//! Columns are those of the Cloud Billing standard usage cost export to BigQuery, with
//! nested fields flattened to dotted names: `billing_account_id`, `service.id`,
//! `service.description` (`Gemini API`), `sku.id`, `sku.description`
//! (`"<Model> - Input Tokens"`, `"<Model> - Cached Input"`, `"<Model> - Output"`, e.g.
//! `Gemini 2.5 Flash - Output`), `usage_start_time`, `usage_end_time` (hourly rows,
//! BigQuery's CSV timestamp form `2026-10-01 13:00:00 UTC`), `project.id`,
//! `project.name`, `cost` (US dollars, 6 decimals), `currency` (`USD`), `usage.amount`
//! (tokens), `usage.unit` (`count`), `credits` (a JSON array of `{name, amount,
//! full_name, id, type}`, `[]` when none), `cost_type` (`regular`), `invoice.month`
//! (`YYYYMM`). One row per hour, project, model and token kind; a credit is a row of
//! its own (cost 0, `credits` carrying the negative amount) at 00:00 of its day.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Feed, ReportError, ReportsConfig, TokenKind, billed, cost_lines, credits, decimal};
use crate::record::{Provider, ServedRecord};

/// The period of a billing export: rows whose hour starts in `[start, end)` (Unix
/// seconds; `start` is snapped down to the hour).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcpBillingQuery {
    /// Inclusive.
    pub start: i64,
    /// Exclusive.
    pub end: i64,
}

impl GcpBillingQuery {
    /// Parses `start` and `end` (RFC 3339 or `YYYY-MM-DD`, both required).
    pub fn from_query_string(q: Option<&str>) -> Result<Self, ReportError> {
        let p = super::query::Params::parse(q)?;
        let get = |name: &str| -> Result<i64, ReportError> {
            let v = p.one(name).ok_or(ReportError::MissingParam {
                param: name.to_owned(),
            })?;
            super::config::parse_day(v).map_or_else(|| super::query::moment_param(name, v), Ok)
        };
        let (start, end) = (get("start")?, get("end")?);
        if end < start {
            return Err(ReportError::invalid("end", "end must not be before start"));
        }
        Ok(Self { start, end })
    }
}

/// Columns of the export, in order.
pub(crate) const COLUMNS: [&str; 16] = [
    "billing_account_id",
    "service.id",
    "service.description",
    "sku.id",
    "sku.description",
    "usage_start_time",
    "usage_end_time",
    "project.id",
    "project.name",
    "cost",
    "currency",
    "usage.amount",
    "usage.unit",
    "credits",
    "cost_type",
    "invoice.month",
];

const BILLING_ACCOUNT: &str = "012345-6789AB-CDEF01";
const SERVICE_ID: &str = "AEFD-7695-64FA";
const SERVICE: &str = "Gemini API";

/// "Gemini 2.5 Flash Lite" for `gemini-2.5-flash-lite`, "Gemini 2.0 Flash" for
/// `gemini-2.0-flash-001`.
pub(crate) fn display_name(model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let words: Vec<String> = model
        .split('-')
        .filter(|w| !(w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit())))
        .map(|w| {
            let mut w = w.to_owned();
            if let Some(c) = w.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            w
        })
        .collect();
    words.join(" ")
}

fn sku_label(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Input => "Input Tokens",
        TokenKind::CachedInput => "Cached Input",
        TokenKind::CacheWrite => "Cache Write",
        TokenKind::Output => "Output",
    }
}

/// A stable SKU-like id (`XXXX-XXXX-XXXX`) derived from the description.
fn sku_id(description: &str) -> String {
    let h = hex::encode_upper(&Sha256::digest(description.as_bytes())[..6]);
    format!("{}-{}-{}", &h[0..4], &h[4..8], &h[8..12])
}

fn timestamp(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn month(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|d| d.format("%Y%m").to_string())
        .unwrap_or_default()
}

/// A CSV field, quoted when it needs to be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The billing export rows for the Gemini requests served in `q`'s period, as CSV with a
/// header line.
pub fn gcp_billing_csv(
    records: &[ServedRecord],
    q: &GcpBillingQuery,
    cfg: &ReportsConfig,
) -> Result<String, ReportError> {
    let w = 3_600;
    let from = super::floor(q.start, w);
    let lines = cost_lines(
        billed(records, Feed::Gemini, cfg),
        w,
        from,
        q.end,
        false,
        cfg,
    );
    // (hour, project, sku description) → (tokens, micros)
    let mut rows: BTreeMap<(i64, String, String), (u64, i64)> = BTreeMap::new();
    for (k, line) in &lines {
        let project = cfg
            .project_of_key
            .get(&k.key_id)
            .unwrap_or(&cfg.default_gcp_project_id)
            .clone();
        let sku = format!("{} - {}", display_name(&k.model), sku_label(k.kind));
        let r = rows.entry((k.bucket, project, sku)).or_default();
        r.0 += line.tokens;
        r.1 += line.micros();
    }
    let mut out = COLUMNS.join(",");
    out.push('\n');
    let mut push =
        |hour: i64, project: &str, sku: &str, tokens: u64, micros: i64, credits: &str| {
            let cells = [
                BILLING_ACCOUNT.to_owned(),
                SERVICE_ID.to_owned(),
                SERVICE.to_owned(),
                sku_id(sku),
                sku.to_owned(),
                timestamp(hour),
                timestamp(hour + w),
                project.to_owned(),
                project.to_owned(),
                decimal(micros, 6, 6),
                "USD".to_owned(),
                tokens.to_string(),
                "count".to_owned(),
                credits.to_owned(),
                "regular".to_owned(),
                month(hour),
            ];
            let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
            let _ = writeln!(out, "{}", line.join(","));
        };
    for ((hour, project, sku), (tokens, micros)) in &rows {
        push(*hour, project, sku, *tokens, *micros, "[]");
    }
    for (day, micros, description) in credits(cfg, Provider::Gemini, from, q.end) {
        let credit = serde_json::json!([{
            "name": description,
            "amount": micros as f64 / 1e6,
            "full_name": description,
            "id": format!("credits/{}", sku_id(&description)),
            "type": "PROMOTION",
        }]);
        push(
            day,
            &cfg.default_gcp_project_id,
            &description,
            0,
            0,
            &credit.to_string(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_fields() {
        assert_eq!(
            display_name("gemini-2.5-flash-lite"),
            "Gemini 2.5 Flash Lite"
        );
        assert_eq!(display_name("gemini-2.0-flash-001"), "Gemini 2.0 Flash");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(timestamp(3_600), "1970-01-01 01:00:00 UTC");
        assert_eq!(sku_id("x").len(), 14);
    }
}
