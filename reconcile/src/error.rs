//! The reconciler's errors, each with a stable code (`reconcile.*`) and a message that
//! tells the user what to do next. Must not hide the underlying cause (it is kept as the
//! source, or as its text when the cause is not an error value).

/// Boxed underlying error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the reconciler. See [`ReconcileError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// A report (file or API page) could not be understood. `place` names the file or
    /// URL and the row, line or JSON path (`orgs.json: $.data[2].results[0].amount`).
    #[error("reconcile.parse: {place}: {detail}")]
    Parse { place: String, detail: String },

    /// A file could not be read.
    #[error("reconcile.io: reading {path}: {source}. Check the path and its permissions")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The provider (or whatever answers at the configured base URL) failed or refused.
    #[error("reconcile.http: {url}: {detail}")]
    Http {
        url: String,
        /// The HTTP status, when a response arrived.
        status: Option<u16>,
        detail: String,
    },

    /// No admin key, or the provider rejected it.
    #[error("reconcile.auth: {provider}: {detail}")]
    Auth { provider: String, detail: String },

    /// Reading or writing a reconciler table failed.
    #[error(
        "reconcile.storage: {context} (table `{table}`): {source}. Check that the tables root is reachable and writable"
    )]
    Storage {
        table: String,
        context: String,
        #[source]
        source: Cause,
    },

    /// A setting, argument or mapping file is not usable.
    #[error("reconcile.config: {0}")]
    Config(String),
}

impl ReconcileError {
    /// The stable code, also the message's prefix.
    pub fn code(&self) -> &'static str {
        match self {
            ReconcileError::Parse { .. } => "reconcile.parse",
            ReconcileError::Io { .. } => "reconcile.io",
            ReconcileError::Http { .. } => "reconcile.http",
            ReconcileError::Auth { .. } => "reconcile.auth",
            ReconcileError::Storage { .. } => "reconcile.storage",
            ReconcileError::Config(_) => "reconcile.config",
        }
    }

    /// A parse error at `place`.
    pub fn parse(place: impl Into<String>, detail: impl Into<String>) -> Self {
        ReconcileError::Parse {
            place: place.into(),
            detail: detail.into(),
        }
    }

    /// A storage error on `table` while doing `context`.
    pub fn storage(
        table: impl Into<String>,
        context: impl Into<String>,
        source: impl Into<Cause>,
    ) -> Self {
        ReconcileError::Storage {
            table: table.into(),
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether a later attempt may succeed (connection failures, 429 and 5xx answers).
    pub fn is_transient(&self) -> bool {
        match self {
            ReconcileError::Http { status, .. } => {
                status.is_none_or(|s| s == 429 || s == 408 || s >= 500)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_prefix_messages() {
        let errors = [
            ReconcileError::parse("f.json: $.data[0]", "expected an object"),
            ReconcileError::Http {
                url: "http://x".into(),
                status: Some(500),
                detail: "boom".into(),
            },
            ReconcileError::Auth {
                provider: "openai".into(),
                detail: "set OPENAI_ADMIN_KEY".into(),
            },
            ReconcileError::storage("provider_usage", "merge", "disk full"),
            ReconcileError::Config("bad".into()),
        ];
        for e in errors {
            assert!(e.to_string().starts_with(e.code()), "{e}");
        }
    }

    #[test]
    fn transient_is_429_5xx_and_no_response() {
        let http = |status| ReconcileError::Http {
            url: String::new(),
            status,
            detail: String::new(),
        };
        assert!(http(Some(429)).is_transient());
        assert!(http(Some(503)).is_transient());
        assert!(http(None).is_transient());
        assert!(!http(Some(400)).is_transient());
        assert!(!ReconcileError::Config(String::new()).is_transient());
    }
}
