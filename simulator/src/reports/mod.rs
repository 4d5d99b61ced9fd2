//! Provider usage and cost reports built from the served records: the OpenAI, Anthropic
//! and Google Cloud billing shapes, with injectable discrepancies; it owns aggregation,
//! bucketing, pagination and cost rounding, and must not change how requests are served.
//!
//! Everything here is pure: each builder takes the served records, a typed query and the
//! [`ReportsConfig`], and returns the JSON body (or CSV text) the endpoint sends. The
//! HTTP layer only parses queries, checks auth and injects 429s.
//!
//! | builder | endpoint |
//! |---------|----------|
//! | [`openai_usage`] | `GET /v1/organization/usage/completions`, `GET /v1/organization/usage/embeddings` |
//! | [`openai_costs`] | `GET /v1/organization/costs` |
//! | [`anthropic_usage`] | `GET /v1/organizations/usage_report/messages` |
//! | [`anthropic_costs`] | `GET /v1/organizations/cost_report` |
//! | [`gcp_billing_csv`] | `GET /_sim/reports/gcp-billing.csv?start=…&end=…` |
//!
//! # What is billed
//!
//! A served record is billed when its status is 200 and it came from a generation
//! route: OpenAI chat completions, responses and legacy completions (the completions
//! usage report) or embeddings (the embeddings usage report; both in OpenAI costs),
//! Anthropic `/v1/messages`, Gemini `generateContent` / `streamGenerateContent`. Errors,
//! model lists and token counting are not billed. A completed request bills its
//! `output_tokens`; an incomplete one (aborted stream, client gone) bills
//! `output_tokens_sent`, or `output_tokens` with `bill_aborted_in_full`. Input is
//! always billed in full. Times are the record's `at` plus `clock_skew_ms`.
//!
//! # Identities
//!
//! The provider's key id is derived from the key's fingerprint (see [`api_key_id`]):
//! OpenAI `key_<12 hex>`, Anthropic `apikey_<12 hex>`, Gemini `gkey_<12 hex>`. Projects
//! and workspaces come from `project_of_key` / `workspace_of_key`; unmapped OpenAI keys
//! are in `default_project_id` (`proj_default`), unmapped Gemini keys in
//! `default_gcp_project_id`, unmapped Anthropic keys in the default workspace, reported
//! as `null` as Anthropic does.
//!
//! # Buckets and pages
//!
//! Buckets are aligned to UTC minutes, hours or days (the start is snapped down). OpenAI
//! lists every bucket that starts before `end_time` (default: now); Anthropic every
//! bucket that ends at or before `ending_at` (without `ending_at`: every bucket that
//! starts before now). Buckets without usage are listed with empty `results`. A page
//! holds at most `limit` buckets; `next_page` is an opaque cursor for the next bucket
//! (OpenAI: base64; Anthropic: `page_` + base64 of the bucket's RFC 3339 start).
//!
//! # Costs and rounding
//!
//! A cost *line* is one (bucket, key, model, token kind[, context window]) of a cost
//! report. Each billed request adds `tokens × price` to its lines exactly, in integer
//! pico-dollars (prices are micro-dollars per million tokens, taken at the request's
//! time, so price changes apply per request); each line is then rounded **once, half
//! up, to a whole micro-dollar**. A row of a coarser grouping is the sum of its rounded
//! lines, so every grouping of the same period adds up to the same micro-dollars.
//! Credits are exact micro-dollars (`amount_usd` rounded to 6 decimals), negative.
//! Rendering: OpenAI `amount.value` is dollars as a JSON number (`µ$ / 10⁶`, exact to
//! the micro-dollar after rounding back); Anthropic `amount` is a decimal string in
//! cents (`µ$ / 10⁴`, 2 to 4 decimals, e.g. `"0.0075"` for 75 µ$); the Google Cloud CSV
//! `cost` is dollars with 6 decimals. Models without a price bill their tokens at 0.

