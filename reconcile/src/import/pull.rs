//! Pulling usage and cost reports from the providers' admin APIs: request building per
//! provider, the admin key from the environment, pagination, bounded retries with
//! backoff (honouring `retry-after` on 429 and 5xx), incremental pulls from the stored
//! watermark, progress reporting, and one idempotent upsert per page. Must not parse a
//! report body itself (the format modules do) nor decide what the rows mean.
//!
//! Watermark: each report resumes at the latest bucket start it already stored within
//! the period, so the last (possibly partial) bucket is fetched again; the upsert by
//! `row_id` makes that safe. A pull interrupted after page N has committed pages 1..N,
//! and the next pull resumes there. `resume: false` re-fetches the whole period (to pick
//! up revisions of older buckets).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tally_events::Timestamp;
use url::Url;

use crate::error::ReconcileError;
use crate::import::json::At;
use crate::import::{Format, ImportSummary, Page, Parsed, anthropic, openai};
use crate::tables::ReconStore;

/// Whose admin API to pull from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullProvider {
    /// OpenAI organization Usage and Costs APIs.
    OpenAi,
    /// Anthropic Admin API usage and cost reports.
    Anthropic,
}

impl PullProvider {
    /// `openai` / `anthropic`.
    pub fn name(self) -> &'static str {
        match self {
            PullProvider::OpenAi => "openai",
            PullProvider::Anthropic => "anthropic",
        }
    }

    /// The environment variable holding the admin key.
    pub fn key_env(self) -> &'static str {
        match self {
            PullProvider::OpenAi => "OPENAI_ADMIN_KEY",
            PullProvider::Anthropic => "ANTHROPIC_ADMIN_KEY",
        }
    }

    /// The provider's API base URL.
    pub fn default_base_url(self) -> &'static str {
        match self {
            PullProvider::OpenAi => "https://api.openai.com",
            PullProvider::Anthropic => "https://api.anthropic.com",
        }
    }
}

impl std::str::FromStr for PullProvider {
    type Err = ReconcileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(PullProvider::OpenAi),
            "anthropic" => Ok(PullProvider::Anthropic),
            other => Err(ReconcileError::Config(format!(
                "cannot pull reports from `{other}` (openai or anthropic; import Gemini billing exports with --from-file)"
            ))),
        }
    }
}

/// Width of usage buckets requested (cost reports are always daily).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BucketWidth {
    /// One minute.
    Minute,
    /// One hour (the default: what the matcher compares at).
    #[default]
    Hour,
    /// One day.
    Day,
}

impl BucketWidth {
    fn param(self) -> &'static str {
        match self {
            BucketWidth::Minute => "1m",
            BucketWidth::Hour => "1h",
            BucketWidth::Day => "1d",
        }
    }

    /// The largest page (in buckets) both providers accept for this width.
    fn max_limit(self) -> u32 {
        match self {
            BucketWidth::Minute => 1440,
            BucketWidth::Hour => 168,
            BucketWidth::Day => 31,
        }
    }
}

/// A time range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    /// Inclusive start.
    pub start: Timestamp,
    /// Exclusive end.
    pub end: Timestamp,
}

impl Period {
    /// The calendar month `YYYY-MM` in UTC.
    pub fn month(text: &str) -> Result<Self, ReconcileError> {
        let bad = || ReconcileError::Config(format!("`{text}` is not a month (YYYY-MM)"));
        let (y, m) = text.split_once('-').ok_or_else(bad)?;
        let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let first = chrono::NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
        let next = if m == 12 {
            chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
        } else {
            chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
        }
        .ok_or_else(bad)?;
        let ts = |d: chrono::NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .map(|n| Timestamp::from_micros(n.and_utc().timestamp_micros()))
                .ok_or_else(bad)
        };
        Ok(Period {
            start: ts(first)?,
            end: ts(next)?,
        })
    }
}

