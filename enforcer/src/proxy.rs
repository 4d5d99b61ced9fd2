//! Request handling: classify the endpoint, authenticate the gateway key, read and
//! inspect the body, then hand the request to a forwarding task that owns it to the end
//! (so a client that disconnects can never stop its usage from being recorded). Must not
//! parse provider formats itself (`providers`) or talk to the log directly (`sink`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tally_events::{EventId, Provider, RuleKind, Timestamp};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::accounting::RequestCtx;
use crate::config::{ProxyConfig, UnknownPaths};
use crate::error::{ErrorKind, ProxyError};
use crate::forward::{self, Forward};
use crate::keys::{self, KeyStore};
use crate::metrics::EnforcerMetrics;
use crate::policy::{PolicyEngine, PolicySet, RateLimits, RequestAttrs, Reservation, Verdict};
use crate::pricing::PriceTable;
use crate::providers;
use crate::sink::EventSink;
use crate::upstream::{self, Clients, Upstream};

/// The body type of every response tally sends.
pub type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// Counters of the proxy, for metrics.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub requests: AtomicU64,
    pub denied: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Everything request handling needs; shared by all connections.
#[derive(Debug)]
pub struct ProxyState {
    pub config: ProxyConfig,
    pub instance: String,
    pub keys: KeyStore,
    pub upstreams: BTreeMap<String, Upstream>,
    pub prices: PriceTable,
    pub clients: Clients,
    pub sink: EventSink,
    pub stats: ProxyStats,
    pub policy: PolicyEngine,
    /// Metrics (shared with the sink, see [`EventSink::metrics`]).
    pub metrics: Arc<EnforcerMetrics>,
}

impl ProxyState {
    /// Build from config. Fails on unset credential variables or an unreadable price file.
    pub fn new(config: ProxyConfig, instance: String, sink: EventSink) -> Result<Self, String> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let prices = match &config.prices {
            Some(p) => PriceTable::load(p).map_err(|e| e.to_string())?,
            None => PriceTable::built_in(),
        };
        let policy = match &config.policy_file {
            Some(p) => PolicySet::load(p).map_err(|e| e.to_string())?,
            None => PolicySet::empty(),
        };
        // Estimates need the tokenizer tables: load them while the listener starts.
        std::thread::spawn(crate::providers::estimate::warm_up);
        Ok(Self {
            policy: PolicyEngine::new(policy),
            keys: KeyStore::new(&config.keys, config.dev_keys),
            upstreams: upstream::resolve_upstreams(&config.upstreams)?,
            clients: Clients::new(&config),
            prices,
            config,
            instance,
            metrics: sink.metrics().clone(),
            sink,
            stats: ProxyStats::default(),
        })
    }
}

/// A new request id: `req_` + a time-ordered UUID in simple form.
pub fn new_request_id() -> String {
    format!("req_{}", EventId::new().as_uuid().simple())
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn error_response(
    provider: Option<Provider>,
    kind: ErrorKind,
    message: &str,
    request_id: &str,
    started: Instant,
) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = providers::error_body(
        provider.unwrap_or(Provider::Openai),
        status.as_u16(),
        kind.code(),
        message,
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The stable code, whatever the provider's error format has room for.
    h.insert("x-tally-error-code", HeaderValue::from_static(kind.code()));
    stamp(h, request_id, started.elapsed());
    resp
}

/// Add tally's response headers.
pub(crate) fn stamp(
    headers: &mut http::HeaderMap,
    request_id: &str,
    overhead: std::time::Duration,
) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-tally-request-id", v);
    }
    let overhead = overhead.as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("{overhead:.3}")) {
        headers.insert("x-tally-overhead-ms", v);
    }
}

/// Handle one client request.
pub async fn handle(
    state: Arc<ProxyState>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = new_request_id();
    let span = tracing::info_span!("request", request_id = %request_id, tenant = tracing::field::Empty, key_id = tracing::field::Empty);
    let endpoint = providers::classify(req.method(), req.uri().path());
    let (provider, route) = endpoint
        .as_ref()
        .map_or((None, None), |e| (Some(e.provider), Some(e.route)));
    let resp = handle_inner(&state, req, endpoint, &request_id, started, &span)
        .instrument(span.clone())
        .await;
    state
        .metrics
        .record_request(provider, route, resp.status().as_u16(), started.elapsed());
    Ok(resp)
}

