//! The HTTP server: `Simulator`, its router, and the per-request pipeline shared by all
//! providers (request ids, auth, hang/latency, injected failures, response and record
//! plumbing); it must not shape any provider's success payloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth;
use crate::cache::PromptCache;
use crate::config::SimConfig;
use crate::errors;
use crate::faults::Faults;
use crate::generate::{self, FNV_OFFSET, Rng, fnv1a, mix};
use crate::models;
use crate::record::{Provider, RecordGuard, Recorder, ServedRecord};
use crate::sse::{self, Framing, Step, StreamSpec};
use crate::tokens;
use crate::{anthropic, gemini, openai, responses};

/// State shared by every request of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) cache: PromptCache,
    counter: AtomicU64,
    salt: u64,
    /// Report requests received (request ids of report responses).
    pub(crate) report_requests: AtomicU64,
    /// Report requests that passed auth (drives `reports.rate_limit_every`).
    pub(crate) report_requests_authorized: AtomicU64,
}

/// The provider simulator. Cheap to clone; clones share state (served record, prompt
/// cache, request-id counter).
#[derive(Clone, Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    /// A simulator with `config` (out-of-range values are clamped; see
    /// [`SimConfig::validate`]). Loads the tokenizers in the background.
    pub fn new(config: SimConfig) -> Self {
        let config = config.clamped();
        let salt = mix(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ config.seed);
        // The providers' price list is loaded at start, not on the first report.
        crate::reports::load_prices();
        std::thread::spawn(|| {
            tokens::warm_up();
            generate::warm_up();
        });
        Self {
            shared: Arc::new(Shared {
                recorder: Arc::new(Recorder::new(config.served_capacity)),
                cache: PromptCache::new(config.cache_capacity),
                counter: AtomicU64::new(0),
                salt,
                report_requests: AtomicU64::new(0),
                report_requests_authorized: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// The effective configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Every request served so far (oldest first; bounded by
    /// `SimConfig::served_capacity`). A streamed request appears once its stream has
    /// ended, been aborted, or its client went away.
    pub fn served(&self) -> Vec<ServedRecord> {
        self.shared.recorder.snapshot()
    }

    /// Records evicted from the served log because it was full.
    pub fn served_evicted(&self) -> u64 {
        self.shared.recorder.dropped()
    }

    /// Appends records to the served log as if they had been served (e.g. a synthetic
    /// month for the usage and cost reports). The log stays bounded by
    /// `SimConfig::served_capacity`: the oldest records are evicted first.
    pub fn push_served(&self, records: impl IntoIterator<Item = ServedRecord>) {
        for r in records {
            self.shared.recorder.push(r);
        }
    }

    /// The axum router with every provider route, the usage and cost report routes and
    /// `GET /_sim/served`.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(crate::reports::http::routes())
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses_create))
            .route("/v1/models", get(list_models))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1beta/models", get(gemini_models))
            .route("/v1beta/models/{*rest}", post(gemini_call))
            .route("/v1/models/{*rest}", post(gemini_call))
            .route("/_sim/served", get(served))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until the task is dropped or the listener fails.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(%err, "set_nodelay failed");
            }
        });
        axum::serve(listener, self.router()).await
    }
}

