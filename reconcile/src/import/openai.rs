//! OpenAI organization Usage API pages (`/v1/organization/usage/{completions,
//! embeddings, moderations, images, audio_speeches, audio_transcriptions}`) and Costs
//! API pages (`/v1/organization/costs`) → normalized rows. Pure: bytes in, rows out;
//! must not fetch anything nor touch storage.
//!
//! Field semantics (OpenAI API reference): a page is `{"object":"page","data":[bucket…],
//! "has_more","next_page"}`; a bucket has `start_time`/`end_time` (Unix seconds) and
//! `results`. Completions results carry `input_tokens` (every input token, cached ones
//! included), `input_cached_tokens`, `output_tokens`, `input_audio_tokens`,
//! `output_audio_tokens`, `num_model_requests` and, when grouped, `project_id`,
//! `user_id`, `api_key_id`, `model`, `batch`, `service_tier`. OpenAI's `input_tokens`
//! already matches the normalized meaning, so it is taken as is. Embeddings and
//! moderations carry `input_tokens` and `num_model_requests`; images and audio carry
//! requests (their images, characters or seconds have no column and are not kept).
//! Vector store and code interpreter usage are not model usage and are refused.
//! Groups the table does not keep (`user_id`, image `size`/`source`) are summed over.
//!
//! Costs results: `amount.value` (a JSON number, in units of `amount.currency`),
//! `line_item`, `project_id`. The amount becomes micro-units through its decimal text
//! (see `decimal`); a line item shaped `<model>, <kind>` (`gpt-4o-2024-08-06, input`)
//! gives the model and the token type (`input` = uncached input, `cached input`,
//! `output`).

use serde_json::{Map, Value};

use crate::error::ReconcileError;
use crate::import::json::{self, At};
use crate::import::{Page, Parsed};
use crate::model::{ProviderCostRow, ProviderUsageRow};

const PROVIDER: &str = "openai";
/// `source` of cost rows.
pub const COSTS_SOURCE: &str = "openai.costs";

/// The usage endpoints whose results become rows, by the name in their path.
pub const USAGE_ENDPOINTS: [&str; 6] = [
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
];

/// `source` of usage rows from the endpoint `endpoint` (e.g. `openai.usage.completions`).
pub fn usage_source(endpoint: &str) -> String {
    format!("openai.usage.{endpoint}")
}

/// Parse every usage page in `bytes` (one page, pages one after another, or an array).
pub fn parse_usage(bytes: &[u8], file: &str) -> Result<Parsed, ReconcileError> {
    let mut out = Parsed::default();
    for (prefix, doc) in json::documents(bytes, file)? {
        out.push(usage_page(&doc, &At::root(file, &prefix))?);
    }
    Ok(out)
}

/// Parse every costs page in `bytes`.
pub fn parse_costs(bytes: &[u8], file: &str) -> Result<Parsed, ReconcileError> {
    let mut out = Parsed::default();
    for (prefix, doc) in json::documents(bytes, file)? {
        out.push(costs_page(&doc, &At::root(file, &prefix))?);
    }
    Ok(out)
}

/// `(has_more, next_page)` of a page object.
fn paging(m: &Map<String, Value>, at: &At<'_>) -> Result<(bool, Option<String>), ReconcileError> {
    let has_more = json::opt_bool(m, "has_more", at)?.unwrap_or(false);
    let next = json::opt_str(m, "next_page", at)?;
    Ok((has_more, next))
}

fn check_page(m: &Map<String, Value>, at: &At<'_>) -> Result<(), ReconcileError> {
    match json::opt_str(m, "object", at)?.as_deref() {
        None | Some("page") => Ok(()),
        Some(other) => Err(at.key("object").err(format!(
            "expected a page (\"object\": \"page\"), found \"{other}\""
        ))),
    }
}

