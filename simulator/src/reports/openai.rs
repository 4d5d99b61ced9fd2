//! OpenAI organization usage (completions, embeddings) and costs reports in OpenAI's
//! shapes; it must not parse HTTP or decide auth.
//!
//! Shapes (OpenAI API reference, "Usage" and "Costs"): a page is
//! `{"object": "page", "data": [bucket…], "has_more", "next_page"}`, a bucket
//! `{"object": "bucket", "start_time", "end_time", "results": […]}` (Unix seconds).
//! Completions results carry `input_tokens` (cached included), `output_tokens`
//! (reasoning included), `input_cached_tokens`, `input_audio_tokens`,
//! `output_audio_tokens` (always 0 here), `num_model_requests`, and the dimensions
//! `project_id`, `user_id` (always `null`: keys here have no user), `api_key_id`,
//! `model`, `batch` (`false`), `service_tier` (`"default"`), each `null` unless grouped
//! by. Costs results are `{"object": "organization.costs.result", "amount": {"value",
//! "currency": "usd"}, "line_item", "project_id", "api_key_id", "quantity"}` with line
//! items `"<model>, input"`, `"<model>, cached input"`, `"<model>, cache write"`,
//! `"<model>, output"`; `quantity` is the line's tokens when grouped by `line_item`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::query::{self, Params};
use super::{
    BucketWidth, Feed, ReportError, ReportsConfig, TokenKind, billed, check_group_by, check_limit,
    cost_lines, credits, floor, now_secs, paginate,
};
use crate::record::{Provider, ServedRecord};

/// Which OpenAI usage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenAiUsageKind {
    /// `/v1/organization/usage/completions`
    Completions,
    /// `/v1/organization/usage/embeddings`
    Embeddings,
}

/// Query of an OpenAI usage report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenAiUsageQuery {
    /// Unix seconds, inclusive (snapped down to the bucket width).
    pub start_time: i64,
    /// Unix seconds, exclusive; default now.
    pub end_time: Option<i64>,
    /// Default `1d`.
    pub bucket_width: BucketWidth,
    /// Any of `project_id`, `user_id`, `api_key_id`, `model`, and for completions
    /// `batch`, `service_tier`.
    pub group_by: Vec<String>,
    /// Buckets per page (1d: default 7, max 31; 1h: 24, 168; 1m: 60, 1440).
    pub limit: Option<u32>,
    /// `next_page` of the previous page.
    pub page: Option<String>,
    /// Only these projects.
    pub project_ids: Vec<String>,
    /// Only these users (none matches: keys here have no user).
    pub user_ids: Vec<String>,
    /// Only these keys.
    pub api_key_ids: Vec<String>,
    /// Only these models.
    pub models: Vec<String>,
    /// `Some(true)`: batch jobs only (none here); `Some(false)`: non-batch only.
    pub batch: Option<bool>,
}

impl OpenAiUsageQuery {
    /// Parses a raw query string (`group_by=a&group_by=b`, `group_by[]=a` and
    /// `group_by=a,b` are all accepted; likewise for the id lists).
    pub fn from_query_string(q: Option<&str>) -> Result<Self, ReportError> {
        let p = Params::parse(q)?;
        let start_time = p.int("start_time")?.ok_or(ReportError::MissingParam {
            param: "start_time".into(),
        })?;
        let bucket_width = match p.one("bucket_width") {
            None => BucketWidth::Day,
            Some(v) => BucketWidth::parse(v).ok_or_else(|| {
                ReportError::invalid("bucket_width", format!("{v:?} is not one of 1m, 1h, 1d"))
            })?,
        };
        Ok(Self {
            start_time,
            end_time: p.int("end_time")?,
            bucket_width,
            group_by: p.many("group_by"),
            limit: p.limit()?,
            page: p.one("page").map(str::to_owned),
            project_ids: p.many("project_ids"),
            user_ids: p.many("user_ids"),
            api_key_ids: p.many("api_key_ids"),
            models: p.many("models"),
            batch: p.bool("batch")?,
        })
    }
}

/// Query of the OpenAI costs report (daily buckets only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenAiCostsQuery {
    /// Unix seconds, inclusive (snapped down to the UTC day).
    pub start_time: i64,
    /// Unix seconds, exclusive; default now.
    pub end_time: Option<i64>,
    /// Any of `project_id`, `line_item`, `api_key_id`.
    pub group_by: Vec<String>,
    /// Buckets per page, 1–180, default 7.
    pub limit: Option<u32>,
    /// `next_page` of the previous page.
    pub page: Option<String>,
    /// Only these projects (credits have no project and are left out).
    pub project_ids: Vec<String>,
    /// Only these keys (credits are left out).
    pub api_key_ids: Vec<String>,
}

