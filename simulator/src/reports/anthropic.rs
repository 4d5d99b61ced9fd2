//! Anthropic Admin API messages usage report and cost report in Anthropic's shapes; it
//! must not parse HTTP or decide auth.
//!
//! Shapes (Anthropic Admin API, "Usage and Cost"): `{"data": [{"starting_at",
//! "ending_at", "results": […]}], "has_more", "next_page"}` with RFC 3339 bucket times.
//! Usage rows carry `uncached_input_tokens`, `cache_read_input_tokens`,
//! `cache_creation.{ephemeral_1h_input_tokens, ephemeral_5m_input_tokens}` (cache
//! writes here are 5-minute), `output_tokens` (thinking included),
//! `server_tool_use.web_search_requests` (0), and the dimensions `api_key_id`,
//! `workspace_id`, `model`, `service_tier` (`"standard"`), `context_window`
//! (`"0-200k"` or `"200k-1M"` by the request's total input), `null` unless grouped by.
//! Cost rows carry `amount` (a decimal string in cents: `"123.45"` is $1.23),
//! `currency` (`"USD"`), and when grouped by `description`: `cost_type` (`"tokens"`),
//! `description` (e.g. `"Claude Sonnet 4.5 Usage - Input Tokens"`), `model`,
//! `token_type` (`uncached_input_tokens`, `cache_read_input_tokens`,
//! `cache_creation.ephemeral_5m_input_tokens`, `output_tokens`), `service_tier`,
//! `context_window`; `workspace_id` when grouped by it (`null` for the default
//! workspace). Credit rows have a negative amount, their description and `null`
//! `cost_type`, `model` and `token_type`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::query::{self, Params};
use super::{
    BucketWidth, Feed, ReportError, ReportsConfig, TokenKind, billed, check_group_by, check_limit,
    cost_lines, credits, decimal, floor, now_secs, rfc3339,
};
use crate::record::{Provider, ServedRecord};

/// Query of the Anthropic messages usage report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnthropicUsageQuery {
    /// Unix seconds (from RFC 3339 `starting_at`), snapped down to the bucket width.
    pub starting_at: i64,
    /// Unix seconds: buckets that end at or before it are listed; default: buckets
    /// that start before now.
    pub ending_at: Option<i64>,
    /// Default `1d`.
    pub bucket_width: BucketWidth,
    /// Any of `api_key_id`, `workspace_id`, `model`, `service_tier`, `context_window`.
    pub group_by: Vec<String>,
    /// Buckets per page (1d: default 7, max 31; 1h: 24, 168; 1m: 60, 1440).
    pub limit: Option<u32>,
    /// `next_page` of the previous page.
    pub page: Option<String>,
    /// Only these keys.
    pub api_key_ids: Vec<String>,
    /// Only these workspaces (the default workspace has no id and never matches).
    pub workspace_ids: Vec<String>,
    /// Only these models.
    pub models: Vec<String>,
    /// Only these service tiers (everything here is `standard`).
    pub service_tiers: Vec<String>,
    /// Only these context windows.
    pub context_window: Vec<String>,
}

/// Query of the Anthropic cost report (daily buckets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnthropicCostQuery {
    /// Unix seconds, snapped down to the UTC day.
    pub starting_at: i64,
    /// Unix seconds: days that end at or before it are listed; default: days that
    /// start before now.
    pub ending_at: Option<i64>,
    /// Any of `workspace_id`, `description`.
    pub group_by: Vec<String>,
    /// Buckets per page, 1–31, default 7.
    pub limit: Option<u32>,
    /// `next_page` of the previous page.
    pub page: Option<String>,
}

fn times(p: &Params) -> Result<(i64, Option<i64>), ReportError> {
    let start = p.one("starting_at").ok_or(ReportError::MissingParam {
        param: "starting_at".into(),
    })?;
    let start = query::moment_param("starting_at", start)?;
    let end = p
        .one("ending_at")
        .map(|v| query::moment_param("ending_at", v))
        .transpose()?;
    Ok((start, end))
}