mod anthropic;
mod config;
mod gcp;
pub(crate) mod http;
mod openai;
mod prices;
mod query;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

pub use anthropic::{AnthropicCostQuery, AnthropicUsageQuery, anthropic_costs, anthropic_usage};
pub use config::{Credit, PriceChange, ReportModel, ReportsConfig};
pub use gcp::{GcpBillingQuery, gcp_billing_csv};
pub use openai::{OpenAiCostsQuery, OpenAiUsageKind, OpenAiUsageQuery, openai_costs, openai_usage};

use crate::auth;
use crate::record::{Provider, ServedRecord};

/// Loads the providers' price list (`simulator/src/prices.yaml`) now rather than on the
/// first cost report.
pub(crate) fn load_prices() {
    let _ = prices::table();
}

/// A report query that cannot be answered (HTTP 400 in the provider's format).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// A required parameter is missing.
    #[error("report.missing_param: the `{param}` parameter is required")]
    MissingParam {
        /// The parameter.
        param: String,
    },
    /// A parameter does not parse or is out of range.
    #[error("report.invalid_param: `{param}`: {message}")]
    InvalidParam {
        /// The parameter.
        param: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ReportError {
    /// The stable error code (`report.missing_param` or `report.invalid_param`).
    pub fn code(&self) -> &'static str {
        match self {
            ReportError::MissingParam { .. } => "report.missing_param",
            ReportError::InvalidParam { .. } => "report.invalid_param",
        }
    }

    /// The offending parameter.
    pub fn param(&self) -> &str {
        match self {
            ReportError::MissingParam { param } | ReportError::InvalidParam { param, .. } => param,
        }
    }

    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Self {
        ReportError::InvalidParam {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

/// Width of a report bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BucketWidth {
    /// `1m`
    Minute,
    /// `1h`
    Hour,
    /// `1d` (the default)
    #[default]
    Day,
}

impl BucketWidth {
    /// Seconds per bucket.
    pub fn secs(self) -> i64 {
        match self {
            BucketWidth::Minute => 60,
            BucketWidth::Hour => 3_600,
            BucketWidth::Day => 86_400,
        }
    }

    /// `1m`, `1h` or `1d`.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketWidth::Minute => "1m",
            BucketWidth::Hour => "1h",
            BucketWidth::Day => "1d",
        }
    }

    /// Parses `1m`, `1h` or `1d`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1m" => Some(BucketWidth::Minute),
            "1h" => Some(BucketWidth::Hour),
            "1d" => Some(BucketWidth::Day),
            _ => None,
        }
    }

    /// Default and maximum `limit` (buckets per page) of the usage reports of both
    /// providers.
    pub(crate) fn usage_limits(self) -> (u32, u32) {
        match self {
            BucketWidth::Day => (7, 31),
            BucketWidth::Hour => (24, 168),
            BucketWidth::Minute => (60, 1440),
        }
    }
}

/// The provider-side API key id of a raw key: `key_<12 hex>` (OpenAI), `apikey_<12 hex>`
/// (Anthropic), `gkey_<12 hex>` (Gemini), where the hex digits are those of the key's
/// fingerprint (`sha256:<12 hex>`, the first 6 bytes of its SHA-256).
pub fn api_key_id(provider: Provider, raw_key: &str) -> String {
    key_id_of_fingerprint(provider, &auth::fingerprint(raw_key))
}

fn key_id_of_fingerprint(provider: Provider, fingerprint: &str) -> String {
    let hex = fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint);
    let prefix = match provider {
        Provider::Openai => "key_",
        Provider::Anthropic => "apikey_",
        Provider::Gemini => "gkey_",
    };
    format!("{prefix}{hex}")
}

/// Which billed records a report reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Feed {
    OpenAiCompletions,
    OpenAiEmbeddings,
    /// Completions and embeddings (the costs report).
    OpenAiAll,
    Anthropic,
    Gemini,
}

