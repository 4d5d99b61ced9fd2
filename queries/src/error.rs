//! The query layer's errors: one enum with a stable code per kind (`query.xxx`), a
//! message that tells the user what to do, and the HTTP status each maps to. Owns the
//! translation of DataFusion and Delta errors into these kinds; must not know how errors
//! are rendered (JSON, text) or transported.

use datafusion::error::DataFusionError;

/// Any failure of the query layer. [`QueryError::code`] is stable; messages may change.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse or plan (syntax, unknown table or column, type error).
    #[error(
        "query.sql: {0}. Check the statement: the tables are usage, decisions and corrections, the views requests, usage_corrected, usage_hourly, spend_daily and denials (columns in docs/schema.md)"
    )]
    Sql(String),
    /// The statement would change something or read outside tally's tables.
    #[error(
        "query.forbidden: {0}. Queries are read-only: only SELECT (and EXPLAIN, DESCRIBE, SHOW) over tally's tables and views is allowed"
    )]
    Forbidden(String),
    /// The query ran past its time budget.
    #[error(
        "query.timeout: the query ran longer than {timeout_ms} ms (queries.timeout_ms). Filter on day or occurred_at, aggregate, add a LIMIT, or raise queries.timeout_ms"
    )]
    Timeout { timeout_ms: u64 },
    /// The query needed more memory than its pool allows.
    #[error(
        "query.memory: the query needed more than {limit_bytes} bytes of memory (queries.memory_limit_bytes): {detail}. Filter on day, select fewer columns, aggregate, or raise queries.memory_limit_bytes"
    )]
    Memory { limit_bytes: usize, detail: String },
    /// No or an unknown credential.
    #[error(
        "query.unauthorized: {0}. Send `Authorization: Bearer <token>` with a token whose sha256 hash is listed in queries.admin_tokens or queries.tenant_tokens"
    )]
    Unauthorized(String),
    /// The thing asked for does not exist (or is not visible to this principal).
    #[error("query.not_found: {0}")]
    NotFound(String),
    /// A malformed request or report argument.
    #[error("query.bad_request: {0}")]
    BadRequest(String),
    /// The requested output format is not one tally writes.
    #[error(
        "query.not_acceptable: {0}. Ask for application/json, application/x-ndjson, text/csv or application/vnd.apache.arrow.stream"
    )]
    NotAcceptable(String),
    /// A Delta table could not be read.
    #[error(
        "query.table: cannot read table `{table}` at {location}: {detail}. Check that the tables root exists and is readable and that only the ledger writes it"
    )]
    Table {
        table: String,
        location: String,
        detail: String,
    },
    /// The query failed while running.
    #[error("query.execution: {0}")]
    Execution(String),
    /// Writing the result (to a file, pipe or socket) failed.
    #[error(
        "query.output: writing the result failed: {0}. Check the destination (disk full, closed pipe)"
    )]
    Output(String),
    /// The `queries:` configuration is invalid.
    #[error("query.config: {0}")]
    Config(String),
    /// A bug: an invariant of the query layer does not hold.
    #[error("query.internal: {0}. This is a bug in tally; please report it with the query")]
    Internal(String),
}

