//! Forwarding one request upstream and relaying the answer: the attempt loop (retries
//! and fallbacks before any byte reached the client), non-streaming relay with usage read
//! from the body, and SSE relay event by event with usage tracked on the fly, client
//! disconnects handled per `on_client_abort`. Runs in its own task so it always ends by
//! writing one usage event per attempt. Must not authenticate or apply policies.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use parking_lot::Mutex;
use tally_events::{FinishState, Timestamp, TokenCounts};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::accounting::{AttemptOutcome, RequestCtx};
use crate::config::OnClientAbort;
use crate::error::ErrorKind;
use crate::keys::KeyLocation;
use crate::policy::{Reservation, StreamVerdict};
use crate::providers::{self, Endpoint, EventAction, RequestInfo, StreamTracker};
use crate::proxy::{ProxyBody, ProxyState, await_head, error_response, stamp};
use crate::upstream::{self, Upstream, strip_hop_by_hop};

/// Largest single SSE event tracked; larger events are relayed untouched.
const MAX_SSE_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A request ready to be forwarded.
pub(crate) struct Forward {
    ctx: RequestCtx,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    key_location: Option<KeyLocation>,
    target: Target,
    reservation: Option<Reservation>,
}

enum Target {
    Provider {
        endpoint: Endpoint,
        info: RequestInfo,
    },
    Passthrough {
        upstream: Option<Upstream>,
    },
}

impl Forward {
    pub(crate) fn provider(
        ctx: RequestCtx,
        parts: Parts,
        body: Bytes,
        key_location: Option<KeyLocation>,
        endpoint: Endpoint,
        info: RequestInfo,
        reservation: Option<Reservation>,
    ) -> Self {
        let mut f = Self::new(
            ctx,
            parts,
            body,
            key_location,
            Target::Provider { endpoint, info },
        );
        f.reservation = reservation;
        f
    }

    pub(crate) fn passthrough(
        ctx: RequestCtx,
        parts: Parts,
        body: Bytes,
        key_location: Option<KeyLocation>,
        upstream: Option<Upstream>,
    ) -> Self {
        Self::new(
            ctx,
            parts,
            body,
            key_location,
            Target::Passthrough { upstream },
        )
    }

    fn new(
        ctx: RequestCtx,
        parts: Parts,
        body: Bytes,
        key_location: Option<KeyLocation>,
        target: Target,
    ) -> Self {
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        Self {
            ctx,
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            body,
            key_location,
            target,
            reservation: None,
        }
    }
}

/// Start forwarding in a task of its own and wait for the response head.
pub(crate) async fn start(state: Arc<ProxyState>, fwd: Forward) -> Response<ProxyBody> {
    let (tx, rx) = oneshot::channel();
    let ctx = fwd.ctx.clone();
    // The request's span (request id, tenant, key id) follows it into the task.
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let mut fwd = fwd;
            let reservation = fwd.reservation.take();
            let spent = Mutex::new(Spent::default());
            // By reference: an async fn keeps its by-value arguments twice in its state,
            // and this state lives as long as the response streams.
            run(&state, &fwd, tx, reservation.as_ref(), &spent).await;
            if let Some(r) = &reservation {
                // Replace the reservation by what every attempt really used.
                let spent = spent.lock();
                state
                    .policy
                    .settle(r, &spent.tokens, spent.cost_micros, Timestamp::now());
            }
            state.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        .instrument(span),
    );
    await_head(rx, &ctx).await
}

/// Tokens and cost of all attempts of one request, for settling its reservation.
#[derive(Default)]
struct Spent {
    tokens: TokenCounts,
    cost_micros: i64,
}

struct Attempt<'a> {
    state: &'a ProxyState,
    spent: &'a Mutex<Spent>,
    reservation: Option<&'a Reservation>,
    ctx: &'a RequestCtx,
    id: String,
    number: u32,
    retry_of: Option<String>,
    upstream: &'a Upstream,
    upstream_elapsed: Duration,
}