/// A simulator running on a background task (see [`spawn`]). Dropping the handle stops
/// the server.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    simulator: Simulator,
    task: JoinHandle<std::io::Result<()>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`: the base URL to point SDKs at (append `/v1` for OpenAI).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The running simulator (shares state with the server).
    pub fn simulator(&self) -> &Simulator {
        &self.simulator
    }

    /// Shortcut for `simulator().served()`.
    pub fn served(&self) -> Vec<ServedRecord> {
        self.simulator.served()
    }

    /// Stops the server.
    pub fn shutdown(self) {}
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (e.g. `127.0.0.1:0`), serves a new simulator on a background task and
/// returns its handle with the bound address.
pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let simulator = Simulator::new(config);
    let task = tokio::spawn(simulator.clone().serve(listener));
    Ok(SimHandle {
        addr,
        simulator,
        task,
    })
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Usage to put in the served record.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RecordUsage {
    pub(crate) input: u64,
    pub(crate) cached: u64,
    pub(crate) cache_write: u64,
    pub(crate) output: u64,
    pub(crate) reasoning: u64,
}

/// One request in flight.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) provider: Provider,
    pub(crate) faults: Faults,
    pub(crate) request_id: String,
    /// Hash of the seed and the body: drives the generated output.
    pub(crate) hash: u64,
    /// `hash` plus the SDK retry count (`x-stainless-retry-count`): drives injected
    /// failures, so an SDK retry of a failed request draws again.
    fault_hash: u64,
    pub(crate) guard: RecordGuard,
    pub(crate) query: Option<String>,
}

impl Ctx {
    /// Starts a request: request id, record, `x-sim-hang-ms`, then authentication.
    async fn begin(
        shared: Arc<Shared>,
        provider: Provider,
        route: &str,
        headers: HeaderMap,
        uri: &Uri,
        body: &[u8],
    ) -> Result<Self, Response> {
        let n = shared.counter.fetch_add(1, Ordering::Relaxed);
        let id_bits = mix(shared.salt ^ n);
        let request_id = format!("req_{id_bits:016x}{n:08x}");
        let retry = headers
            .get("x-stainless-retry-count")
            .map_or(&b""[..], HeaderValue::as_bytes);
        let hash = fnv1a(fnv1a(FNV_OFFSET, &shared.config.seed.to_le_bytes()), body);
        let fault_hash = fnv1a(hash, retry);
        let query = uri.query().map(str::to_owned);
        let key_fingerprint = auth::extract_key(&headers, query.as_deref()).map(auth::fingerprint);
        let rec = ServedRecord {
            at: unix_micros(),
            provider,
            route: route.to_owned(),
            key_fingerprint,
            request_id: request_id.clone(),
            ..ServedRecord::default()
        };
        let ctx = Ctx {
            guard: RecordGuard::new(shared.recorder.clone(), rec),
            faults: Faults::from_headers(&headers),
            shared,
            provider,
            request_id,
            hash,
            fault_hash,
            query,
        };
        if let Some(ms) = ctx.faults.hang_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if ctx.guard.rec.key_fingerprint.is_none() {
            let msg = errors::default_message(provider, StatusCode::UNAUTHORIZED);
            return Err(ctx.error(StatusCode::UNAUTHORIZED, msg));
        }
        Ok(ctx)
    }

    pub(crate) fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The request's deterministic RNG.
    pub(crate) fn rng(&self) -> Rng {
        Rng::new(mix(self.hash))
    }

    /// An id with `prefix` (e.g. `chatcmpl-`), unique per request (it reuses the
    /// request id's digits).
    pub(crate) fn id(&self, prefix: &str) -> String {
        let digits = self
            .request_id
            .strip_prefix("req_")
            .unwrap_or(&self.request_id);
        format!("{prefix}{digits}")
    }

    /// Parses the body as a JSON object, or answers 400.
    pub(crate) fn parse(&mut self, body: &[u8]) -> Result<Value, Box<Response>> {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(Box::new(self.take_error(
                StatusCode::BAD_REQUEST,
                "The request body must be a JSON object.",
            ))),
            Err(e) => Err(Box::new(self.take_error(
                StatusCode::BAD_REQUEST,
                &format!("We could not parse the JSON body of your request: {e}"),
            ))),
        }
    }

    /// Sets the requested/served model on the record; answers 404 for an unknown model
    /// when `reject_unknown_models` is on.
    pub(crate) fn model(&mut self, requested: &str) -> Result<String, Box<Response>> {
        let served = models::served_model(self.config(), requested);
        self.guard.rec.model_requested = requested.to_owned();
        self.guard.rec.model_served.clone_from(&served);
        if self.config().reject_unknown_models && !models::is_known(self.config(), requested) {
            let msg =
                format!("The model `{requested}` does not exist or you do not have access to it.");
            return Err(Box::new(self.take_error(StatusCode::NOT_FOUND, &msg)));
        }
        Ok(served)
    }

    /// Answers with the injected failure, if this request draws one.
    pub(crate) fn injected_failure(&mut self) -> Result<(), Box<Response>> {
        match self
            .faults
            .failure(&self.shared.config, self.provider, self.fault_hash)
        {
            Some(status) => {
                let msg = errors::default_message(self.provider, status);
                Err(Box::new(self.take_error(status, msg)))
            }
            None => Ok(()),
        }
    }

    pub(crate) fn set_usage(&mut self, u: RecordUsage, streamed: bool) {
        let r = &mut self.guard.rec;
        r.streamed = streamed;
        r.input_tokens = u.input;
        r.cached_input_tokens = u.cached;
        r.cache_write_tokens = u.cache_write;
        r.output_tokens = u.output;
        r.reasoning_tokens = u.reasoning;
    }

    fn common_headers(&self, headers: &mut HeaderMap) {
        let id = HeaderValue::from_str(&self.request_id).ok();
        match self.provider {
            Provider::Openai => {
                if let Some(id) = id {
                    headers.insert(HeaderName::from_static("x-request-id"), id);
                }
                headers.insert(
                    HeaderName::from_static("openai-processing-ms"),
                    HeaderValue::from_static("1"),
                );
                headers.insert(
                    HeaderName::from_static("openai-version"),
                    HeaderValue::from_static("2020-10-01"),
                );
            }
            Provider::Anthropic => {
                if let Some(id) = id {
                    headers.insert(HeaderName::from_static("request-id"), id);
                }
            }
            Provider::Gemini => {}
        }
    }

    /// An error response in the provider's format; the record keeps the status.
    pub(crate) fn take_error(&mut self, status: StatusCode, message: &str) -> Response {
        let body = errors::error_body(self.provider, status, message, &self.request_id);
        self.guard.rec.status = status.as_u16();
        self.guard.rec.completed = true;
        let mut resp = (status, axum::Json(body)).into_response();
        self.common_headers(resp.headers_mut());
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.config().retry_after_secs),
            );
        }
        resp
    }

    /// Like [`Ctx::take_error`], consuming the request (the record is pushed now).
    pub(crate) fn error(mut self, status: StatusCode, message: &str) -> Response {
        self.take_error(status, message)
    }

    /// A complete JSON response after the configured latency.
    pub(crate) async fn json(mut self, body: &Value) -> Response {
        let latency = self.faults.latency_ms.unwrap_or(self.config().latency_ms);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut text = serde_json::to_string(body).unwrap_or_default();
        if self.faults.invalid.is_some() {
            let cut = sse::truncate_half(&text).len();
            text.truncate(cut);
        }
        let rec = &mut self.guard.rec;
        rec.status = 200;
        rec.completed = true;
        rec.output_tokens_sent = rec.output_tokens;
        let mut resp = Response::new(Body::from(text));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.common_headers(h);
        resp
    }

    /// A streaming response over `steps`.
    pub(crate) fn stream(self, steps: Vec<Step>, framing: Framing) -> Response {
        let spec = StreamSpec {
            framing,
            ttft_ms: self.faults.ttft_ms.unwrap_or(self.config().ttft_ms),
            chunk_delay_ms: self
                .faults
                .chunk_delay_ms
                .unwrap_or(self.config().inter_chunk_ms),
            fail_after: self.faults.fail_after_chunks,
            invalid: self.faults.invalid,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(framing.content_type()),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        self.common_headers(&mut headers);
        let mut guard = self.guard;
        guard.rec.status = 200;
        guard.rec.streamed = true;
        let mut resp = Response::new(sse::body(steps, spec, guard));
        *resp.headers_mut() = headers;
        resp
    }

    /// Chunk size in tokens.
    pub(crate) fn chunk_tokens(&self) -> u32 {
        self.config().chunk_tokens
    }
}

type St = State<Arc<Shared>>;

/// Unwraps `Ok`, or returns the boxed error response from the enclosing handler.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}
pub(crate) use tri;

macro_rules! entry {
    ($name:ident, $provider:expr, $route:literal, $handler:path) => {
        async fn $name(State(sh): St, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
            match Ctx::begin(sh, $provider, $route, headers, &uri, &body).await {
                Ok(ctx) => $handler(ctx, &body).await,
                Err(resp) => resp,
            }
        }
    };
}

entry!(
    chat_completions,
    Provider::Openai,
    "/v1/chat/completions",
    openai::chat
);
entry!(
    completions,
    Provider::Openai,
    "/v1/completions",
    openai::completions
);
entry!(
    embeddings,
    Provider::Openai,
    "/v1/embeddings",
    openai::embeddings
);
entry!(
    responses_create,
    Provider::Openai,
    "/v1/responses",
    responses::create
);
entry!(
    messages,
    Provider::Anthropic,
    "/v1/messages",
    anthropic::messages
);
entry!(
    count_tokens,
    Provider::Anthropic,
    "/v1/messages/count_tokens",
    anthropic::count_tokens
);

async fn list_models(State(sh): St, headers: HeaderMap, uri: Uri) -> Response {
    let provider = if headers.contains_key("anthropic-version") {
        Provider::Anthropic
    } else {
        Provider::Openai
    };
    match Ctx::begin(sh, provider, "/v1/models", headers, &uri, b"").await {
        Ok(ctx) if provider == Provider::Anthropic => anthropic::models(ctx).await,
        Ok(ctx) => openai::models(ctx).await,
        Err(resp) => resp,
    }
}

async fn gemini_models(State(sh): St, headers: HeaderMap, uri: Uri) -> Response {
    match Ctx::begin(sh, Provider::Gemini, "/v1beta/models", headers, &uri, b"").await {
        Ok(ctx) => gemini::models(ctx).await,
        Err(resp) => resp,
    }
}

async fn gemini_call(
    State(sh): St,
    Path(rest): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let (model, method) = rest.rsplit_once(':').unwrap_or((rest.as_str(), ""));
    let route = match method {
        "generateContent" => "/v1beta/models/{model}:generateContent",
        "streamGenerateContent" => "/v1beta/models/{model}:streamGenerateContent",
        "countTokens" => "/v1beta/models/{model}:countTokens",
        _ => "/v1beta/models/{model}",
    };
    let ctx = match Ctx::begin(sh, Provider::Gemini, route, headers, &uri, &body).await {
        Ok(ctx) => ctx,
        Err(resp) => return resp,
    };
    match method {
        "generateContent" => gemini::generate(ctx, model, &body, false).await,
        "streamGenerateContent" => gemini::generate(ctx, model, &body, true).await,
        "countTokens" => gemini::count_tokens(ctx, model, &body).await,
        _ => {
            let msg = format!("Method not found: {method:?}.");
            ctx.error(StatusCode::NOT_FOUND, &msg)
        }
    }
}

async fn served(State(sh): St) -> Response {
    axum::Json(sh.recorder.snapshot()).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let body = errors::error_body(
        Provider::Openai,
        StatusCode::NOT_FOUND,
        &format!("Unknown route {}", uri.path()),
        "",
    );
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Seconds since the Unix epoch (the `created` fields).
pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
