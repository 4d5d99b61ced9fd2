//! HTTP routes of the report endpoints: admin-key checks, the injected 429s and query
//! parsing, in each provider's error format; it must not build report bodies itself.
//!
//! Report requests are not served requests: they leave no `ServedRecord`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::Value;

use super::{
    AnthropicCostQuery, AnthropicUsageQuery, GcpBillingQuery, OpenAiCostsQuery, OpenAiUsageKind,
    OpenAiUsageQuery, ReportError,
};
use crate::errors;
use crate::record::Provider;
use crate::server::Shared;

type St = State<Arc<Shared>>;

/// The report routes (merged into the simulator's router).
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/organization/usage/completions",
            get(|s: St, h: HeaderMap, u: Uri| serve(s, h, u, Report::OpenAiCompletions)),
        )
        .route(
            "/v1/organization/usage/embeddings",
            get(|s: St, h: HeaderMap, u: Uri| serve(s, h, u, Report::OpenAiEmbeddings)),
        )
        .route(
            "/v1/organization/costs",
            get(|s: St, h: HeaderMap, u: Uri| serve(s, h, u, Report::OpenAiCosts)),
        )
        .route(
            "/v1/organizations/usage_report/messages",
            get(|s: St, h: HeaderMap, u: Uri| serve(s, h, u, Report::AnthropicUsage)),
        )
        .route(
            "/v1/organizations/cost_report",
            get(|s: St, h: HeaderMap, u: Uri| serve(s, h, u, Report::AnthropicCosts)),
        )
        .route("/_sim/reports/gcp-billing.csv", get(gcp_csv))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Report {
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiCosts,
    AnthropicUsage,
    AnthropicCosts,
}

impl Report {
    fn provider(self) -> Provider {
        match self {
            Report::OpenAiCompletions | Report::OpenAiEmbeddings | Report::OpenAiCosts => {
                Provider::Openai
            }
            Report::AnthropicUsage | Report::AnthropicCosts => Provider::Anthropic,
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An error in `provider`'s format; `param` fills OpenAI's `error.param`.
fn error(
    provider: Provider,
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    request_id: &str,
    retry_after: Option<u64>,
) -> Response {
    let mut body = errors::error_body(provider, status, message, request_id);
    if let (Provider::Openai, Some(p)) = (provider, param)
        && let Some(e) = body.get_mut("error").and_then(Value::as_object_mut)
    {
        e.insert("param".into(), Value::String(p.to_owned()));
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Checks the admin credentials: OpenAI `Authorization: Bearer`, Anthropic `x-api-key`
/// (401 without) and `anthropic-version` (400 without, as Anthropic answers).
/// `Some(response)` when they are missing.
fn check_auth(report: Report, headers: &HeaderMap, request_id: &str) -> Option<Response> {
    let provider = report.provider();
    match provider {
        Provider::Openai => {
            let bearer = header_str(headers, "authorization")
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|s| !s.is_empty());
            if bearer.is_none() {
                return Some(error(
                    provider,
                    StatusCode::UNAUTHORIZED,
                    "You didn't provide an API key. You need to provide your admin API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    None,
                    request_id,
                    None,
                ));
            }
        }
        _ => {
            if header_str(headers, "x-api-key").is_none() {
                return Some(error(
                    provider,
                    StatusCode::UNAUTHORIZED,
                    "x-api-key header is required",
                    None,
                    request_id,
                    None,
                ));
            }
            if header_str(headers, "anthropic-version").is_none() {
                return Some(error(
                    provider,
                    StatusCode::BAD_REQUEST,
                    "anthropic-version: header is required",
                    None,
                    request_id,
                    None,
                ));
            }
        }
    }
    None
}

async fn serve(State(sh): St, headers: HeaderMap, uri: Uri, report: Report) -> Response {
    let provider = report.provider();
    let n = sh.report_requests.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("req_report_{n:012x}");
    if let Some(resp) = check_auth(report, &headers, &request_id) {
        return resp;
    }
    let cfg = &sh.config.reports;
    let every = u64::from(cfg.rate_limit_every);
    // Counted among the requests that passed auth.
    let passed = sh
        .report_requests_authorized
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if every > 0 && passed % every == 0 {
        let msg = errors::default_message(provider, StatusCode::TOO_MANY_REQUESTS);
        return error(
            provider,
            StatusCode::TOO_MANY_REQUESTS,
            msg,
            None,
            &request_id,
            Some(sh.config.retry_after_secs),
        );
    }
    let records = sh.recorder.snapshot();
    let q = uri.query();
    let result = match report {
        Report::OpenAiCompletions => OpenAiUsageQuery::from_query_string(q)
            .and_then(|q| super::openai_usage(OpenAiUsageKind::Completions, &records, &q, cfg)),
        Report::OpenAiEmbeddings => OpenAiUsageQuery::from_query_string(q)
            .and_then(|q| super::openai_usage(OpenAiUsageKind::Embeddings, &records, &q, cfg)),
        Report::OpenAiCosts => OpenAiCostsQuery::from_query_string(q)
            .and_then(|q| super::openai_costs(&records, &q, cfg)),
        Report::AnthropicUsage => AnthropicUsageQuery::from_query_string(q)
            .and_then(|q| super::anthropic_usage(&records, &q, cfg)),
        Report::AnthropicCosts => AnthropicCostQuery::from_query_string(q)
            .and_then(|q| super::anthropic_costs(&records, &q, cfg)),
    };
    match result {
        Ok(body) => {
            let mut resp = axum::Json(body).into_response();
            let name = match provider {
                Provider::Anthropic => "request-id",
                _ => "x-request-id",
            };
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert(name, v);
            }
            resp
        }
        Err(e) => bad_request(provider, &e, &request_id),
    }
}

fn bad_request(provider: Provider, e: &ReportError, request_id: &str) -> Response {
    error(
        provider,
        StatusCode::BAD_REQUEST,
        &e.to_string(),
        Some(e.param()),
        request_id,
        None,
    )
}

async fn gcp_csv(State(sh): St, uri: Uri) -> Response {
    let result = GcpBillingQuery::from_query_string(uri.query())
        .and_then(|q| super::gcp_billing_csv(&sh.recorder.snapshot(), &q, &sh.config.reports));
    match result {
        Ok(csv) => {
            let mut resp = csv.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            resp
        }
        Err(e) => bad_request(Provider::Gemini, &e, ""),
    }
}
