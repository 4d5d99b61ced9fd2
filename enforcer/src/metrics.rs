//! Prometheus metrics of the enforcer: requests by provider, route and status, the
//! proxy's time to the response head, and — counted by the event sink as events reach
//! the log, so they equal what the tables will hold — tokens, cost and decisions. Also a
//! small [`FnMetric`] for values read at scrape time (queue depth, log and ledger state).
//!
//! Owns the metric types and their label vocabularies; must not serve HTTP (the binary
//! renders the registry on the admin listener) and must not take a lock on the request
//! path: request counters and the latency histogram are fixed arrays of atomics indexed
//! by closed vocabularies. Labels are bounded: never request ids; `tenant` only when
//! [`EnforcerMetrics::new`] is asked for it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tally_events::{Event, Provider, Route, TokenCounts};

/// Upper bounds (seconds) of the request latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// `provider` label values: the known providers, then `other` and `none` (the request
/// did not address a known API).
const PROVIDERS: [&str; 5] = ["openai", "anthropic", "gemini", "other", "none"];

/// Status codes counted under their own value; any other is counted by class (`2xx`).
const STATUSES: [u16; 16] = [
    200, 201, 204, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504,
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const STATUS_SLOTS: usize = STATUSES.len() + STATUS_CLASSES.len();

fn provider_slot(p: Option<Provider>) -> usize {
    match p {
        Some(Provider::Openai) => 0,
        Some(Provider::Anthropic) => 1,
        Some(Provider::Gemini) => 2,
        Some(Provider::Other) => 3,
        None => 4,
    }
}

/// `route` label values: every known route, then `other` and `none`.
fn route_count() -> usize {
    Route::ALL.len() + 2
}

fn route_slot(r: Option<Route>) -> usize {
    match r {
        None => Route::ALL.len() + 1,
        Some(r) => Route::ALL
            .iter()
            .position(|x| *x == r)
            .unwrap_or(Route::ALL.len()),
    }
}

fn route_label(slot: usize) -> &'static str {
    match Route::ALL.get(slot) {
        Some(r) => r.as_str(),
        None if slot == Route::ALL.len() => "other",
        None => "none",
    }
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|s| *s == status) {
        Some(i) => i,
        None => {
            let class = match status {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                500..=599 => 4,
                _ => 5,
            };
            STATUSES.len() + class
        }
    }
}

fn status_label(slot: usize) -> String {
    match STATUSES.get(slot) {
        Some(s) => s.to_string(),
        None => STATUS_CLASSES
            .get(slot - STATUSES.len())
            .copied()
            .unwrap_or("other")
            .to_owned(),
    }
}

/// Requests answered by the proxy, by provider, route and response status.
#[derive(Clone)]
pub struct RequestCounters {
    slots: Arc<[AtomicU64]>,
}

impl fmt::Debug for RequestCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestCounters").finish_non_exhaustive()
    }
}