impl QueryError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "query.sql",
            QueryError::Forbidden(_) => "query.forbidden",
            QueryError::Timeout { .. } => "query.timeout",
            QueryError::Memory { .. } => "query.memory",
            QueryError::Unauthorized(_) => "query.unauthorized",
            QueryError::NotFound(_) => "query.not_found",
            QueryError::BadRequest(_) => "query.bad_request",
            QueryError::NotAcceptable(_) => "query.not_acceptable",
            QueryError::Table { .. } => "query.table",
            QueryError::Execution(_) => "query.execution",
            QueryError::Output(_) => "query.output",
            QueryError::Config(_) => "query.config",
            QueryError::Internal(_) => "query.internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::Sql(_) | QueryError::BadRequest(_) => 400,
            QueryError::Unauthorized(_) => 401,
            QueryError::Forbidden(_) => 403,
            QueryError::NotFound(_) => 404,
            QueryError::NotAcceptable(_) => 406,
            QueryError::Memory { .. } => 413,
            QueryError::Timeout { .. } => 504,
            QueryError::Table { .. } => 503,
            QueryError::Execution(_)
            | QueryError::Output(_)
            | QueryError::Config(_)
            | QueryError::Internal(_) => 500,
        }
    }

    /// Classify a DataFusion error. `memory_limit_bytes` is quoted in memory errors.
    pub fn from_datafusion(err: DataFusionError, memory_limit_bytes: usize) -> QueryError {
        // Our own errors travel through DataFusion streams wrapped as `External`.
        if let Some(q) = find_query_error(&err) {
            return q.clone_kind();
        }
        match err.find_root() {
            DataFusionError::SQL(e, _) => QueryError::Sql(e.to_string()),
            e @ (DataFusionError::Plan(_)
            | DataFusionError::SchemaError(_, _)
            | DataFusionError::NotImplemented(_)) => QueryError::Sql(strip_prefix(&e.to_string())),
            DataFusionError::ResourcesExhausted(m) => QueryError::Memory {
                limit_bytes: memory_limit_bytes,
                detail: m.clone(),
            },
            DataFusionError::Internal(m) => QueryError::Internal(m.clone()),
            other => QueryError::Execution(strip_prefix(&other.to_string())),
        }
    }

    /// A copy of the error's kind and message (errors are not `Clone` because of their
    /// sources; ours carry only strings).
    fn clone_kind(&self) -> QueryError {
        match self {
            QueryError::Sql(m) => QueryError::Sql(m.clone()),
            QueryError::Forbidden(m) => QueryError::Forbidden(m.clone()),
            QueryError::Timeout { timeout_ms } => QueryError::Timeout {
                timeout_ms: *timeout_ms,
            },
            QueryError::Memory {
                limit_bytes,
                detail,
            } => QueryError::Memory {
                limit_bytes: *limit_bytes,
                detail: detail.clone(),
            },
            QueryError::Unauthorized(m) => QueryError::Unauthorized(m.clone()),
            QueryError::NotFound(m) => QueryError::NotFound(m.clone()),
            QueryError::BadRequest(m) => QueryError::BadRequest(m.clone()),
            QueryError::NotAcceptable(m) => QueryError::NotAcceptable(m.clone()),
            QueryError::Table {
                table,
                location,
                detail,
            } => QueryError::Table {
                table: table.clone(),
                location: location.clone(),
                detail: detail.clone(),
            },
            QueryError::Execution(m) => QueryError::Execution(m.clone()),
            QueryError::Output(m) => QueryError::Output(m.clone()),
            QueryError::Config(m) => QueryError::Config(m.clone()),
            QueryError::Internal(m) => QueryError::Internal(m.clone()),
        }
    }

    /// Wrap as a DataFusion error (to travel through a record batch stream).
    pub(crate) fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

/// Find a `QueryError` wrapped anywhere in a DataFusion error chain.
fn find_query_error(err: &DataFusionError) -> Option<&QueryError> {
    match err {
        DataFusionError::External(e) => e.downcast_ref::<QueryError>(),
        DataFusionError::Context(_, inner) => find_query_error(inner),
        DataFusionError::Shared(inner) => find_query_error(inner),
        DataFusionError::Collection(errs) => errs.iter().find_map(find_query_error),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            arrow::error::ArrowError::ExternalError(inner) => {
                if let Some(q) = inner.downcast_ref::<QueryError>() {
                    Some(q)
                } else {
                    inner
                        .downcast_ref::<DataFusionError>()
                        .and_then(find_query_error)
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// DataFusion prefixes messages with "Error during planning: " and similar; keep the
/// substance only.
fn strip_prefix(msg: &str) -> String {
    const PREFIXES: [&str; 6] = [
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Execution error: ",
        "Arrow error: ",
        "SQL error: ",
    ];
    let mut m = msg.trim();
    for p in PREFIXES {
        if let Some(rest) = m.strip_prefix(p) {
            m = rest;
        }
    }
    m.to_owned()
}

/// For errors of streams returned by [`crate::QueryEngine`]: those are classified
/// already, so the memory limit is not needed to describe them.
impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::from_datafusion(e, 0)
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        QueryError::Output(e.to_string())
    }
}

impl From<std::io::Error> for QueryError {
    fn from(e: std::io::Error) -> Self {
        QueryError::Output(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_keep_their_kind() {
        let e = QueryError::Timeout { timeout_ms: 5 }.into_datafusion();
        let e = DataFusionError::Context("while running".into(), Box::new(e));
        let q = QueryError::from_datafusion(e, 1);
        assert_eq!(q.code(), "query.timeout");
        assert_eq!(q.http_status(), 504);
    }

    #[test]
    fn resources_exhausted_is_memory() {
        let q = QueryError::from_datafusion(DataFusionError::ResourcesExhausted("x".into()), 42);
        assert_eq!(q.code(), "query.memory");
        assert!(q.to_string().contains("42 bytes"));
    }
}