/// One usage page.
pub(crate) fn usage_page(doc: &Value, at: &At<'_>) -> Result<Page, ReconcileError> {
    let m = json::object(doc, at)?;
    check_page(m, at)?;
    let (has_more, next_page) = paging(m, at)?;
    let mut page = Page {
        has_more,
        next_page,
        ..Page::default()
    };
    let data_at = at.key("data");
    for (i, bucket) in json::array(m, "data", at)?.iter().enumerate() {
        let bat = data_at.index(i);
        let b = json::object(bucket, &bat)?;
        let start = json::unix_seconds(b, "start_time", &bat)?;
        let end = json::unix_seconds(b, "end_time", &bat)?;
        json::check_bucket(start, end, &bat)?;
        let rat = bat.key("results");
        for (j, result) in json::array(b, "results", &bat)?.iter().enumerate() {
            let at = rat.index(j);
            let r = json::object(result, &at)?;
            let object = json::opt_str(r, "object", &at)?.unwrap_or_default();
            let endpoint = object
                .strip_prefix("organization.usage.")
                .and_then(|s| s.strip_suffix(".result"))
                .ok_or_else(|| {
                    at.key("object").err(format!(
                        "expected an organization.usage.<endpoint>.result, found \"{object}\""
                    ))
                })?;
            let mut row = ProviderUsageRow {
                provider: PROVIDER.to_owned(),
                source: usage_source(endpoint),
                bucket_start: start,
                bucket_end: end,
                project_id: json::opt_str(r, "project_id", &at)?,
                api_key_id: json::opt_str(r, "api_key_id", &at)?,
                model: json::opt_str(r, "model", &at)?,
                batch: json::opt_bool(r, "batch", &at)?,
                service_tier: json::opt_str(r, "service_tier", &at)?,
                ..ProviderUsageRow::default()
            };
            match endpoint {
                "completions" => {
                    row.input_tokens = json::required_count(r, "input_tokens", &at)?;
                    row.cached_input_tokens = json::count(r, "input_cached_tokens", &at)?;
                    row.output_tokens = json::required_count(r, "output_tokens", &at)?;
                    row.audio_input_tokens = json::count(r, "input_audio_tokens", &at)?;
                    row.audio_output_tokens = json::count(r, "output_audio_tokens", &at)?;
                    if row.cached_input_tokens > row.input_tokens {
                        return Err(at.err(format!(
                            "input_cached_tokens ({}) exceeds input_tokens ({}), which includes them",
                            row.cached_input_tokens, row.input_tokens
                        )));
                    }
                }
                "embeddings" | "moderations" => {
                    row.input_tokens = json::required_count(r, "input_tokens", &at)?;
                }
                "images" | "audio_speeches" | "audio_transcriptions" => {}
                "vector_stores" | "code_interpreter_sessions" => {
                    return Err(at.key("object").err(format!(
                        "{endpoint} usage is billed by storage or sessions, not per model request or token; it has no place in provider_usage (import its cost from the Costs API instead)"
                    )));
                }
                other => {
                    return Err(at.key("object").err(format!(
                        "unknown usage endpoint `{other}` (known: {})",
                        USAGE_ENDPOINTS.join(", ")
                    )));
                }
            }
            row.requests = Some(json::required_count(r, "num_model_requests", &at)?);
            page.usage.push(row);
        }
    }
    Ok(page)
}