async fn handle_inner(
    state: &Arc<ProxyState>,
    req: Request<Incoming>,
    endpoint: Option<providers::Endpoint>,
    request_id: &str,
    started: Instant,
    span: &tracing::Span,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let provider = endpoint.as_ref().map(|e| e.provider);
    let mut ctx = RequestCtx {
        request_id: request_id.to_owned(),
        instance: state.instance.clone(),
        started,
        tenant: "unknown".to_owned(),
        api_key_id: None,
        labels: BTreeMap::new(),
        provider,
        route: endpoint.as_ref().map(|e| e.route),
        model_requested: endpoint.as_ref().and_then(|e| e.model_in_path.clone()),
        streamed: endpoint.as_ref().is_some_and(|e| e.streaming_by_path),
        estimated_input_tokens: 0,
    };

    // Authenticate first: nothing about an unauthenticated request is trusted.
    let found = keys::find_key(&parts.headers, parts.uri.query(), provider);
    let key = found
        .as_ref()
        .and_then(|(secret, _)| state.keys.resolve(secret));
    let Some(key) = key else {
        let reason = match &found {
            None => "no gateway API key in the request; send it as the provider SDK's API key (or in x-tally-key)".to_owned(),
            Some(_) => "the gateway API key is not known to tally; check the key, or ask your platform team for one".to_owned(),
        };
        return deny(
            state,
            &ctx,
            "gateway-key",
            RuleKind::Auth,
            ErrorKind::Unauthenticated,
            reason,
        )
        .await;
    };
    let key_location = found.map(|(_, loc)| loc);
    span.record("tenant", key.tenant.as_str());
    span.record("key_id", key.key_id.as_str());
    ctx.tenant = key.tenant;
    ctx.api_key_id = Some(key.key_id);
    ctx.labels = key.labels;

    let Some(endpoint) = endpoint else {
        return match state.config.unknown_paths {
            UnknownPaths::Deny => {
                let reason = format!(
                    "{} {} is not an API tally proxies; set proxy.unknown_paths: passthrough to forward it",
                    parts.method,
                    parts.uri.path()
                );
                deny(
                    state,
                    &ctx,
                    "unknown-path",
                    RuleKind::Validation,
                    ErrorKind::UnknownPath,
                    reason,
                )
                .await
            }
            UnknownPaths::Passthrough => {
                let body = match read_body(state, body).await {
                    Ok(b) => b,
                    Err(kind) => return too_large_or_bad(state, &ctx, kind).await,
                };
                let upstream = state.upstreams.values().next().cloned();
                forward::start(
                    state.clone(),
                    Forward::passthrough(ctx, parts, body, key_location, upstream),
                )
                .await
            }
        };
    };

    let body = match read_body(state, body).await {
        Ok(b) => b,
        Err(kind) => return too_large_or_bad(state, &ctx, kind).await,
    };
    let info = match providers::inspect_request(&endpoint, &body) {
        Ok(info) => info,
        Err(e) => {
            let reason = format!(
                "the request body is not a valid {} request: {e}",
                endpoint.provider
            );
            return deny(
                state,
                &ctx,
                "request-validation",
                RuleKind::Validation,
                ErrorKind::InvalidRequest,
                reason,
            )
            .await;
        }
    };
    if info.model.is_some() {
        ctx.model_requested = info.model.clone();
    }
    ctx.streamed = ctx.streamed || info.stream;
    ctx.estimated_input_tokens = info.estimated_input_tokens;

    if !state.sink.has_room() {
        state.stats.denied.fetch_add(1, Ordering::Relaxed);
        return error_response(
            provider,
            ErrorKind::EventLog,
            "tally cannot record usage right now (event queue full or event log failing); retry shortly",
            request_id,
            started,
        );
    }
    // Policies: access rules, rate limits and caps, with reservations. Nothing to do
    // (and nothing to compute) without a policy.
    let (reservation, limits) = if state.policy.policy().is_empty() {
        (None, RateLimits::default())
    } else {
        match apply_policy(state, &ctx, &parts.headers, &info, request_id, started).await {
            Ok((r, limits)) => (Some(r), limits),
            Err(denied) => return denied,
        }
    };
    let mut resp = forward::start(
        state.clone(),
        Forward::provider(ctx, parts, body, key_location, endpoint, info, reservation),
    )
    .await;
    rate_limit_headers(resp.headers_mut(), &limits, Timestamp::now());
    resp
}

