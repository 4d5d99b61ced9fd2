//! Anthropic Admin API reports → normalized rows: the Messages usage report
//! (`/v1/organizations/usage_report/messages`) and the cost report
//! (`/v1/organizations/cost_report`). Pure: bytes in, rows out; must not fetch anything
//! nor touch storage.
//!
//! Field semantics (Anthropic API reference): a report is `{"data":[bucket…],
//! "has_more","next_page"}`; a bucket has `starting_at`/`ending_at` (RFC 3339) and
//! `results`. Usage results carry `uncached_input_tokens`, `cache_read_input_tokens`,
//! `cache_creation.{ephemeral_5m_input_tokens,ephemeral_1h_input_tokens}`,
//! `output_tokens`, `server_tool_use`, and, when grouped, `api_key_id`, `workspace_id`,
//! `model`, `service_tier`, `context_window`… Normalized: `input_tokens` = uncached +
//! cache read + cache creation (5m + 1h); `cached_input_tokens` = cache read;
//! `cache_write_tokens` = cache creation; `project_id` = workspace; `batch` = whether
//! `service_tier` is `batch` (unknown when not grouped by tier). The report has no
//! request count. Groups the table does not keep (`context_window`, `inference_geo`,
//! `account_id`…) are summed over.
//!
//! Cost results carry `amount` — a decimal STRING in the currency's lowest unit (cents:
//! `"123.45"` USD is $1.2345) — `currency` (`USD`), `cost_type` (`tokens`,
//! `web_search`, `code_execution`…), `description`, `model`, `token_type`
//! (`uncached_input_tokens`, `output_tokens`, `cache_read_input_tokens`,
//! `cache_creation.ephemeral_5m_input_tokens`, `cache_creation.ephemeral_1h_input_tokens`),
//! `workspace_id`. µ$ = cents × 10 000, exactly from the decimal text. `line_item` is
//! the description, or the raw token type when not grouped by description.

use serde_json::Value;

use crate::error::ReconcileError;
use crate::import::json::{self, At};
use crate::import::{Page, Parsed};
use crate::model::{ProviderCostRow, ProviderUsageRow};

const PROVIDER: &str = "anthropic";
/// `source` of usage rows.
pub const USAGE_SOURCE: &str = "anthropic.usage_report.messages";
/// `source` of cost rows.
pub const COSTS_SOURCE: &str = "anthropic.cost_report";

/// Parse every usage report page in `bytes`.
pub fn parse_usage(bytes: &[u8], file: &str) -> Result<Parsed, ReconcileError> {
    let mut out = Parsed::default();
    for (prefix, doc) in json::documents(bytes, file)? {
        out.push(usage_page(&doc, &At::root(file, &prefix))?);
    }
    Ok(out)
}

/// Parse every cost report page in `bytes`.
pub fn parse_costs(bytes: &[u8], file: &str) -> Result<Parsed, ReconcileError> {
    let mut out = Parsed::default();
    for (prefix, doc) in json::documents(bytes, file)? {
        out.push(costs_page(&doc, &At::root(file, &prefix))?);
    }
    Ok(out)
}

/// Buckets of a report page: `(start, end, results, path of results)`.
type Buckets<'v, 'a> = Vec<(
    tally_events::Timestamp,
    tally_events::Timestamp,
    &'v Vec<Value>,
    At<'a>,
)>;

fn buckets<'v, 'a>(doc: &'v Value, at: &At<'a>) -> Result<(Page, Buckets<'v, 'a>), ReconcileError> {
    let m = json::object(doc, at)?;
    let page = Page {
        has_more: json::opt_bool(m, "has_more", at)?.unwrap_or(false),
        next_page: json::opt_str(m, "next_page", at)?,
        ..Page::default()
    };
    let data_at = at.key("data");
    let mut out = Vec::new();
    for (i, bucket) in json::array(m, "data", at)?.iter().enumerate() {
        let bat = data_at.index(i);
        let b = json::object(bucket, &bat)?;
        let start = json::rfc3339(b, "starting_at", &bat)?;
        let end = json::rfc3339(b, "ending_at", &bat)?;
        json::check_bucket(start, end, &bat)?;
        let results = json::array(b, "results", &bat)?;
        out.push((start, end, results, bat.key("results")));
    }
    Ok((page, out))
}