impl AnthropicUsageQuery {
    /// Parses a raw query string (`group_by[]=a`, repeated `group_by=a` and `a,b` lists).
    pub fn from_query_string(q: Option<&str>) -> Result<Self, ReportError> {
        let p = Params::parse(q)?;
        let (starting_at, ending_at) = times(&p)?;
        let bucket_width = match p.one("bucket_width") {
            None => BucketWidth::Day,
            Some(v) => BucketWidth::parse(v).ok_or_else(|| {
                ReportError::invalid("bucket_width", format!("{v:?} is not one of 1d, 1h, 1m"))
            })?,
        };
        Ok(Self {
            starting_at,
            ending_at,
            bucket_width,
            group_by: p.many("group_by"),
            limit: p.limit()?,
            page: p.one("page").map(str::to_owned),
            api_key_ids: p.many("api_key_ids"),
            workspace_ids: p.many("workspace_ids"),
            models: p.many("models"),
            service_tiers: p.many("service_tiers"),
            context_window: p.many("context_window"),
        })
    }
}

impl AnthropicCostQuery {
    /// Parses a raw query string; `bucket_width` must be `1d` if present.
    pub fn from_query_string(q: Option<&str>) -> Result<Self, ReportError> {
        let p = Params::parse(q)?;
        let (starting_at, ending_at) = times(&p)?;
        if let Some(w) = p.one("bucket_width")
            && w != "1d"
        {
            return Err(ReportError::invalid(
                "bucket_width",
                format!("{w:?} is not supported: only 1d"),
            ));
        }
        Ok(Self {
            starting_at,
            ending_at,
            group_by: p.many("group_by"),
            limit: p.limit()?,
            page: p.one("page").map(str::to_owned),
        })
    }
}

/// The page of buckets for Anthropic's time rules.
fn page_of(
    starting_at: i64,
    ending_at: Option<i64>,
    w: i64,
    limit: u32,
    page: Option<&str>,
) -> Result<super::Page, ReportError> {
    let first = floor(starting_at, w);
    let bound = match ending_at {
        Some(e) if e <= starting_at => {
            return Err(ReportError::invalid(
                "ending_at",
                "ending_at must be after starting_at",
            ));
        }
        // Buckets that end at or before `ending_at`: start + w <= e.
        Some(e) => e - w + 1,
        None => now_secs(),
    };
    let cursor = page.map(query::parse_anthropic_cursor).transpose()?;
    super::paginate(first, bound.max(first), w, limit, cursor)
}

fn page_json(data: Vec<Value>, next: Option<i64>) -> Value {
    json!({
        "data": data,
        "has_more": next.is_some(),
        "next_page": next.map(query::anthropic_cursor),
    })
}

fn workspace_of<'a>(cfg: &'a ReportsConfig, key_id: &str) -> Option<&'a str> {
    cfg.workspace_of_key.get(key_id).map(String::as_str)
}

#[derive(Default)]
struct UsageSums {
    uncached: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
}

