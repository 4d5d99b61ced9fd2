//! The HTTP query API (an axum [`Router`] the binary mounts on the admin listener):
//! `POST /v1/sql`, `GET /v1/why/{request_id}`, `GET /v1/usage`, `GET /v1/top`. Owns
//! request parsing, bearer authentication, content negotiation, streaming of results
//! with the row limit and errors as JSON with stable codes. Must not plan or check
//! queries itself (the engine does) nor bind sockets (the binary does).
//!
//! `POST /v1/sql` takes the SQL as the raw body or as JSON `{"sql": "..."}`. The
//! `Accept` header picks the format: `application/json` (default) is one object
//! `{"columns": [{"name", "type"}], "rows": [{...}], "row_count", "truncated",
//! "row_limit"}` streamed row by row (an error after the first rows ends it with an
//! `"error"` member); `application/x-ndjson` is JSON lines; `text/csv` CSV with a header;
//! `application/vnd.apache.arrow.stream` Arrow IPC. At most `queries.max_rows` rows are
//! returned; the `x-tally-row-limit` header states the limit and the HTTP trailers
//! `x-tally-truncated` and `x-tally-row-count` tell whether rows were cut off. Errors
//! before the first row are answered with the status of [`QueryError::http_status`] and
//! `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures_util::StreamExt;
use http_body::Frame;
use serde::{Deserialize, Serialize};

use crate::auth::Authenticator;
use crate::engine::{QueryEngine, Truncation};
use crate::error::QueryError;
use crate::format::{Encoder, Format, json_rows};
use crate::reports::Since;
use crate::reports::usage::{Dimension, TopBy, top, usage_report};
use crate::reports::why::why;
use crate::scope::Principal;

/// Header stating the row limit of a SQL response.
pub const ROW_LIMIT_HEADER: &str = "x-tally-row-limit";
/// Trailer: `true` when rows past the limit were left out.
pub const TRUNCATED_TRAILER: &str = "x-tally-truncated";
/// Trailer: rows sent.
pub const ROW_COUNT_TRAILER: &str = "x-tally-row-count";

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug)]
struct ApiState {
    engine: Arc<QueryEngine>,
    auth: Authenticator,
}

/// The routes of the query API, authenticated with the engine's configured tokens.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    let auth = Authenticator::new(engine.config());
    Router::new()
        .route("/v1/sql", post(sql_handler))
        .route("/v1/why/{request_id}", get(why_handler))
        .route("/v1/usage", get(usage_handler))
        .route("/v1/top", get(top_handler))
        .with_state(Arc::new(ApiState { engine, auth }))
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

fn error_json(e: &QueryError) -> Vec<u8> {
    serde_json::to_vec(&ErrorDetail {
        code: e.code(),
        message: e.to_string(),
    })
    .unwrap_or_default()
}

/// A JSON error response with the error's status.
pub fn error_response(e: &QueryError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: e.code(),
            message: e.to_string(),
        },
    })
    .unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<Principal, QueryError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str().map_err(|_| {
                QueryError::Unauthorized("the Authorization header is not text".to_owned())
            })
        })
        .transpose()?;
    state.auth.authorize(value)
}

/// Response format of `/v1/sql`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SqlFormat {
    /// The JSON object with columns, rows and the truncation note.
    JsonObject,
    Stream(Format),
}

impl SqlFormat {
    fn content_type(self) -> &'static str {
        match self {
            SqlFormat::JsonObject => "application/json",
            SqlFormat::Stream(f) => f.content_type(),
        }
    }
}