pub(crate) fn usage_page(doc: &Value, at: &At<'_>) -> Result<Page, ReconcileError> {
    let (mut page, buckets) = buckets(doc, at)?;
    for (start, end, results, rat) in buckets {
        for (j, result) in results.iter().enumerate() {
            let at = rat.index(j);
            let r = json::object(result, &at)?;
            if !r.contains_key("uncached_input_tokens") {
                return Err(at.err(
                    "`uncached_input_tokens` is missing: this is not a Messages usage report result",
                ));
            }
            let uncached = json::count(r, "uncached_input_tokens", &at)?;
            let read = json::count(r, "cache_read_input_tokens", &at)?;
            let (c5m, c1h) = match r.get("cache_creation") {
                None | Some(Value::Null) => (0, 0),
                Some(v) => {
                    let cat = at.key("cache_creation");
                    let c = json::object(v, &cat)?;
                    (
                        json::count(c, "ephemeral_5m_input_tokens", &cat)?,
                        json::count(c, "ephemeral_1h_input_tokens", &cat)?,
                    )
                }
            };
            let write = c5m + c1h;
            let service_tier = json::opt_str(r, "service_tier", &at)?;
            page.usage.push(ProviderUsageRow {
                provider: PROVIDER.to_owned(),
                source: USAGE_SOURCE.to_owned(),
                bucket_start: start,
                bucket_end: end,
                project_id: json::opt_str(r, "workspace_id", &at)?,
                api_key_id: json::opt_str(r, "api_key_id", &at)?,
                model: json::opt_str(r, "model", &at)?,
                batch: service_tier.as_deref().map(|t| t == "batch"),
                service_tier,
                input_tokens: uncached + read + write,
                cached_input_tokens: read,
                cache_write_tokens: write,
                output_tokens: json::count(r, "output_tokens", &at)?,
                audio_input_tokens: 0,
                audio_output_tokens: 0,
                requests: None,
            });
        }
    }
    Ok(page)
}

/// The normalized token type of a cost report `token_type`.
fn token_type(raw: &str) -> Option<&'static str> {
    match raw {
        "uncached_input_tokens" => Some("input"),
        "cache_read_input_tokens" => Some("cached_input"),
        "output_tokens" => Some("output"),
        t if t.starts_with("cache_creation") => Some("cache_write"),
        _ => None,
    }
}

pub(crate) fn costs_page(doc: &Value, at: &At<'_>) -> Result<Page, ReconcileError> {
    let (mut page, buckets) = buckets(doc, at)?;
    for (start, end, results, rat) in buckets {
        for (j, result) in results.iter().enumerate() {
            let at = rat.index(j);
            let r = json::object(result, &at)?;
            // Lowest currency unit (cents) → micro-units: × 10^4.
            let micros = json::amount(r.get("amount"), 4, &at.key("amount"))?;
            let currency = json::opt_str(r, "currency", &at)?
                .unwrap_or_else(|| "usd".to_owned())
                .to_ascii_lowercase();
            let raw_token_type = json::opt_str(r, "token_type", &at)?;
            let description = json::opt_str(r, "description", &at)?;
            page.costs.push(ProviderCostRow {
                provider: PROVIDER.to_owned(),
                source: COSTS_SOURCE.to_owned(),
                bucket_start: start,
                bucket_end: end,
                project_id: json::opt_str(r, "workspace_id", &at)?,
                line_item: description.or_else(|| raw_token_type.clone()),
                model: json::opt_str(r, "model", &at)?,
                token_type: raw_token_type
                    .as_deref()
                    .and_then(token_type)
                    .map(str::to_owned),
                cost_type: json::opt_str(r, "cost_type", &at)?,
                amount_micros: micros,
                currency,
            });
        }
    }
    Ok(page)
}