impl Feed {
    fn takes(self, r: &ServedRecord) -> bool {
        let completions = matches!(
            r.route.as_str(),
            "/v1/chat/completions" | "/v1/responses" | "/v1/completions"
        );
        let embeddings = r.route == "/v1/embeddings";
        match self {
            Feed::OpenAiCompletions => r.provider == Provider::Openai && completions,
            Feed::OpenAiEmbeddings => r.provider == Provider::Openai && embeddings,
            Feed::OpenAiAll => r.provider == Provider::Openai && (completions || embeddings),
            Feed::Anthropic => r.provider == Provider::Anthropic && r.route == "/v1/messages",
            Feed::Gemini => {
                r.provider == Provider::Gemini
                    && (r.route.ends_with(":generateContent")
                        || r.route.ends_with(":streamGenerateContent"))
            }
        }
    }

    fn provider(self) -> Provider {
        match self {
            Feed::OpenAiCompletions | Feed::OpenAiEmbeddings | Feed::OpenAiAll => Provider::Openai,
            Feed::Anthropic => Provider::Anthropic,
            Feed::Gemini => Provider::Gemini,
        }
    }
}

/// One served request as the provider bills it, injections applied.
#[derive(Clone, Debug)]
pub(crate) struct Billed {
    /// Microseconds since the epoch, after `clock_skew_ms`.
    pub(crate) at: i64,
    pub(crate) key_id: String,
    pub(crate) model: String,
    /// Every prompt token (cached and cache writes included).
    pub(crate) input: u64,
    pub(crate) cached: u64,
    pub(crate) cache_write: u64,
    pub(crate) output: u64,
}

impl Billed {
    /// Whole seconds since the epoch.
    pub(crate) fn secs(&self) -> i64 {
        self.at.div_euclid(1_000_000)
    }

    pub(crate) fn uncached(&self) -> u64 {
        self.input
            .saturating_sub(self.cached)
            .saturating_sub(self.cache_write)
    }

    /// Anthropic's context-window class of the request.
    pub(crate) fn context_window(&self) -> &'static str {
        if self.input > 200_000 {
            "200k-1M"
        } else {
            "0-200k"
        }
    }

    /// Tokens by kind.
    pub(crate) fn kinds(&self) -> [(TokenKind, u64); 4] {
        [
            (TokenKind::Input, self.uncached()),
            (TokenKind::CachedInput, self.cached),
            (TokenKind::CacheWrite, self.cache_write),
            (TokenKind::Output, self.output),
        ]
    }
}

/// The billed requests of `feed`, in record order.
pub(crate) fn billed<'a>(
    records: &'a [ServedRecord],
    feed: Feed,
    cfg: &'a ReportsConfig,
) -> impl Iterator<Item = Billed> + 'a {
    records
        .iter()
        .filter(move |r| r.status == 200 && feed.takes(r))
        .filter_map(move |r| {
            let fingerprint = r.key_fingerprint.as_deref()?;
            let (first, second) = match cfg.report_model {
                ReportModel::Served => (&r.model_served, &r.model_requested),
                ReportModel::Requested => (&r.model_requested, &r.model_served),
            };
            let model = if first.is_empty() { second } else { first };
            let output = if r.completed || cfg.bill_aborted_in_full {
                r.output_tokens
            } else {
                r.output_tokens_sent
            };
            Some(Billed {
                at: r.at.saturating_add(cfg.clock_skew_ms.saturating_mul(1_000)),
                key_id: key_id_of_fingerprint(feed.provider(), fingerprint),
                model: model.clone(),
                input: r.input_tokens,
                cached: r.cached_input_tokens,
                cache_write: r.cache_write_tokens,
                output,
            })
        })
}

/// A kind of billed token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TokenKind {
    /// Uncached input.
    Input,
    /// Cache reads.
    CachedInput,
    /// Cache writes (5-minute).
    CacheWrite,
    /// Output, reasoning included.
    Output,
}