/// The Anthropic messages usage report page for `q`.
pub fn anthropic_usage(
    records: &[ServedRecord],
    q: &AnthropicUsageQuery,
    cfg: &ReportsConfig,
) -> Result<Value, ReportError> {
    let dims = check_group_by(
        &q.group_by,
        &[
            "api_key_id",
            "workspace_id",
            "model",
            "service_tier",
            "context_window",
        ],
    )?;
    let w = q.bucket_width.secs();
    let (default_limit, max_limit) = q.bucket_width.usage_limits();
    let limit = check_limit(q.limit, default_limit, max_limit)?;
    let page = page_of(q.starting_at, q.ending_at, w, limit, q.page.as_deref())?;

    let mut groups: BTreeMap<(i64, Vec<Option<String>>), UsageSums> = BTreeMap::new();
    for b in billed(records, Feed::Anthropic, cfg) {
        let bucket = floor(b.secs(), w);
        if bucket < page.first || bucket >= page.end() {
            continue;
        }
        let workspace = workspace_of(cfg, &b.key_id);
        let window = b.context_window();
        let keep = (q.api_key_ids.is_empty() || q.api_key_ids.contains(&b.key_id))
            && (q.workspace_ids.is_empty()
                || workspace.is_some_and(|ws| q.workspace_ids.iter().any(|x| x == ws)))
            && (q.models.is_empty() || q.models.contains(&b.model))
            && (q.service_tiers.is_empty() || q.service_tiers.iter().any(|t| t == "standard"))
            && (q.context_window.is_empty() || q.context_window.iter().any(|c| c == window));
        if !keep {
            continue;
        }
        let key = dims
            .iter()
            .map(|d| match *d {
                "api_key_id" => Some(b.key_id.clone()),
                "workspace_id" => workspace.map(str::to_owned),
                "model" => Some(b.model.clone()),
                "service_tier" => Some("standard".to_owned()),
                _ => Some(window.to_owned()),
            })
            .collect();
        let s = groups.entry((bucket, key)).or_default();
        s.uncached += b.uncached();
        s.cache_read += b.cached;
        s.cache_write += b.cache_write;
        s.output += b.output;
    }

    let data = page
        .starts()
        .map(|start| {
            let results: Vec<Value> = groups
                .range((start, Vec::new())..(start + w, Vec::new()))
                .map(|((_, key), s)| {
                    let dim = |name: &str| {
                        dims.iter()
                            .position(|d| *d == name)
                            .and_then(|i| key[i].clone())
                    };
                    json!({
                        "api_key_id": dim("api_key_id"),
                        "workspace_id": dim("workspace_id"),
                        "model": dim("model"),
                        "service_tier": dim("service_tier"),
                        "context_window": dim("context_window"),
                        "uncached_input_tokens": s.uncached,
                        "cache_read_input_tokens": s.cache_read,
                        "cache_creation": {
                            "ephemeral_1h_input_tokens": 0,
                            "ephemeral_5m_input_tokens": s.cache_write,
                        },
                        "output_tokens": s.output,
                        "server_tool_use": {"web_search_requests": 0},
                    })
                })
                .collect();
            json!({"starting_at": rfc3339(start), "ending_at": rfc3339(start + w), "results": results})
        })
        .collect();
    Ok(page_json(data, page.next))
}

/// "Claude Sonnet 4.5" for `claude-sonnet-4-5-20250929`, "Claude Haiku 3.5" for
/// `claude-3-5-haiku-20241022`; other names are kept as they are.
pub(crate) fn display_name(model: &str) -> String {
    let Some(rest) = model.strip_prefix("claude-") else {
        return model.to_owned();
    };
    let mut family = None;
    let mut version = Vec::new();
    for part in rest.split('-') {
        if part.len() == 8 && part.bytes().all(|b| b.is_ascii_digit()) {
            continue; // snapshot date
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            version.push(part);
        } else if family.is_none() {
            family = Some(part);
        } else {
            return model.to_owned();
        }
    }
    match family {
        Some(f) if !version.is_empty() => {
            let mut f = f.to_owned();
            if let Some(c) = f.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            format!("Claude {f} {}", version.join("."))
        }
        _ => model.to_owned(),
    }
}

fn token_type(kind: TokenKind) -> (&'static str, &'static str) {
    match kind {
        TokenKind::Input => ("uncached_input_tokens", "Input Tokens"),
        TokenKind::CachedInput => ("cache_read_input_tokens", "Cache Read Input Tokens"),
        TokenKind::CacheWrite => (
            "cache_creation.ephemeral_5m_input_tokens",
            "Cache Write (5m) Input Tokens",
        ),
        TokenKind::Output => ("output_tokens", "Output Tokens"),
    }
}