impl RequestCounters {
    fn new() -> Self {
        let n = PROVIDERS.len() * route_count() * STATUS_SLOTS;
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(provider: Option<Provider>, route: Option<Route>, status: u16) -> usize {
        (provider_slot(provider) * route_count() + route_slot(route)) * STATUS_SLOTS
            + status_slot(status)
    }

    /// Count one request.
    pub fn inc(&self, provider: Option<Provider>, route: Option<Route>, status: u16) {
        if let Some(c) = self.slots.get(Self::index(provider, route, status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of one label combination (for tests and the binary's checks).
    pub fn get(&self, provider: Option<Provider>, route: Option<Route>, status: u16) -> u64 {
        self.slots
            .get(Self::index(provider, route, status))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl EncodeMetric for RequestCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let per_provider = route_count() * STATUS_SLOTS;
        for (i, c) in self.slots.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            let provider = PROVIDERS.get(i / per_provider).copied().unwrap_or("none");
            let route = route_label((i % per_provider) / STATUS_SLOTS);
            let status = status_label(i % STATUS_SLOTS);
            let labels = [
                ("provider", provider),
                ("route", route),
                ("status", status.as_str()),
            ];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// One provider's latency observations.
struct HistogramSlot {
    /// Per bucket (last: +Inf), not cumulative.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Seconds from a request's arrival to its response head, by provider. Lock-free.
#[derive(Clone)]
pub struct LatencyHistogram {
    slots: Arc<[HistogramSlot; PROVIDERS.len()]>,
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram").finish_non_exhaustive()
    }
}

impl LatencyHistogram {
    fn new() -> Self {
        Self {
            slots: Arc::new(std::array::from_fn(|_| HistogramSlot {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                count: AtomicU64::new(0),
                sum_micros: AtomicU64::new(0),
            })),
        }
    }

    /// Record one observation.
    pub fn observe(&self, provider: Option<Provider>, elapsed: Duration) {
        let Some(slot) = self.slots.get(provider_slot(provider)) else {
            return;
        };
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = slot.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        slot.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        slot.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations recorded for a provider.
    pub fn count(&self, provider: Option<Provider>) -> u64 {
        self.slots
            .get(provider_slot(provider))
            .map_or(0, |s| s.count.load(Ordering::Relaxed))
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (i, slot) in self.slots.iter().enumerate() {
            let count = slot.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(slot.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
                .collect();
            // Count from the buckets so `_count` always equals the `+Inf` bucket.
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = slot.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let labels = [("provider", PROVIDERS.get(i).copied().unwrap_or("none"))];
            encoder
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Whether an [`FnMetric`] is a counter or a gauge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FnKind {
    Counter,
    Gauge,
}

type ReadFn = dyn Fn() -> Vec<(Vec<(&'static str, String)>, f64)> + Send + Sync;

/// A metric whose samples are read when scraped: a function returning `(labels, value)`
/// pairs. For state that already lives elsewhere (queue depth, log and ledger figures).
#[derive(Clone)]
pub struct FnMetric {
    kind: FnKind,
    read: Arc<ReadFn>,
}

impl fmt::Debug for FnMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnMetric")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl FnMetric {
    /// A metric of several labelled samples.
    pub fn labelled(
        kind: FnKind,
        read: impl Fn() -> Vec<(Vec<(&'static str, String)>, f64)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            read: Arc::new(read),
        }
    }

    /// A metric of one unlabelled sample.
    pub fn single(kind: FnKind, read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        Self::labelled(kind, move || vec![(Vec::new(), read())])
    }
}

impl EncodeMetric for FnMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (labels, value) in (self.read)() {
            let mut e = encoder.encode_family(&labels)?;
            match self.kind {
                FnKind::Counter => e.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
                FnKind::Gauge => e.encode_gauge(&value)?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        match self.kind {
            FnKind::Counter => MetricType::Counter,
            FnKind::Gauge => MetricType::Gauge,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Every metric the enforcer records. Shared by the proxy (requests, latency) and the
/// event sink (tokens, cost, decisions, events).
#[derive(Debug)]
pub struct EnforcerMetrics {
    /// Requests answered, by provider, route and status.
    pub requests: RequestCounters,
    /// Time to the response head, by provider.
    pub latency: LatencyHistogram,
    tokens: Family<Labels, Counter>,
    cost_micros: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    tenant_label: bool,
}

impl Default for EnforcerMetrics {
    fn default() -> Self {
        Self::new(false)
    }
}

/// Reads one token kind from [`TokenCounts`].
type TokenField = fn(&TokenCounts) -> u64;

/// Token kinds and how to read them from [`TokenCounts`].
const TOKEN_KINDS: [(&str, TokenField); 7] = [
    ("input", |t| t.input_tokens),
    ("cached_input", |t| t.cached_input_tokens),
    ("cache_write", |t| t.cache_write_tokens),
    ("output", |t| t.output_tokens),
    ("reasoning", |t| t.reasoning_tokens),
    ("audio_input", |t| t.audio_input_tokens),
    ("audio_output", |t| t.audio_output_tokens),
];

impl EnforcerMetrics {
    /// With `tenant_label`, tokens, cost and decisions also carry a `tenant` label (one
    /// series per tenant: leave off unless tenants are few).
    pub fn new(tenant_label: bool) -> Self {
        Self {
            requests: RequestCounters::new(),
            latency: LatencyHistogram::new(),
            tokens: Family::default(),
            cost_micros: Family::default(),
            decisions: Family::default(),
            events: Family::default(),
            tenant_label,
        }
    }

    /// One answered request: its counter and its latency to the response head.
    pub fn record_request(
        &self,
        provider: Option<Provider>,
        route: Option<Route>,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests.inc(provider, route, status);
        self.latency.observe(provider, elapsed);
    }

    /// An event the log accepted (called by the sink task only, off the request path).
    pub(crate) fn record_event(&self, event: &Event) {
        let header = event.header();
        self.events
            .get_or_create(&vec![("type", event.event_type().as_str().to_owned())])
            .inc();
        let tenant = self.tenant_label.then(|| header.tenant.clone());
        let with_tenant = |mut l: Labels| {
            if let Some(t) = &tenant {
                l.push(("tenant", t.clone()));
            }
            l
        };
        match event {
            Event::Usage(u) => {
                let provider = header.provider.map_or("none", Provider::as_str);
                for (kind, read) in TOKEN_KINDS {
                    let n = read(&u.tokens);
                    if n > 0 {
                        let labels = with_tenant(vec![
                            ("kind", kind.to_owned()),
                            ("provider", provider.to_owned()),
                        ]);
                        self.tokens.get_or_create(&labels).inc_by(n);
                    }
                }
                if u.cost_micros > 0 {
                    let labels = with_tenant(vec![("provider", provider.to_owned())]);
                    self.cost_micros
                        .get_or_create(&labels)
                        .inc_by(u64::try_from(u.cost_micros).unwrap_or(0));
                }
            }
            Event::Decision(d) => {
                let labels = with_tenant(vec![
                    ("rule", d.rule.clone()),
                    ("rule_kind", d.rule_kind.as_str().to_owned()),
                    ("outcome", d.outcome.as_str().to_owned()),
                ]);
                self.decisions.get_or_create(&labels).inc();
            }
            _ => {}
        }
    }

    /// Register every metric under `registry` (which should carry the `tally` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests answered by the proxy, by provider, route and response status",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head (streams: the first byte), by provider",
            self.latency.clone(),
        );
        registry.register(
            "tokens",
            "Tokens in usage events written to the event log, by kind and provider",
            self.tokens.clone(),
        );
        registry.register(
            "cost_micros",
            "Cost in micro-US-dollars of usage events written to the event log, by provider",
            self.cost_micros.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions written to the event log, by rule, rule kind and outcome",
            self.decisions.clone(),
        );
        registry.register(
            "events_appended",
            "Events written to the event log by the proxy, by type",
            self.events.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use tally_events::{EventHeader, FinishState, UsageEvent, UsageSource};

    fn render(m: &EnforcerMetrics) -> String {
        let mut registry = Registry::with_prefix("tally");
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap_or_default();
        out
    }

    #[test]
    fn requests_and_latency_render_with_bounded_labels() {
        let m = EnforcerMetrics::default();
        m.record_request(
            Some(Provider::Openai),
            Some(Route::Chat),
            200,
            Duration::from_millis(30),
        );
        m.record_request(
            Some(Provider::Openai),
            Some(Route::Chat),
            200,
            Duration::from_millis(3),
        );
        m.record_request(None, None, 401, Duration::from_millis(1));
        m.record_request(
            Some(Provider::Gemini),
            Some(Route::GenerateContent),
            418,
            Duration::from_secs(500),
        );
        let out = render(&m);
        assert!(
            out.contains(r#"tally_requests_total{provider="openai",route="chat",status="200"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_requests_total{provider="none",route="none",status="401"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"tally_requests_total{provider="gemini",route="generate_content",status="4xx"} 1"#
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE tally_request_duration_seconds histogram"));
        assert!(
            out.contains(r#"tally_request_duration_seconds_count{provider="openai"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"tally_request_duration_seconds_bucket{le="0.005",provider="openai"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_request_duration_seconds_bucket{le="0.05",provider="openai"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"tally_request_duration_seconds_bucket{le="120.0",provider="gemini"} 0"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_request_duration_seconds_bucket{le="+Inf",provider="gemini"} 1"#),
            "{out}"
        );
        assert_eq!(
            m.requests
                .get(Some(Provider::Openai), Some(Route::Chat), 200),
            2
        );
        assert_eq!(m.latency.count(None), 1);
    }

    fn usage(tenant: &str, input: u64, output: u64, cost: i64) -> Event {
        let mut header = EventHeader::new("test", "req_1", tenant);
        header.provider = Some(Provider::Anthropic);
        Event::Usage(UsageEvent {
            header,
            upstream: None,
            status_code: Some(200),
            streamed: false,
            finish_state: FinishState::Completed,
            tokens: TokenCounts {
                input_tokens: input,
                output_tokens: output,
                ..TokenCounts::default()
            },
            usage_source: UsageSource::ProviderReported,
            cost_micros: cost,
            price_version: None,
            latency_ms: 1,
            ttft_ms: None,
            retry_attempt: 0,
            retry_of: None,
        })
    }

    #[test]
    fn tokens_and_cost_add_up_and_tenant_is_opt_in() {
        let m = EnforcerMetrics::default();
        m.record_event(&usage("acme", 10, 5, 70));
        m.record_event(&usage("globex", 1, 2, 3));
        let out = render(&m);
        assert!(
            out.contains(r#"tally_tokens_total{kind="input",provider="anthropic"} 11"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_tokens_total{kind="output",provider="anthropic"} 7"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_cost_micros_total{provider="anthropic"} 73"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_events_appended_total{type="usage"} 2"#),
            "{out}"
        );
        assert!(!out.contains("tenant="), "{out}");
        assert!(
            !out.contains("req_1"),
            "request ids must never be labels: {out}"
        );

        let m = EnforcerMetrics::new(true);
        m.record_event(&usage("acme", 10, 5, 70));
        let out = render(&m);
        assert!(
            out.contains(
                r#"tally_tokens_total{kind="input",provider="anthropic",tenant="acme"} 10"#
            ),
            "{out}"
        );
    }

    #[test]
    fn fn_metrics_render_as_their_kind() {
        let mut registry = Registry::with_prefix("tally");
        registry.register(
            "queue_depth",
            "depth",
            FnMetric::single(FnKind::Gauge, || 3.0),
        );
        registry.register(
            "lag_events",
            "lag",
            FnMetric::labelled(FnKind::Gauge, || {
                vec![(vec![("table", "usage".to_owned())], 4.0)]
            }),
        );
        registry.register(
            "appended",
            "appended",
            FnMetric::single(FnKind::Counter, || 9.0),
        );
        let mut out = String::new();
        encode(&mut out, &registry).unwrap_or_default();
        assert!(out.contains("# TYPE tally_queue_depth gauge"), "{out}");
        assert!(out.contains("tally_queue_depth 3.0"), "{out}");
        assert!(
            out.contains(r#"tally_lag_events{table="usage"} 4.0"#),
            "{out}"
        );
        assert!(out.contains("# TYPE tally_appended counter"), "{out}");
        assert!(out.contains("tally_appended_total 9.0"), "{out}");
    }
}