/// One cost line of a report before grouping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LineKey {
    pub(crate) bucket: i64,
    pub(crate) key_id: String,
    pub(crate) model: String,
    pub(crate) kind: TokenKind,
    pub(crate) context_window: &'static str,
}

/// Tokens and exact cost of a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) tokens: u64,
    /// Pico-dollars (micro-dollars per million tokens × tokens).
    pub(crate) pico: u128,
}

impl Line {
    /// The line's cost rounded half up to a whole micro-dollar.
    pub(crate) fn micros(&self) -> i64 {
        i64::try_from((self.pico + 500_000) / 1_000_000).unwrap_or(i64::MAX)
    }
}

/// The cost lines of the billed requests whose bucket (of `width` seconds) starts in
/// `[from, to)`. Lines without tokens are left out.
pub(crate) fn cost_lines(
    billed: impl Iterator<Item = Billed>,
    width: i64,
    from: i64,
    to: i64,
    with_context_window: bool,
    cfg: &ReportsConfig,
) -> BTreeMap<LineKey, Line> {
    let mut lines: BTreeMap<LineKey, Line> = BTreeMap::new();
    for b in billed {
        let bucket = floor(b.secs(), width);
        if bucket < from || bucket >= to {
            continue;
        }
        let price = prices::price_at(cfg, &b.model, b.at);
        for (kind, tokens) in b.kinds() {
            if tokens == 0 {
                continue;
            }
            let per_million = price.map_or(0, |p| match kind {
                TokenKind::Input => p.input,
                TokenKind::CachedInput => p.cached_input,
                TokenKind::CacheWrite => p.cache_write,
                TokenKind::Output => p.output,
            });
            let key = LineKey {
                bucket,
                key_id: b.key_id.clone(),
                model: b.model.clone(),
                kind,
                context_window: if with_context_window {
                    b.context_window()
                } else {
                    ""
                },
            };
            let line = lines.entry(key).or_default();
            line.tokens += tokens;
            line.pico += u128::from(tokens) * u128::from(per_million);
        }
    }
    lines
}

/// Credits of `provider` on days in `[from, to)` (Unix seconds): (day start, micro-dollars
/// ≤ 0, description).
pub(crate) fn credits(
    cfg: &ReportsConfig,
    provider: Provider,
    from: i64,
    to: i64,
) -> Vec<(i64, i64, String)> {
    cfg.credits
        .iter()
        .filter(|c| c.provider == provider)
        .filter_map(|c| {
            let day = config::parse_day(&c.date)?;
            let micros = (c.amount_usd.abs() * 1e6).round() as i64;
            (day >= from && day < to).then(|| (day, -micros, c.description.clone()))
        })
        .collect()
}

/// `t` rounded down to a multiple of `width`.
pub(crate) fn floor(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

/// The current time in Unix seconds.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 3339 with a `Z` and whole seconds, as Anthropic's buckets are shown.
pub(crate) fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The buckets of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Page {
    /// Start of the first bucket on this page.
    pub(crate) first: i64,
    /// Number of buckets on this page.
    pub(crate) count: i64,
    pub(crate) width: i64,
    /// Start of the first bucket of the next page, if any.
    pub(crate) next: Option<i64>,
}

impl Page {
    /// End of the last bucket on this page.
    pub(crate) fn end(&self) -> i64 {
        self.first + self.count * self.width
    }

    pub(crate) fn starts(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.count).map(move |i| self.first + i * self.width)
    }
}

/// Pages the buckets `first, first + width, …` that start before `bound`, from the
/// bucket `page_start` (the decoded cursor; it must be one of them), `limit` at a time.
pub(crate) fn paginate(
    first: i64,
    bound: i64,
    width: i64,
    limit: u32,
    page_start: Option<i64>,
) -> Result<Page, ReportError> {
    let start = page_start.unwrap_or(first);
    if start < first || (start - first) % width != 0 || (page_start.is_some() && start >= bound) {
        return Err(ReportError::invalid(
            "page",
            "the page cursor does not belong to this query",
        ));
    }
    let remaining = if bound > start {
        (bound - start + width - 1) / width
    } else {
        0
    };
    let count = remaining.min(i64::from(limit));
    let next = (remaining > count).then_some(start + count * width);
    Ok(Page {
        first: start,
        count,
        width,
        next,
    })
}