/// The first acceptable media type of the `Accept` header (in the order listed).
fn negotiate(headers: &HeaderMap) -> Result<SqlFormat, QueryError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(SqlFormat::JsonObject);
    };
    let accept = accept
        .to_str()
        .map_err(|_| QueryError::NotAcceptable("the Accept header is not text".to_owned()))?;
    for item in accept.split(',') {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" | "*/*" | "application/*" | "" => {
                return Ok(SqlFormat::JsonObject);
            }
            "application/x-ndjson" | "application/jsonl" => {
                return Ok(SqlFormat::Stream(Format::Json));
            }
            "text/csv" | "text/*" => return Ok(SqlFormat::Stream(Format::Csv)),
            ARROW_STREAM => return Ok(SqlFormat::Stream(Format::ArrowIpc)),
            _ => {}
        }
    }
    Err(QueryError::NotAcceptable(format!(
        "none of `{accept}` is a format of this API"
    )))
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
}

/// The SQL of a request body: JSON `{"sql": "..."}` or the raw text.
fn sql_of(headers: &HeaderMap, body: &[u8]) -> Result<String, QueryError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let text = std::str::from_utf8(body)
        .map_err(|_| QueryError::BadRequest("the request body is not UTF-8 text".to_owned()))?;
    let sql = if is_json || text.trim_start().starts_with('{') {
        serde_json::from_str::<SqlBody>(text)
            .map_err(|e| {
                QueryError::BadRequest(format!(
                    "the body is not JSON of the form {{\"sql\": \"...\"}}: {e}"
                ))
            })?
            .sql
    } else {
        text.to_owned()
    };
    if sql.trim().is_empty() {
        return Err(QueryError::BadRequest(
            "no SQL: send the statement as the body or as {\"sql\": \"...\"}".to_owned(),
        ));
    }
    Ok(sql)
}

async fn sql_handler(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match sql_response(&state, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn sql_response(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, QueryError> {
    let principal = authorize(state, headers)?;
    let format = negotiate(headers)?;
    let sql = sql_of(headers, body)?;
    let max_rows = state.engine.config().max_rows;
    let (mut stream, truncation) = state
        .engine
        .execute_limited(&sql, &principal, max_rows)
        .await?;
    // Errors that come before the first row (most do: planning, memory, timeouts of
    // aggregations) still get a proper status.
    let first = match stream.next().await {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return Err(QueryError::from(e)),
        None => None,
    };
    let body = ResultBody {
        format,
        stream,
        first,
        truncation,
        max_rows,
    };
    let mut resp = Response::new(body.into_body()?);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(ROW_LIMIT_HEADER, HeaderValue::from(max_rows));
    h.insert(
        header::TRAILER,
        HeaderValue::from_static("x-tally-truncated, x-tally-row-count"),
    );
    Ok(resp)
}

/// What is left to stream of one SQL result.
struct ResultBody {
    format: SqlFormat,
    stream: SendableRecordBatchStream,
    first: Option<arrow::array::RecordBatch>,
    truncation: Truncation,
    max_rows: usize,
}

type FrameResult = Result<Frame<Bytes>, QueryError>;

enum Phase {
    Rows,
    Trailers,
    Done,
}

struct BodyState {
    body: ResultBody,
    encoder: Option<Encoder>,
    rows: u64,
    wrote_row: bool,
    phase: Phase,
}

impl ResultBody {
    fn into_body(self) -> Result<Body, QueryError> {
        let schema = self.stream.schema();
        let (encoder, prefix) = match self.format {
            SqlFormat::JsonObject => {
                #[derive(Serialize)]
                struct Column {
                    name: String,
                    r#type: String,
                }
                let columns: Vec<Column> = schema
                    .fields()
                    .iter()
                    .map(|f| Column {
                        name: f.name().clone(),
                        r#type: f.data_type().to_string(),
                    })
                    .collect();
                let mut prefix = b"{\"columns\":".to_vec();
                prefix.extend(serde_json::to_vec(&columns).unwrap_or_default());
                prefix.extend_from_slice(b",\"rows\":[");
                (None, prefix)
            }
            SqlFormat::Stream(f) => {
                let mut enc = Encoder::new(f, schema)?;
                let prefix = enc.take();
                (Some(enc), prefix)
            }
        };
        let state = BodyState {
            body: self,
            encoder,
            rows: 0,
            wrote_row: false,
            phase: Phase::Rows,
        };
        let prefix =
            futures_util::stream::once(async move { Ok(Frame::data(Bytes::from(prefix))) });
        let rest = futures_util::stream::unfold(state, |mut st| async move {
            let frame = st.next_frame().await?;
            Some((frame, st))
        });
        Ok(Body::new(http_body_util::StreamBody::new(
            prefix.chain(rest).boxed(),
        )))
    }
}

impl BodyState {
    /// The next frame, or `None` when the body is complete.
    async fn next_frame(&mut self) -> Option<FrameResult> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Trailers => {
                    self.phase = Phase::Done;
                    let mut trailers = HeaderMap::new();
                    trailers.insert(
                        TRUNCATED_TRAILER,
                        HeaderValue::from_static(if self.body.truncation.is_truncated() {
                            "true"
                        } else {
                            "false"
                        }),
                    );
                    trailers.insert(ROW_COUNT_TRAILER, HeaderValue::from(self.rows));
                    return Some(Ok(Frame::trailers(trailers)));
                }
                Phase::Rows => {}
            }
            let next = match self.body.first.take() {
                Some(b) => Some(Ok(b)),
                None => self.body.stream.next().await,
            };
            match next {
                Some(Ok(batch)) => {
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    self.rows += batch.num_rows() as u64;
                    match self.encode(&batch) {
                        Ok(bytes) if bytes.is_empty() => continue,
                        Ok(bytes) => return Some(Ok(Frame::data(Bytes::from(bytes)))),
                        Err(e) => return Some(self.fail(e)),
                    }
                }
                Some(Err(e)) => return Some(self.fail(QueryError::from(e))),
                None => {
                    self.phase = Phase::Trailers;
                    match self.end(None) {
                        Ok(bytes) => return Some(Ok(Frame::data(Bytes::from(bytes)))),
                        Err(e) => return Some(self.fail(e)),
                    }
                }
            }
        }
    }

    fn encode(&mut self, batch: &arrow::array::RecordBatch) -> Result<Vec<u8>, QueryError> {
        match &mut self.encoder {
            Some(enc) => {
                enc.write(batch)?;
                Ok(enc.take())
            }
            None => {
                let mut out = Vec::new();
                if self.wrote_row {
                    out.push(b',');
                }
                out.extend(json_rows(batch)?);
                self.wrote_row = true;
                Ok(out)
            }
        }
    }

    /// The closing bytes: the JSON object's tail (with the error if there was one) or
    /// the encoder's end.
    fn end(&mut self, error: Option<&QueryError>) -> Result<Vec<u8>, QueryError> {
        match self.encoder.take() {
            Some(enc) => enc.finish(),
            None => {
                let mut out = format!(
                    "],\"row_count\":{},\"truncated\":{},\"row_limit\":{}",
                    self.rows,
                    self.body.truncation.is_truncated(),
                    self.body.max_rows
                )
                .into_bytes();
                if let Some(e) = error {
                    out.extend_from_slice(b",\"error\":");
                    out.extend(error_json(e));
                }
                out.push(b'}');
                Ok(out)
            }
        }
    }

    /// A failure after the response head was sent: the JSON object closes with the
    /// error; the other formats abort the body (the client sees an incomplete response).
    fn fail(&mut self, e: QueryError) -> FrameResult {
        tracing::warn!(code = e.code(), error = %e, "queries: SQL response failed while streaming");
        if self.encoder.is_none() {
            self.phase = Phase::Trailers;
            if let Ok(bytes) = self.end(Some(&e)) {
                return Ok(Frame::data(Bytes::from(bytes)));
            }
        }
        self.phase = Phase::Done;
        Err(e)
    }
}

async fn why_handler(
    State(state): State<Arc<ApiState>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let principal = authorize(&state, &headers)?;
        let report = why(&state.engine, &request_id, &principal).await?;
        Ok::<_, QueryError>(report_response(&headers, &report, report.render_text()))
    };
    run.await.unwrap_or_else(|e| error_response(&e))
}

#[derive(Deserialize)]
struct UsageParams {
    by: Option<String>,
    since: Option<String>,
}

async fn usage_handler(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<UsageParams>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let principal = authorize(&state, &headers)?;
        let by = Dimension::parse_list(params.by.as_deref().unwrap_or("tenant,model"))?;
        let since = Since::parse(params.since.as_deref().unwrap_or("7d"))?;
        let report = usage_report(&state.engine, &by, since, &principal).await?;
        Ok::<_, QueryError>(report_response(&headers, &report, report.render_text()))
    };
    run.await.unwrap_or_else(|e| error_response(&e))
}

#[derive(Deserialize)]
struct TopParams {
    by: Option<String>,
    dimension: Option<String>,
    limit: Option<usize>,
    since: Option<String>,
}

async fn top_handler(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<TopParams>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let principal = authorize(&state, &headers)?;
        let by: TopBy = params.by.as_deref().unwrap_or("spend").parse()?;
        let dimension: Dimension = params.dimension.as_deref().unwrap_or("tenant").parse()?;
        let since = Since::parse(params.since.as_deref().unwrap_or("7d"))?;
        let report = top(
            &state.engine,
            by,
            dimension,
            params.limit.unwrap_or(10),
            since,
            &principal,
        )
        .await?;
        Ok::<_, QueryError>(report_response(&headers, &report, report.render_text()))
    };
    run.await.unwrap_or_else(|e| error_response(&e))
}

/// A report as JSON, or as its text when the client prefers `text/plain`.
fn report_response<T: Serialize>(headers: &HeaderMap, report: &T, text: String) -> Response {
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.trim().to_ascii_lowercase().starts_with("text/plain"));
    if wants_text {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    }
    match serde_json::to_vec(report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error_response(&QueryError::Internal(format!("encoding the report: {e}"))),
    }
}