/// Progress of a pull, reported after every page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// The report being pulled (`openai.usage.completions`, `anthropic.cost_report`…).
    pub report: String,
    /// Pages fetched so far, over all reports.
    pub pages: u64,
    /// Rows upserted so far, over all reports.
    pub rows: u64,
    /// Where the current report resumed (`None`: at the period start).
    pub resumed_at: Option<Timestamp>,
}

/// Called after every page.
pub type ProgressFn = Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// How to pull.
#[derive(Clone)]
pub struct PullConfig {
    pub provider: PullProvider,
    /// API base URL; default the provider's own.
    pub base_url: Option<String>,
    /// Admin key; default from [`PullProvider::key_env`].
    pub admin_key: Option<String>,
    /// Usage bucket width (default 1h).
    pub bucket_width: BucketWidth,
    /// Pull the usage report(s).
    pub usage: bool,
    /// Pull the cost report.
    pub costs: bool,
    /// OpenAI usage endpoints to pull (default completions and embeddings).
    pub openai_endpoints: Vec<String>,
    /// Resume from the stored watermark (default true).
    pub resume: bool,
    /// Retries of one request after a transient failure (429, 5xx, connection).
    pub max_retries: u32,
    /// First backoff; doubled on each retry.
    pub initial_backoff: Duration,
    /// Longest wait between attempts (also caps `retry-after`).
    pub max_backoff: Duration,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Buckets per page (`None`: the largest the API accepts).
    pub page_limit: Option<u32>,
    /// Called after every page.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullConfig")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("has_admin_key", &self.admin_key.is_some())
            .field("bucket_width", &self.bucket_width)
            .field("usage", &self.usage)
            .field("costs", &self.costs)
            .field("openai_endpoints", &self.openai_endpoints)
            .field("resume", &self.resume)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl PullConfig {
    /// Defaults for `provider`: usage and costs, hourly usage buckets, resume, 5 retries
    /// from 1 s up to 60 s, 60 s per request.
    pub fn new(provider: PullProvider) -> Self {
        Self {
            provider,
            base_url: None,
            admin_key: None,
            bucket_width: BucketWidth::Hour,
            usage: true,
            costs: true,
            openai_endpoints: vec!["completions".to_owned(), "embeddings".to_owned()],
            resume: true,
            max_retries: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            page_limit: None,
            progress: None,
        }
    }
}

/// One report to pull.
struct Report {
    source: String,
    path: String,
    format: Format,
    /// Query pairs besides time range, limit and page.
    params: Vec<(&'static str, String)>,
    limit: u32,
}

fn reports(config: &PullConfig) -> Result<Vec<Report>, ReconcileError> {
    let width = config.bucket_width;
    let limit = |max: u32| config.page_limit.map_or(max, |l| l.clamp(1, max));
    let mut out = Vec::new();
    match config.provider {
        PullProvider::OpenAi => {
            if config.usage {
                for e in &config.openai_endpoints {
                    let groups: &[&str] = match e.as_str() {
                        "completions" => {
                            &["project_id", "api_key_id", "model", "batch", "service_tier"]
                        }
                        "embeddings"
                        | "moderations"
                        | "images"
                        | "audio_speeches"
                        | "audio_transcriptions" => &["project_id", "api_key_id", "model"],
                        other => {
                            return Err(ReconcileError::Config(format!(
                                "OpenAI usage endpoint `{other}` cannot be pulled (known: {})",
                                openai::USAGE_ENDPOINTS.join(", ")
                            )));
                        }
                    };
                    let mut params = vec![("bucket_width", width.param().to_owned())];
                    params.extend(groups.iter().map(|g| ("group_by", (*g).to_owned())));
                    out.push(Report {
                        source: openai::usage_source(e),
                        path: format!("/v1/organization/usage/{e}"),
                        format: Format::OpenAiUsage,
                        params,
                        limit: limit(width.max_limit()),
                    });
                }
            }
            if config.costs {
                out.push(Report {
                    source: openai::COSTS_SOURCE.to_owned(),
                    path: "/v1/organization/costs".to_owned(),
                    format: Format::OpenAiCosts,
                    params: vec![
                        ("bucket_width", "1d".to_owned()),
                        ("group_by", "project_id".to_owned()),
                        ("group_by", "line_item".to_owned()),
                    ],
                    limit: limit(180),
                });
            }
        }
        PullProvider::Anthropic => {
            if config.usage {
                let mut params = vec![("bucket_width", width.param().to_owned())];
                params.extend(
                    ["api_key_id", "workspace_id", "model", "service_tier"]
                        .iter()
                        .map(|g| ("group_by[]", (*g).to_owned())),
                );
                out.push(Report {
                    source: anthropic::USAGE_SOURCE.to_owned(),
                    path: "/v1/organizations/usage_report/messages".to_owned(),
                    format: Format::AnthropicUsage,
                    params,
                    limit: limit(width.max_limit()),
                });
            }
            if config.costs {
                out.push(Report {
                    source: anthropic::COSTS_SOURCE.to_owned(),
                    path: "/v1/organizations/cost_report".to_owned(),
                    format: Format::AnthropicCosts,
                    params: vec![
                        ("bucket_width", "1d".to_owned()),
                        ("group_by[]", "workspace_id".to_owned()),
                        ("group_by[]", "description".to_owned()),
                    ],
                    limit: limit(31),
                });
            }
        }
    }
    Ok(out)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    // An explicit crypto provider: dependencies may enable more than one rustls backend.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "TLS setup failed; only http:// base URLs will work");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            }
        };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Pull `period` from the provider's admin API into the store.
pub async fn pull(
    store: &ReconStore,
    config: PullConfig,
    period: Period,
) -> Result<ImportSummary, ReconcileError> {
    if period.end <= period.start {
        return Err(ReconcileError::Config(format!(
            "the period ends ({}) before it starts ({})",
            period.end, period.start
        )));
    }
    let provider = config.provider;
    let key = match &config.admin_key {
        Some(k) => k.clone(),
        None => std::env::var(provider.key_env()).map_err(|_| ReconcileError::Auth {
            provider: provider.name().to_owned(),
            detail: format!(
                "no admin key: set {} to an organization admin key (usage and cost reports are not readable with ordinary API keys)",
                provider.key_env()
            ),
        })?,
    };
    let auth = match provider {
        PullProvider::OpenAi => ("authorization", format!("Bearer {key}")),
        PullProvider::Anthropic => ("x-api-key", key),
    };
    let mut auth_value = HeaderValue::from_str(&auth.1).map_err(|_| ReconcileError::Auth {
        provider: provider.name().to_owned(),
        detail: format!(
            "the admin key in {} is not a valid header value",
            provider.key_env()
        ),
    })?;
    auth_value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(auth.0, auth_value);
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("user-agent", HeaderValue::from_static("tally-reconcile"));
    if provider == PullProvider::Anthropic {
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| provider.default_base_url().to_owned());
    let base =
        Url::parse(&base).map_err(|e| ReconcileError::Config(format!("base URL `{base}`: {e}")))?;
    let client = http_client(config.request_timeout);
    let fetch = Fetcher {
        client,
        headers,
        config: &config,
    };
    let mut summary = ImportSummary::default();
    let mut progress = PullProgress::default();
    for report in reports(&config)? {
        let watermark = if !config.resume {
            None
        } else if report.format == Format::OpenAiCosts || report.format == Format::AnthropicCosts {
            store
                .cost_watermark(
                    provider.name(),
                    &report.source,
                    Some(period.start),
                    Some(period.end),
                )
                .await?
        } else {
            store
                .usage_watermark(
                    provider.name(),
                    &report.source,
                    Some(period.start),
                    Some(period.end),
                )
                .await?
        };
        let start = watermark.map_or(period.start, |w| w.max(period.start));
        progress.report = report.source.clone();
        progress.resumed_at = watermark;
        tracing::info!(report = %report.source, start = %start, end = %period.end, "pulling");
        let mut page_token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        loop {
            let url = report_url(
                &base,
                provider,
                &report,
                start,
                period.end,
                page_token.as_deref(),
            )?;
            let body = fetch.get(&url).await?;
            let place = url.to_string();
            let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                ReconcileError::parse(&place, format!("the response is not JSON: {e}"))
            })?;
            let at = At::root(&place, "$");
            let page: Page = match report.format {
                Format::OpenAiUsage => openai::usage_page(&doc, &at)?,
                Format::OpenAiCosts => openai::costs_page(&doc, &at)?,
                Format::AnthropicUsage => anthropic::usage_page(&doc, &at)?,
                _ => anthropic::costs_page(&doc, &at)?,
            };
            let (has_more, next) = (page.has_more, page.next_page.clone());
            let mut parsed = Parsed::default();
            parsed.push(page);
            let parsed = parsed.merged();
            let u = store.upsert_usage(&parsed.usage).await?;
            let c = store.upsert_costs(&parsed.costs).await?;
            summary.usage = summary.usage.plus(u);
            summary.costs = summary.costs.plus(c);
            summary.absorb(report.format, 1, 0);
            progress.pages += 1;
            progress.rows += u.total() + c.total();
            if let Some(p) = &config.progress {
                p(&progress);
            }
            match (has_more, next) {
                (true, Some(token)) => {
                    if !seen_tokens.insert(token.clone()) {
                        return Err(ReconcileError::parse(
                            place,
                            format!(
                                "next_page `{token}` was already fetched; the pagination loops"
                            ),
                        ));
                    }
                    page_token = Some(token);
                }
                (true, None) => {
                    return Err(ReconcileError::parse(
                        place,
                        "has_more is true but next_page is missing",
                    ));
                }
                (false, _) => break,
            }
        }
    }
    Ok(summary)
}