impl OpenAiCostsQuery {
    /// Parses a raw query string; `bucket_width` must be `1d` if present.
    pub fn from_query_string(q: Option<&str>) -> Result<Self, ReportError> {
        let p = Params::parse(q)?;
        let start_time = p.int("start_time")?.ok_or(ReportError::MissingParam {
            param: "start_time".into(),
        })?;
        if let Some(w) = p.one("bucket_width")
            && w != "1d"
        {
            return Err(ReportError::invalid(
                "bucket_width",
                format!("{w:?} is not supported: only 1d"),
            ));
        }
        Ok(Self {
            start_time,
            end_time: p.int("end_time")?,
            group_by: p.many("group_by"),
            limit: p.limit()?,
            page: p.one("page").map(str::to_owned),
            project_ids: p.many("project_ids"),
            api_key_ids: p.many("api_key_ids"),
        })
    }
}

fn project_of<'a>(cfg: &'a ReportsConfig, key_id: &str) -> &'a str {
    cfg.project_of_key
        .get(key_id)
        .map_or(cfg.default_project_id.as_str(), String::as_str)
}

fn time_range(start: i64, end: Option<i64>) -> Result<i64, ReportError> {
    if start < 0 {
        return Err(ReportError::invalid("start_time", "must not be negative"));
    }
    let end = end.unwrap_or_else(now_secs);
    if end < start {
        return Err(ReportError::invalid(
            "end_time",
            "end_time must not be before start_time",
        ));
    }
    Ok(end)
}

fn page_json(data: Vec<Value>, next: Option<i64>) -> Value {
    json!({
        "object": "page",
        "data": data,
        "has_more": next.is_some(),
        "next_page": next.map(query::openai_cursor),
    })
}

#[derive(Default)]
struct UsageSums {
    input: u64,
    output: u64,
    cached: u64,
    requests: u64,
}

/// The OpenAI completions or embeddings usage report page for `q`.
pub fn openai_usage(
    kind: OpenAiUsageKind,
    records: &[ServedRecord],
    q: &OpenAiUsageQuery,
    cfg: &ReportsConfig,
) -> Result<Value, ReportError> {
    let (feed, allowed, object): (_, &[&str], _) = match kind {
        OpenAiUsageKind::Completions => (
            Feed::OpenAiCompletions,
            &[
                "project_id",
                "user_id",
                "api_key_id",
                "model",
                "batch",
                "service_tier",
            ],
            "organization.usage.completions.result",
        ),
        OpenAiUsageKind::Embeddings => (
            Feed::OpenAiEmbeddings,
            &["project_id", "user_id", "api_key_id", "model"],
            "organization.usage.embeddings.result",
        ),
    };
    let dims = check_group_by(&q.group_by, allowed)?;
    let w = q.bucket_width.secs();
    let (default_limit, max_limit) = q.bucket_width.usage_limits();
    let limit = check_limit(q.limit, default_limit, max_limit)?;
    let end = time_range(q.start_time, q.end_time)?;
    let cursor = q
        .page
        .as_deref()
        .map(query::parse_openai_cursor)
        .transpose()?;
    let page = paginate(floor(q.start_time, w), end, w, limit, cursor)?;

    let mut groups: BTreeMap<(i64, Vec<Option<String>>), UsageSums> = BTreeMap::new();
    for b in billed(records, feed, cfg) {
        let bucket = floor(b.secs(), w);
        if bucket < page.first || bucket >= page.end() {
            continue;
        }
        let project = project_of(cfg, &b.key_id);
        let keep = (q.project_ids.is_empty() || q.project_ids.iter().any(|p| p == project))
            && (q.api_key_ids.is_empty() || q.api_key_ids.contains(&b.key_id))
            && (q.models.is_empty() || q.models.contains(&b.model))
            && q.user_ids.is_empty()
            && q.batch != Some(true);
        if !keep {
            continue;
        }
        let key: Vec<Option<String>> = dims
            .iter()
            .map(|d| match *d {
                "project_id" => Some(project.to_owned()),
                "api_key_id" => Some(b.key_id.clone()),
                "model" => Some(b.model.clone()),
                "service_tier" => Some("default".to_owned()),
                "batch" => Some("false".to_owned()),
                _ => None, // user_id
            })
            .collect();
        let s = groups.entry((bucket, key)).or_default();
        s.input += b.input;
        s.output += b.output;
        s.cached += if cfg.zero_cached_tokens { 0 } else { b.cached };
        s.requests += 1;
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
                    match kind {
                        OpenAiUsageKind::Completions => json!({
                            "object": object,
                            "input_tokens": s.input,
                            "output_tokens": s.output,
                            "input_cached_tokens": s.cached,
                            "input_audio_tokens": 0,
                            "output_audio_tokens": 0,
                            "num_model_requests": s.requests,
                            "project_id": dim("project_id"),
                            "user_id": Value::Null,
                            "api_key_id": dim("api_key_id"),
                            "model": dim("model"),
                            "batch": dims.contains(&"batch").then_some(false),
                            "service_tier": dim("service_tier"),
                        }),
                        OpenAiUsageKind::Embeddings => json!({
                            "object": object,
                            "input_tokens": s.input,
                            "num_model_requests": s.requests,
                            "project_id": dim("project_id"),
                            "user_id": Value::Null,
                            "api_key_id": dim("api_key_id"),
                            "model": dim("model"),
                        }),
                    }
                })
                .collect();
            json!({"object": "bucket", "start_time": start, "end_time": start + w, "results": results})
        })
        .collect();
    Ok(page_json(data, page.next))
}