/// The Anthropic cost report page for `q` (see the module docs of `reports` for
/// rounding).
pub fn anthropic_costs(
    records: &[ServedRecord],
    q: &AnthropicCostQuery,
    cfg: &ReportsConfig,
) -> Result<Value, ReportError> {
    let by_workspace = check_group_by(&q.group_by, &["workspace_id", "description"])?;
    let (ws_dim, desc_dim) = (
        by_workspace.contains(&"workspace_id"),
        by_workspace.contains(&"description"),
    );
    let w = BucketWidth::Day.secs();
    let limit = check_limit(q.limit, 7, 31)?;
    let page = page_of(q.starting_at, q.ending_at, w, limit, q.page.as_deref())?;

    // (bucket, workspace, description-row) → micro-dollars
    type Row = (
        Option<String>,
        Option<(String, String, &'static str, &'static str)>,
    );
    let mut groups: BTreeMap<(i64, Row), i64> = BTreeMap::new();
    let lines = cost_lines(
        billed(records, Feed::Anthropic, cfg),
        w,
        page.first,
        page.end(),
        true,
        cfg,
    );
    for (k, line) in &lines {
        let ws = ws_dim
            .then(|| workspace_of(cfg, &k.key_id).map(str::to_owned))
            .flatten();
        let desc = desc_dim.then(|| {
            let (tt, label) = token_type(k.kind);
            let description = format!("{} Usage - {label}", display_name(&k.model));
            (k.model.clone(), description, tt, k.context_window)
        });
        *groups.entry((k.bucket, (ws, desc))).or_default() += line.micros();
    }
    let mut credit_rows: BTreeMap<(i64, Option<String>), i64> = BTreeMap::new();
    for (day, micros, description) in credits(cfg, Provider::Anthropic, page.first, page.end()) {
        if desc_dim {
            *credit_rows.entry((day, Some(description))).or_default() += micros;
        } else {
            *groups.entry((day, (None, None))).or_default() += micros;
        }
    }

    let data = page
        .starts()
        .map(|start| {
            let mut results: Vec<Value> = groups
                .range((start, (None, None))..(start + w, (None, None)))
                .map(|((_, (ws, desc)), micros)| {
                    let (model, description, tt, window) = match desc {
                        Some((m, d, t, c)) => (
                            Some(m.clone()),
                            Some(d.clone()),
                            Some(*t),
                            Some(*c),
                        ),
                        None => (None, None, None, None),
                    };
                    json!({
                        "amount": decimal(*micros, 4, 2),
                        "currency": "USD",
                        "cost_type": desc.as_ref().map(|_| "tokens"),
                        "description": description,
                        "model": model,
                        "token_type": tt,
                        "service_tier": desc.as_ref().map(|_| "standard"),
                        "context_window": window,
                        "workspace_id": ws,
                    })
                })
                .collect();
            results.extend(
                credit_rows
                    .range((start, None)..(start + w, None))
                    .map(|((_, description), micros)| {
                        json!({
                            "amount": decimal(*micros, 4, 2),
                            "currency": "USD",
                            "cost_type": Value::Null,
                            "description": description,
                            "model": Value::Null,
                            "token_type": Value::Null,
                            "service_tier": Value::Null,
                            "context_window": Value::Null,
                            "workspace_id": Value::Null,
                        })
                    }),
            );
            json!({"starting_at": rfc3339(start), "ending_at": rfc3339(start + w), "results": results})
        })
        .collect();
    Ok(page_json(data, page.next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(
            display_name("claude-sonnet-4-5-20250929"),
            "Claude Sonnet 4.5"
        );
        assert_eq!(
            display_name("claude-3-5-haiku-20241022"),
            "Claude Haiku 3.5"
        );
        assert_eq!(display_name("claude-opus-4-20250514"), "Claude Opus 4");
        assert_eq!(display_name("claude-sonnet-4-5"), "Claude Sonnet 4.5");
        assert_eq!(display_name("my-model"), "my-model");
    }
}