impl Attempt<'_> {
    fn outcome(&self, status: Option<u16>, finish: FinishState) -> AttemptOutcome {
        AttemptOutcome {
            request_id: self.id.clone(),
            upstream: Some(self.upstream.name.clone()),
            status_code: status,
            finish_state: finish,
            reported: None,
            estimated_output_tokens: 0,
            model_served: None,
            upstream_request_id: None,
            ttft_ms: None,
            retry_attempt: self.number,
            retry_of: self.retry_of.clone(),
            input_forwarded: true,
        }
    }

    /// Queue the usage event of an attempt the client never sees (one retried).
    fn record(&self, outcome: AttemptOutcome) -> impl Future<Output = ()> + Send + '_ {
        let event = self.usage_event(outcome);
        self.state.sink.emit_always(event.into())
    }

    /// Write the usage event of the attempt whose response the client gets; call before
    /// the response's last bytes go out (with `respond_after: durable` this waits until
    /// the event is durable).
    fn finish(&self, outcome: AttemptOutcome) -> impl Future<Output = bool> + Send + '_ {
        let event = self.usage_event(outcome);
        self.state.sink.emit_durable(event.into())
    }

    fn usage_event(&self, outcome: AttemptOutcome) -> tally_events::UsageEvent {
        let event = outcome.into_event(self.ctx, Some(&self.state.prices));
        {
            let mut spent = self.spent.lock();
            spent.tokens.add(&event.tokens);
            spent.cost_micros = spent.cost_micros.saturating_add(event.cost_micros);
        }
        tracing::info!(
            request_id = %event.header.request_id,
            tenant = %event.header.tenant,
            status = ?event.status_code,
            finish = %event.finish_state,
            input = event.tokens.input_tokens,
            output = event.tokens.output_tokens,
            source = %event.usage_source,
            "usage"
        );
        event
    }

    fn overhead(&self) -> Duration {
        self.ctx
            .started
            .elapsed()
            .saturating_sub(self.upstream_elapsed)
    }

    fn error(&self, kind: ErrorKind, message: &str) -> Response<ProxyBody> {
        let mut resp = error_response(self.ctx.provider, kind, message, &self.id, self.ctx.started);
        stamp(resp.headers_mut(), &self.id, self.overhead());
        resp
    }
}

async fn run(
    state: &ProxyState,
    fwd: &Forward,
    head_tx: oneshot::Sender<Response<ProxyBody>>,
    reservation: Option<&Reservation>,
    spent: &Mutex<Spent>,
) {
    let ctx = &fwd.ctx;
    let (endpoint, info) = match &fwd.target {
        Target::Provider { endpoint, info } => (Some(endpoint), Some(info)),
        Target::Passthrough { .. } => (None, None),
    };
    let (body, strip_usage) = match (endpoint, info) {
        (Some(e), Some(i)) => match providers::prepare_upstream_body(e, &fwd.body, i) {
            Ok(Some(rewritten)) => (Bytes::from(rewritten), true),
            _ => (fwd.body.clone(), false),
        },
        _ => (fwd.body.clone(), false),
    };
    let (candidates, route) = match &fwd.target {
        Target::Provider { endpoint, .. } => {
            let route = state.config.route_for(endpoint.provider);
            let names = std::iter::once(&route.upstream).chain(&route.fallbacks);
            let c: Vec<&Upstream> = names.filter_map(|n| state.upstreams.get(n)).collect();
            (c, Some(route))
        }
        Target::Passthrough { upstream } => (upstream.iter().collect(), None),
    };
    if candidates.is_empty() {
        let msg = "no upstream is configured for this provider; add one under proxy.upstreams and proxy.routes";
        let resp = error_response(
            ctx.provider,
            ErrorKind::NoUpstream,
            msg,
            &ctx.request_id,
            ctx.started,
        );
        state.sink.emit_durable(ctx.denied_usage(503).into()).await;
        let _ = head_tx.send(resp);
        return;
    }
    let max_attempts = route.as_ref().map_or(1, |r| r.max_attempts.max(1));
    let mut head_tx = Some(head_tx);
    let mut retry_of: Option<String> = None;
    for n in 0..max_attempts {
        let last = n + 1 == max_attempts;
        let id = if n == 0 {
            ctx.request_id.clone()
        } else {
            format!("{}-r{n}", ctx.request_id)
        };
        let upstream = candidates[(n as usize) % candidates.len()];
        let mut attempt = Attempt {
            state,
            spent,
            reservation,
            ctx,
            id: id.clone(),
            number: n,
            retry_of: retry_of.clone(),
            upstream,
            upstream_elapsed: Duration::ZERO,
        };
        if n > 0 {
            let backoff = route
                .as_ref()
                .map_or(0, |r| r.backoff_ms.saturating_mul(1 << (n - 1).min(10)));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        let req = match upstream::build_request(
            upstream,
            &fwd.method,
            &fwd.path_and_query,
            &fwd.headers,
            fwd.key_location,
            body.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                let resp = attempt.error(ErrorKind::NoUpstream, &e);
                attempt
                    .finish(AttemptOutcome {
                        input_forwarded: false,
                        ..attempt.outcome(Some(503), FinishState::UpstreamError)
                    })
                    .await;
                send_head(&mut head_tx, resp);
                return;
            }
        };
        let sent_at = Instant::now();
        let timeout = Duration::from_millis(state.config.response_timeout_ms);
        // Held until the response is relayed: the lane counts the stream as in flight.
        let lane = state.clients.lane(upstream);
        let result = tokio::time::timeout(timeout, lane.client().request(req)).await;
        attempt.upstream_elapsed = sent_at.elapsed();
        let failure = match result {
            Err(_) => Some((
                ErrorKind::UpstreamTimeout,
                FinishState::Timeout,
                "the upstream did not answer in time".to_owned(),
                true,
            )),
            Ok(Err(e)) => {
                let safe = e.is_connect();
                Some((
                    ErrorKind::UpstreamConnect,
                    FinishState::UpstreamError,
                    format!("upstream request failed: {e}"),
                    safe,
                ))
            }
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let retry_status = route
                    .as_ref()
                    .is_some_and(|r| r.retry_on_status.contains(&status));
                if retry_status && !last {
                    // Drain (bounded) so the connection can be reused, then try again.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        Limited::new(resp.into_body(), 1 << 20).collect(),
                    )
                    .await;
                    state.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    attempt
                        .record(attempt.outcome(Some(status), FinishState::UpstreamError))
                        .await;
                    retry_of = Some(id);
                    continue;
                }
                let mut tracker = endpoint.map(|e| StreamTracker::new(e, strip_usage));
                relay(&attempt, resp, &mut tracker, &mut head_tx, endpoint).await;
                return;
            }
        };
        if let Some((kind, finish, message, safe)) = failure {
            state.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(code = kind.code(), upstream = %upstream.name, %message, "upstream attempt failed");
            if safe && !last {
                attempt.record(attempt.outcome(None, finish)).await;
                retry_of = Some(id);
                continue;
            }
            let resp = attempt.error(kind, &message);
            attempt
                .finish(attempt.outcome(Some(kind.status()), finish))
                .await;
            send_head(&mut head_tx, resp);
            return;
        }
    }
}