/// `limit` or its default, checked against `1..=max`.
pub(crate) fn check_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ReportError> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(l) => Err(ReportError::invalid(
            "limit",
            format!("{l} is out of range: it must be between 1 and {max}"),
        )),
    }
}

/// Checks every `group_by` value against `allowed` and returns the grouped dimensions in
/// the order of `allowed` (duplicates collapse).
pub(crate) fn check_group_by<'a>(
    group_by: &[String],
    allowed: &[&'a str],
) -> Result<Vec<&'a str>, ReportError> {
    for g in group_by {
        if !allowed.contains(&g.as_str()) {
            return Err(ReportError::invalid(
                "group_by",
                format!("{g:?} is not supported; use any of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(allowed
        .iter()
        .copied()
        .filter(|a| group_by.iter().any(|g| g == a))
        .collect())
}

/// `value / 10^scale` as an exact decimal string with between `min_dec` and `scale`
/// decimals (trailing zeros trimmed down to `min_dec`).
pub(crate) fn decimal(value: i64, scale: u32, min_dec: usize) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let v = value.unsigned_abs();
    let unit = 10u64.pow(scale);
    let int = v / unit;
    let mut frac = format!("{:0width$}", v % unit, width = scale as usize);
    while frac.len() > min_dec && frac.ends_with('0') {
        frac.pop();
    }
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_follow_the_fingerprint() {
        let fp = auth::fingerprint("sk-a");
        let hex = fp.strip_prefix("sha256:").unwrap();
        assert_eq!(api_key_id(Provider::Openai, "sk-a"), format!("key_{hex}"));
        assert_eq!(
            api_key_id(Provider::Anthropic, "sk-a"),
            format!("apikey_{hex}")
        );
        assert_eq!(api_key_id(Provider::Gemini, "sk-a"), format!("gkey_{hex}"));
        assert_ne!(
            api_key_id(Provider::Openai, "sk-b"),
            api_key_id(Provider::Openai, "sk-a")
        );
    }

    #[test]
    fn pages_cover_every_bucket_once() {
        // 10 hourly buckets, pages of 3.
        let (first, w) = (3_600 * 5, 3_600);
        let bound = first + 10 * w - 1; // the last bucket starts before the bound
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = paginate(first, bound, w, 3, cursor).unwrap();
            seen.extend(p.starts());
            match p.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let want: Vec<i64> = (0..10).map(|i| first + i * w).collect();
        assert_eq!(seen, want);
        assert!(paginate(first, bound, w, 3, Some(first + 1)).is_err());
        assert!(paginate(first, bound, w, 3, Some(first - w)).is_err());
        assert!(paginate(first, bound, w, 3, Some(first + 10 * w)).is_err());
        assert_eq!(paginate(first, first, w, 3, None).unwrap().count, 0);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(7_500, 4, 2), "0.75");
        assert_eq!(decimal(75, 4, 2), "0.0075");
        assert_eq!(decimal(1_000_000, 4, 2), "100.00");
        assert_eq!(decimal(-12_345, 4, 2), "-1.2345");
        assert_eq!(decimal(750, 6, 6), "0.000750");
        assert_eq!(decimal(0, 4, 2), "0.00");
    }

    #[test]
    fn lines_round_once_half_up() {
        let l = Line {
            tokens: 3,
            pico: 1_500_000,
        };
        assert_eq!(l.micros(), 2);
        let l = Line {
            tokens: 3,
            pico: 1_499_999,
        };
        assert_eq!(l.micros(), 1);
        assert_eq!(floor(-1, 60), -60);
        assert_eq!(rfc3339(86_400), "1970-01-02T00:00:00Z");
    }
}