/// OpenAI-style `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers for the
/// limits tally enforced on this request. They replace the provider's own headers of the
/// same kind: the client sees the limit that refuses it first (tally's), the provider's
/// otherwise.
fn rate_limit_headers(headers: &mut http::HeaderMap, limits: &RateLimits, now: Timestamp) {
    for (kind, status) in [("requests", limits.requests), ("tokens", limits.tokens)] {
        let Some(s) = status else { continue };
        let reset = reset_text(s.reset_at.as_micros().saturating_sub(now.as_micros()));
        for (what, value) in [
            ("limit", s.limit.to_string()),
            ("remaining", s.remaining.to_string()),
            ("reset", reset),
        ] {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(format!("x-ratelimit-{what}-{kind}").as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

/// A span of time as OpenAI's reset headers write it: `0s`, `20ms`, `1s`, `6m0s`,
/// `1h2m3s` (sub-second parts only below one second).
fn reset_text(micros: i64) -> String {
    let micros = micros.max(0).unsigned_abs();
    if micros < 1_000_000 {
        return if micros == 0 {
            "0s".to_owned()
        } else {
            format!("{}ms", micros.div_ceil(1000))
        };
    }
    let secs = micros.div_ceil(1_000_000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

async fn read_body(state: &ProxyState, body: Incoming) -> Result<Bytes, ErrorKind> {
    let limit = std::time::Duration::from_millis(state.config.request_body_timeout_ms);
    let read = tokio::time::timeout(
        limit,
        Limited::new(body, state.config.max_body_bytes).collect(),
    );
    let Ok(read) = read.await else {
        return Err(ErrorKind::ClientGone);
    };
    match read {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ErrorKind::BodyTooLarge)
        }
        Err(_) => Err(ErrorKind::ClientGone),
    }
}

async fn too_large_or_bad(
    state: &ProxyState,
    ctx: &RequestCtx,
    kind: ErrorKind,
) -> Response<ProxyBody> {
    let reason = match kind {
        ErrorKind::BodyTooLarge => format!(
            "the request body exceeds proxy.max_body_bytes ({} bytes)",
            state.config.max_body_bytes
        ),
        _ => "the request body could not be read (client disconnected or sent a malformed body)"
            .to_owned(),
    };
    deny(
        state,
        ctx,
        "request-size",
        RuleKind::Validation,
        kind,
        reason,
    )
    .await
}

/// Refuse a request: one decision event, one usage event (`denied`), and an error in the
/// provider's format.
pub(crate) async fn deny(
    state: &ProxyState,
    ctx: &RequestCtx,
    rule: &str,
    rule_kind: RuleKind,
    kind: ErrorKind,
    reason: String,
) -> Response<ProxyBody> {
    state.stats.denied.fetch_add(1, Ordering::Relaxed);
    tracing::info!(code = kind.code(), rule, %reason, "request denied");
    let decision = ctx.denial(rule, rule_kind, reason.clone());
    state.sink.emit_always(decision.into()).await;
    state
        .sink
        .emit_durable(ctx.denied_usage(kind.status()).into())
        .await;
    error_response(ctx.provider, kind, &reason, &ctx.request_id, ctx.started)
}

/// Wait for the forwarding task's response head.
pub(crate) async fn await_head(
    rx: oneshot::Receiver<Response<ProxyBody>>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    match rx.await {
        Ok(resp) => resp,
        Err(_) => error_response(
            ctx.provider,
            ErrorKind::UpstreamBody,
            "internal error: the forwarding task ended without a response",
            &ctx.request_id,
            ctx.started,
        ),
    }
}

impl From<ProxyError> for std::io::Error {
    fn from(e: ProxyError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Evaluate the policy for a request: emit its decisions, and either reserve (Ok) or
/// build the denial response (Err).
async fn apply_policy(
    state: &ProxyState,
    ctx: &RequestCtx,
    headers: &http::HeaderMap,
    info: &providers::RequestInfo,
    request_id: &str,
    started: Instant,
) -> Result<(Reservation, RateLimits), Response<ProxyBody>> {
    let max_output = info
        .max_output_tokens
        .unwrap_or(state.config.default_max_output_tokens);
    let attrs = RequestAttrs {
        tenant: ctx.tenant.clone(),
        key_id: ctx.api_key_id.clone(),
        labels: ctx.labels.clone(),
        provider: ctx.provider,
        route: ctx.route,
        model: ctx.model_requested.clone(),
        headers: policy_headers(headers),
        estimated_input_tokens: info.estimated_input_tokens,
        max_output_tokens: max_output,
        estimated_cost_micros: ctx.model_requested.as_deref().and_then(|m| {
            let tokens = tally_events::TokenCounts {
                input_tokens: info.estimated_input_tokens,
                output_tokens: max_output,
                ..Default::default()
            };
            state.prices.cost_micros(m, &tokens, false)
        }),
    };
    let evaluation = state
        .policy
        .evaluate(&attrs, &ctx.header(request_id), Timestamp::now());
    for d in evaluation.decisions {
        state.sink.emit_always(d.into()).await;
    }
    let limits = evaluation.limits;
    match evaluation.verdict {
        Verdict::Allow(r) => Ok((r, limits)),
        Verdict::Deny {
            rule,
            status,
            message,
            retry_after_secs,
        } => {
            state.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(rule, status, %message, "request denied by policy");
            state
                .sink
                .emit_durable(ctx.denied_usage(status).into())
                .await;
            let mut resp = error_response(
                ctx.provider,
                ErrorKind::Denied,
                &format!("denied by tally rule `{rule}`: {message}"),
                request_id,
                started,
            );
            *resp.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            let h = resp.headers_mut();
            if let Some(secs) = retry_after_secs
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                h.insert(http::header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&rule) {
                h.insert("x-tally-rule", v);
            }
            rate_limit_headers(h, &limits, Timestamp::now());
            Err(resp)
        }
    }
}

/// Request headers visible to policy expressions: lowercase names, secrets left out.
fn policy_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    const SECRET: [&str; 6] = [
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "x-tally-key",
        "cookie",
        "proxy-authorization",
    ];
    headers
        .iter()
        .filter(|(n, _)| !SECRET.contains(&n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LimitStatus;

    #[test]
    fn reset_spans_read_like_openai_headers() {
        assert_eq!(reset_text(0), "0s");
        assert_eq!(reset_text(-5), "0s");
        assert_eq!(reset_text(19_001), "20ms");
        assert_eq!(reset_text(1_000_000), "1s");
        assert_eq!(reset_text(59_500_000), "1m0s");
        assert_eq!(reset_text(360_000_000), "6m0s");
        assert_eq!(reset_text(3_723_000_000), "1h2m3s");
    }

    #[test]
    fn rate_limit_headers_report_each_kind_that_applied() {
        let now = Timestamp::from_micros(1_000_000_000);
        let limits = RateLimits {
            requests: Some(LimitStatus {
                limit: 60,
                remaining: 59,
                reset_at: now.plus_micros(60_000_000),
            }),
            tokens: None,
        };
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-ratelimit-limit-tokens",
            HeaderValue::from_static("30000"),
        );
        rate_limit_headers(&mut h, &limits, now);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1m0s");
        // No token limit in tally: the provider's header stays.
        assert_eq!(h["x-ratelimit-limit-tokens"], "30000");
        assert!(h.get("x-ratelimit-remaining-tokens").is_none());
    }
}