fn report_url(
    base: &Url,
    provider: PullProvider,
    report: &Report,
    start: Timestamp,
    end: Timestamp,
    page: Option<&str>,
) -> Result<Url, ReconcileError> {
    let mut url = base
        .join(report.path.trim_start_matches('/'))
        .map_err(|e| ReconcileError::Config(format!("base URL `{base}`: {e}")))?;
    if !base.path().ends_with('/') {
        // `join` replaces the last segment of a base without a trailing slash.
        let path = format!("{}{}", base.path().trim_end_matches('/'), report.path);
        url = base.clone();
        url.set_path(&path);
    }
    {
        let mut q = url.query_pairs_mut();
        q.clear();
        match provider {
            PullProvider::OpenAi => {
                q.append_pair(
                    "start_time",
                    &start.as_micros().div_euclid(1_000_000).to_string(),
                );
                // end_time is exclusive; round up to whole seconds.
                let end_s = (end.as_micros() + 999_999).div_euclid(1_000_000);
                q.append_pair("end_time", &end_s.to_string());
            }
            PullProvider::Anthropic => {
                q.append_pair("starting_at", &rfc3339_seconds(start));
                q.append_pair("ending_at", &rfc3339_seconds(end));
            }
        }
        for (k, v) in &report.params {
            q.append_pair(k, v);
        }
        q.append_pair("limit", &report.limit.to_string());
        if let Some(p) = page {
            q.append_pair("page", p);
        }
    }
    Ok(url)
}