fn send_head(
    head_tx: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    resp: Response<ProxyBody>,
) -> bool {
    match head_tx.take() {
        Some(tx) => tx.send(resp).is_ok(),
        None => false,
    }
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

fn upstream_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id", "x-goog-request-id"]
        .iter()
        .find_map(|n| {
            headers
                .get(*n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn relay(
    attempt: &Attempt<'_>,
    resp: Response<Incoming>,
    tracker: &mut Option<StreamTracker>,
    head_tx: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    endpoint: Option<&Endpoint>,
) {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let up_id = upstream_request_id(&parts.headers);
    if is_sse(&parts.headers) {
        relay_stream(attempt, parts, body, tracker, head_tx, up_id).await;
    } else {
        relay_whole(attempt, parts, body, head_tx, endpoint, up_id).await;
    }
}

async fn relay_whole(
    attempt: &Attempt<'_>,
    mut parts: http::response::Parts,
    body: Incoming,
    head_tx: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    endpoint: Option<&Endpoint>,
    up_id: Option<String>,
) {
    let config = &attempt.state.config;
    let read = tokio::time::timeout(
        Duration::from_millis(config.idle_timeout_ms),
        Limited::new(body, config.max_response_bytes).collect(),
    )
    .await;
    let status = parts.status.as_u16();
    let bytes = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let msg = format!("the upstream response could not be read: {e}");
            let resp = attempt.error(ErrorKind::UpstreamBody, &msg);
            let mut o = attempt.outcome(Some(502), FinishState::UpstreamError);
            o.upstream_request_id = up_id;
            attempt.finish(o).await;
            send_head(head_tx, resp);
            return;
        }
        Err(_) => {
            let resp = attempt.error(
                ErrorKind::UpstreamTimeout,
                "the upstream response body stalled",
            );
            let mut o = attempt.outcome(Some(504), FinishState::Timeout);
            o.upstream_request_id = up_id;
            attempt.finish(o).await;
            send_head(head_tx, resp);
            return;
        }
    };
    let report = match endpoint {
        Some(e) if parts.status.is_success() => providers::usage_from_body(e, &bytes).ok(),
        _ => None,
    };
    stamp(&mut parts.headers, &attempt.id, attempt.overhead());
    // The head goes out now; the body once the usage event is written (see `finish`).
    let body_bytes = bytes.clone();
    let (open, body) = GatedBody::new(bytes);
    let resp = Response::from_parts(parts, body.boxed());
    let delivered = send_head(head_tx, resp);
    let mut o = attempt.outcome(
        Some(status),
        match (delivered, status < 400) {
            (false, _) => FinishState::ClientAborted,
            (true, true) => FinishState::Completed,
            (true, false) => FinishState::UpstreamError,
        },
    );
    o.ttft_ms = Some(ms(attempt.ctx.started.elapsed()));
    if let Some(r) = report {
        o.model_served = r.model_served;
        o.upstream_request_id = r.upstream_request_id.or(up_id);
        o.reported = Some((r.tokens, r.complete));
    } else {
        o.upstream_request_id = up_id;
        if status >= 400 {
            // Providers do not bill failed requests.
            o.input_forwarded = false;
        } else if endpoint.is_some() && !body_bytes.is_empty() {
            // A success whose usage could not be read (a body that is not the
            // provider's JSON): estimate the output from the text.
            let model = attempt.ctx.model_requested.as_deref().unwrap_or("");
            let text = String::from_utf8_lossy(
                &body_bytes[..body_bytes.len().min(providers::MAX_TRACKED_TEXT_BYTES)],
            );
            o.estimated_output_tokens = providers::estimate::estimate_output_tokens(model, &text);
        }
    }
    attempt.finish(o).await;
    let _ = open.send(());
}

/// What the relay task sends the client's body: data, or the error that ends it. Bytes
/// rather than `Frame`s (which can hold trailers and are three times larger), since the
/// channel allocates room for 32 of them per stream up front.
type Chunk = Result<Bytes, io::Error>;

async fn relay_stream(
    attempt: &Attempt<'_>,
    mut parts: http::response::Parts,
    mut body: Incoming,
    tracker: &mut Option<StreamTracker>,
    head_tx: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    up_id: Option<String>,
) {
    let config = &attempt.state.config;
    let status = parts.status.as_u16();
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    stamp(&mut parts.headers, &attempt.id, attempt.overhead());
    let resp = Response::from_parts(parts, ChannelBody(rx).boxed());
    let mut client_gone = !send_head(head_tx, resp);
    let mut gone_at = client_gone.then(Instant::now);
    let mut parser = providers::sse::SseParser::new(MAX_SSE_EVENT_BYTES);
    // With `respond_after: durable`, the terminal event (and the end of the body) wait
    // until the usage event is written, so a client that saw the end has its row.
    let hold = attempt.state.sink.durable_responses();
    let mut held = BytesMut::new();
    let mut ttft: Option<u64> = None;
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let finish = loop {
        if client_gone && config.on_client_abort == OnClientAbort::Cancel {
            break FinishState::ClientAborted;
        }
        let wait = match gone_at {
            Some(at) => match drain.checked_sub(at.elapsed()) {
                Some(left) => left.min(idle),
                None => break FinishState::ClientAborted,
            },
            None => idle,
        };
        let next = tokio::select! {
            biased;
            _ = tx.closed(), if !client_gone && config.on_client_abort == OnClientAbort::Cancel => {
                client_gone = true;
                continue;
            }
            r = tokio::time::timeout(wait, body.frame()) => r,
        };
        let frame = match next {
            Err(_) if client_gone => break FinishState::ClientAborted,
            Err(_) => {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "upstream stream stalled",
                    )))
                    .await;
                break FinishState::Timeout;
            }
            Ok(None) => {
                // An unterminated last event still counts for usage and is relayed as is.
                let rest = match tracker {
                    Some(t) => {
                        let mut out = BytesMut::new();
                        for ev in parser.finish_event() {
                            if t.on_event(&ev) == EventAction::Forward {
                                out.extend_from_slice(ev.raw());
                            }
                        }
                        out.freeze()
                    }
                    None => parser.finish(),
                };
                if hold {
                    held.extend_from_slice(&rest);
                } else if !rest.is_empty() && !client_gone {
                    let _ = tx.send(Ok(rest)).await;
                }
                break if client_gone {
                    FinishState::ClientAborted
                } else {
                    FinishState::Completed
                };
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream failed");
                if !client_gone {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "upstream stream failed: {e}"
                        ))))
                        .await;
                }
                break if client_gone {
                    FinishState::ClientAborted
                } else {
                    FinishState::UpstreamError
                };
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let out = match (&mut *tracker, parser.push(&data)) {
            (Some(t), Ok(events)) => {
                let mut out = BytesMut::new();
                for ev in &events {
                    if t.on_event(ev) == EventAction::Forward {
                        if hold && (!held.is_empty() || t.is_terminal(ev)) {
                            held.extend_from_slice(ev.raw());
                        } else {
                            out.extend_from_slice(ev.raw());
                        }
                    }
                }
                out.freeze()
            }
            (None, Ok(events)) => {
                let mut out = BytesMut::new();
                for ev in &events {
                    out.extend_from_slice(ev.raw());
                }
                out.freeze()
            }
            (_, Err(e)) => {
                // Too large or malformed to track: relay the bytes untouched from here on.
                tracing::warn!(error = %e, "SSE stream not trackable; relaying raw");
                *tracker = None;
                let mut out = BytesMut::from(&parser.finish()[..]);
                out.extend_from_slice(&data);
                out.freeze()
            }
        };
        if out.is_empty() || client_gone {
            continue;
        }
        if let (Some(res), Some(t)) = (attempt.reservation, &mut *tracker)
            && res.needs_stream_checks()
        {
            let output = t.running_output_tokens();
            let model = attempt.ctx.model_requested.as_deref().unwrap_or("");
            let so_far = TokenCounts {
                input_tokens: attempt.ctx.estimated_input_tokens,
                output_tokens: output,
                ..TokenCounts::default()
            };
            let cost = attempt
                .state
                .prices
                .cost_micros(model, &so_far, false)
                .unwrap_or(0);
            let header = attempt.ctx.header(&attempt.id);
            match attempt
                .state
                .policy
                .check_stream(res, output, cost, &header, Timestamp::now())
            {
                StreamVerdict::Continue => {}
                StreamVerdict::ShadowCut { decision } => {
                    attempt.state.sink.emit_always(decision.into()).await;
                }
                StreamVerdict::Cut { decision, message } => {
                    attempt.state.sink.emit_always(decision.into()).await;
                    let provider = attempt
                        .ctx
                        .provider
                        .unwrap_or(tally_events::Provider::Openai);
                    let err = providers::sse_error_event(provider, "tally.cut_by_policy", &message);
                    if hold {
                        held.extend_from_slice(&err);
                    } else {
                        let _ = tx.send(Ok(Bytes::from(err))).await;
                    }
                    break FinishState::CutByPolicy;
                }
            }
        }
        if ttft.is_none() {
            ttft = Some(ms(attempt.ctx.started.elapsed()));
        }
        if tx.send(Ok(out)).await.is_err() {
            client_gone = true;
            gone_at = Some(Instant::now());
        }
    };
    let mut o = attempt.outcome(Some(status), finish);
    o.ttft_ms = ttft;
    o.upstream_request_id = up_id;
    if let Some(t) = tracker {
        let r = t.report();
        o.model_served = r.model_served.clone();
        if r.upstream_request_id.is_some() {
            o.upstream_request_id = r.upstream_request_id.clone();
        }
        if !r.complete {
            o.estimated_output_tokens = t.estimated_output_tokens();
        }
        o.reported = Some((r.tokens, r.complete));
    }
    if status >= 400 && o.reported.as_ref().is_none_or(|r| !r.1) {
        o.input_forwarded = false;
    }
    attempt.finish(o).await;
    if !held.is_empty() && !client_gone {
        let _ = tx.send(Ok(held.freeze())).await;
    }
    drop(tx);
}

/// The client's side of a relayed stream: chunks as the relay task sends them.
struct ChannelBody(mpsc::Receiver<Chunk>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// A whole response body that is sent only once `open` fires (or is dropped), keeping
/// its exact length for `content-length`.
struct GatedBody {
    gate: Option<oneshot::Receiver<()>>,
    data: Option<Bytes>,
}

impl GatedBody {
    fn new(data: Bytes) -> (oneshot::Sender<()>, Self) {
        let (open, gate) = oneshot::channel();
        (
            open,
            Self {
                gate: Some(gate),
                data: Some(data),
            },
        )
    }
}

impl http_body::Body for GatedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(gate) = self.gate.as_mut() {
            // Opened or dropped: either way the body may go.
            std::task::ready!(std::future::Future::poll(std::pin::Pin::new(gate), cx)).ok();
            self.gate = None;
        }
        std::task::Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