/// One costs page.
pub(crate) fn costs_page(doc: &Value, at: &At<'_>) -> Result<Page, ReconcileError> {
    let m = json::object(doc, at)?;
    check_page(m, at)?;
    let (has_more, next_page) = paging(m, at)?;
    let mut page = Page {
        has_more,
        next_page,
        ..Page::default()
    };
    let data_at = at.key("data");
    for (i, bucket) in json::array(m, "data", at)?.iter().enumerate() {
        let bat = data_at.index(i);
        let b = json::object(bucket, &bat)?;
        let start = json::unix_seconds(b, "start_time", &bat)?;
        let end = json::unix_seconds(b, "end_time", &bat)?;
        json::check_bucket(start, end, &bat)?;
        let rat = bat.key("results");
        for (j, result) in json::array(b, "results", &bat)?.iter().enumerate() {
            let at = rat.index(j);
            let r = json::object(result, &at)?;
            if let Some(o) = json::opt_str(r, "object", &at)?
                && o != "organization.costs.result"
            {
                return Err(at.key("object").err(format!(
                    "expected an organization.costs.result, found \"{o}\""
                )));
            }
            let aat = at.key("amount");
            let amount = json::object(
                r.get("amount")
                    .ok_or_else(|| at.err("`amount` is missing"))?,
                &aat,
            )?;
            let micros = json::amount(amount.get("value"), 6, &aat.key("value"))?;
            let currency = json::opt_str(amount, "currency", &aat)?
                .unwrap_or_else(|| "usd".to_owned())
                .to_ascii_lowercase();
            let line_item = json::opt_str(r, "line_item", &at)?;
            let (model, token_type) = line_item
                .as_deref()
                .map(split_line_item)
                .unwrap_or((None, None));
            let cost_type = if token_type.is_some() {
                Some("tokens".to_owned())
            } else if micros < 0 {
                Some("credit".to_owned())
            } else {
                None
            };
            page.costs.push(ProviderCostRow {
                provider: PROVIDER.to_owned(),
                source: COSTS_SOURCE.to_owned(),
                bucket_start: start,
                bucket_end: end,
                project_id: json::opt_str(r, "project_id", &at)?,
                line_item,
                model,
                token_type,
                cost_type,
                amount_micros: micros,
                currency,
            });
        }
    }
    Ok(page)
}

/// `gpt-4o-2024-08-06, input` → (model, token type). The model is taken when the line
/// has the `<model>, <kind>` shape (a model name has no spaces); the token type when the
/// kind is a known token kind.
pub(crate) fn split_line_item(line: &str) -> (Option<String>, Option<String>) {
    let Some((model, kind)) = line.rsplit_once(", ") else {
        return (None, None);
    };
    let model = model.trim();
    if model.is_empty() || model.contains(char::is_whitespace) {
        return (None, None);
    }
    let token_type = match kind.trim().to_ascii_lowercase().as_str() {
        "input" => Some("input"),
        "cached input" | "input cached" | "cached_input" => Some("cached_input"),
        "cache write" | "cache_write" => Some("cache_write"),
        "output" => Some("output"),
        _ => None,
    };
    (Some(model.to_owned()), token_type.map(str::to_owned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn line_items() {
        assert_eq!(
            split_line_item("gpt-4o-2024-08-06, input"),
            (Some("gpt-4o-2024-08-06".into()), Some("input".into()))
        );
        assert_eq!(
            split_line_item("gpt-4o-mini, cached input"),
            (Some("gpt-4o-mini".into()), Some("cached_input".into()))
        );
        assert_eq!(
            split_line_item("ft-gpt-4o-mini, training"),
            (Some("ft-gpt-4o-mini".into()), None)
        );
        assert_eq!(split_line_item("Image models"), (None, None));
        assert_eq!(
            split_line_item("web search tool calls, gpt-4o"),
            (None, None)
        );
    }

    #[test]
    fn refuses_vector_store_usage_with_the_place() {
        let page = br#"{"object":"page","data":[{"object":"bucket","start_time":0,"end_time":86400,
            "results":[{"object":"organization.usage.vector_stores.result","usage_bytes":10,"project_id":null}]}],
            "has_more":false,"next_page":null}"#;
        let e = parse_usage(page, "vs.json").unwrap_err();
        assert_eq!(e.code(), "reconcile.parse");
        assert!(
            e.to_string()
                .contains("vs.json: $.data[0].results[0].object"),
            "{e}"
        );
    }
}