fn rfc3339_seconds(t: Timestamp) -> String {
    t.to_datetime()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Fetcher<'a> {
    client: HttpClient,
    headers: HeaderMap,
    config: &'a PullConfig,
}

impl Fetcher<'_> {
    /// GET with bounded retries on transient failures.
    async fn get(&self, url: &Url) -> Result<Bytes, ReconcileError> {
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 0u32;
        loop {
            match self.once(url).await {
                Ok(body) => return Ok(body),
                Err((e, retry_after)) if e.is_transient() && attempt < self.config.max_retries => {
                    attempt += 1;
                    let wait = retry_after.unwrap_or(backoff).min(self.config.max_backoff);
                    tracing::warn!(url = %redact(url), attempt, wait_ms = wait.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn once(&self, url: &Url) -> Result<Bytes, (ReconcileError, Option<Duration>)> {
        let shown = redact(url);
        let http_err = |status: Option<u16>, detail: String| ReconcileError::Http {
            url: shown.clone(),
            status,
            detail,
        };
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| (http_err(None, format!("building the request: {e}")), None))?;
        *req.headers_mut() = self.headers.clone();
        let response = tokio::time::timeout(self.config.request_timeout, self.client.request(req))
            .await
            .map_err(|_| (http_err(None, "no response within the request timeout; the provider may be slow, retry later".into()), None))?
            .map_err(|e| (http_err(None, format!("connection failed: {e}. Check the base URL and the network")), None))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body =
            tokio::time::timeout(self.config.request_timeout, response.into_body().collect())
                .await
                .map_err(|_| {
                    (
                        http_err(
                            Some(status.as_u16()),
                            "the response body did not arrive within the request timeout".into(),
                        ),
                        None,
                    )
                })?
                .map_err(|e| {
                    (
                        http_err(Some(status.as_u16()), format!("reading the response: {e}")),
                        None,
                    )
                })?
                .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let provider = self.config.provider;
        let e = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ReconcileError::Auth {
                provider: provider.name().to_owned(),
                detail: format!(
                    "HTTP {} from {shown}: the admin key was refused ({excerpt}). Usage and cost reports need an organization admin key in {}",
                    status.as_u16(),
                    provider.key_env()
                ),
            },
            StatusCode::TOO_MANY_REQUESTS => http_err(
                Some(429),
                format!(
                    "HTTP 429, rate limited ({excerpt}); retried with backoff, try again later"
                ),
            ),
            s if s.is_server_error() => http_err(
                Some(s.as_u16()),
                format!(
                    "HTTP {}, the provider failed ({excerpt}); retried with backoff, try again later",
                    s.as_u16()
                ),
            ),
            s => http_err(
                Some(s.as_u16()),
                format!("HTTP {}, the request was refused: {excerpt}", s.as_u16()),
            ),
        };
        Err((e, retry_after))
    }
}

/// The URL as shown in messages and logs (it never holds the key), shortened.
fn redact(url: &Url) -> String {
    let s = url.to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let p = Period::month("2026-12").unwrap();
        assert_eq!(p.start, Timestamp::parse("2026-12-01T00:00:00Z").unwrap());
        assert_eq!(p.end, Timestamp::parse("2027-01-01T00:00:00Z").unwrap());
        assert!(Period::month("2026-13").is_err());
        assert!(Period::month("oct").is_err());
    }

    #[test]
    fn urls_carry_time_range_groups_and_page() {
        let mut config = PullConfig::new(PullProvider::OpenAi);
        config.page_limit = Some(2);
        let r = &reports(&config).unwrap()[0];
        let base = Url::parse("http://127.0.0.1:1/prefix").unwrap();
        let p = Period::month("2026-10").unwrap();
        let u = report_url(&base, PullProvider::OpenAi, r, p.start, p.end, Some("tok")).unwrap();
        assert_eq!(u.path(), "/prefix/v1/organization/usage/completions");
        let q = u.query().unwrap();
        assert!(
            q.starts_with("start_time=1790812800&end_time=1793491200&bucket_width=1h"),
            "{q}"
        );
        assert!(q.contains("group_by=model") && q.contains("limit=2") && q.ends_with("page=tok"));

        let config = PullConfig::new(PullProvider::Anthropic);
        let r = &reports(&config).unwrap()[1];
        let base = Url::parse("https://api.anthropic.com").unwrap();
        let u = report_url(&base, PullProvider::Anthropic, r, p.start, p.end, None).unwrap();
        assert_eq!(u.path(), "/v1/organizations/cost_report");
        assert!(
            u.query()
                .unwrap()
                .starts_with("starting_at=2026-10-01T00%3A00%3A00Z")
        );
    }
}