fn line_item(model: &str, kind: TokenKind) -> String {
    let what = match kind {
        TokenKind::Input => "input",
        TokenKind::CachedInput => "cached input",
        TokenKind::CacheWrite => "cache write",
        TokenKind::Output => "output",
    };
    format!("{model}, {what}")
}

#[derive(Default)]
struct CostSums {
    micros: i64,
    tokens: u64,
    credit: bool,
}

/// The OpenAI costs report page for `q` (see the module docs of `reports` for rounding).
pub fn openai_costs(
    records: &[ServedRecord],
    q: &OpenAiCostsQuery,
    cfg: &ReportsConfig,
) -> Result<Value, ReportError> {
    let dims = check_group_by(&q.group_by, &["project_id", "line_item", "api_key_id"])?;
    let w = BucketWidth::Day.secs();
    let limit = check_limit(q.limit, 7, 180)?;
    let end = time_range(q.start_time, q.end_time)?;
    let cursor = q
        .page
        .as_deref()
        .map(query::parse_openai_cursor)
        .transpose()?;
    let page = paginate(floor(q.start_time, w), end, w, limit, cursor)?;

    let lines = cost_lines(
        billed(records, Feed::OpenAiAll, cfg),
        w,
        page.first,
        page.end(),
        false,
        cfg,
    );
    let mut groups: BTreeMap<(i64, Vec<Option<String>>), CostSums> = BTreeMap::new();
    for (k, line) in &lines {
        let project = project_of(cfg, &k.key_id);
        if !(q.project_ids.is_empty() || q.project_ids.iter().any(|p| p == project))
            || !(q.api_key_ids.is_empty() || q.api_key_ids.contains(&k.key_id))
        {
            continue;
        }
        let key = dims
            .iter()
            .map(|d| match *d {
                "project_id" => Some(project.to_owned()),
                "line_item" => Some(line_item(&k.model, k.kind)),
                _ => Some(k.key_id.clone()),
            })
            .collect();
        let s = groups.entry((k.bucket, key)).or_default();
        s.micros += line.micros();
        s.tokens += line.tokens;
    }
    if q.project_ids.is_empty() && q.api_key_ids.is_empty() {
        for (day, micros, description) in credits(cfg, Provider::Openai, page.first, page.end()) {
            let key = dims
                .iter()
                .map(|d| (*d == "line_item").then(|| description.clone()))
                .collect();
            let s = groups.entry((day, key)).or_default();
            s.micros += micros;
            s.credit = true;
        }
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
                    let quantity = (dims.contains(&"line_item") && !s.credit).then_some(s.tokens);
                    json!({
                        "object": "organization.costs.result",
                        "amount": {"value": s.micros as f64 / 1e6, "currency": "usd"},
                        "line_item": dim("line_item"),
                        "project_id": dim("project_id"),
                        "api_key_id": dim("api_key_id"),
                        "quantity": quantity,
                    })
                })
                .collect();
            json!({"object": "bucket", "start_time": start, "end_time": start + w, "results": results})
        })
        .collect();
    Ok(page_json(data, page.next))
}
