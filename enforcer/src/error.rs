//! Proxy errors, modelled as Pingora does: each error knows where it came from
//! (upstream, downstream client, or tally itself) and whether retrying the attempt is
//! safe. Owns the stable error codes and the HTTP status each maps to; must not format
//! provider-specific bodies (that is `providers::error_body`).

use std::fmt;

/// Where an error originated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorSource {
    /// The provider or the network towards it.
    Upstream,
    /// The client or its request.
    Downstream,
    /// tally itself (configuration, event log, bug).
    Internal,
}

/// A failure while proxying one request.
#[derive(Debug, thiserror::Error)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The kinds of proxy failure; each has a stable code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorKind {
    /// Missing or unknown gateway key.
    Unauthenticated,
    /// Request body is not what the endpoint expects.
    InvalidRequest,
    /// Request body larger than `proxy.max_body_bytes`.
    BodyTooLarge,
    /// Path not proxied (`proxy.unknown_paths: deny`).
    UnknownPath,
    /// Denied by a policy rule.
    Denied,
    /// Could not connect to or talk to the upstream.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream's response could not be read.
    UpstreamBody,
    /// The client went away.
    ClientGone,
    /// No upstream configured for this provider.
    NoUpstream,
    /// The event log refused the event (fail-closed).
    EventLog,
}

impl ErrorKind {
    /// Stable machine-readable code, sent to clients as the error `code`.
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "tally.unauthenticated",
            ErrorKind::InvalidRequest => "tally.invalid_request",
            ErrorKind::BodyTooLarge => "tally.body_too_large",
            ErrorKind::UnknownPath => "tally.unknown_path",
            ErrorKind::Denied => "tally.denied",
            ErrorKind::UpstreamConnect => "tally.upstream_connect",
            ErrorKind::UpstreamTimeout => "tally.upstream_timeout",
            ErrorKind::UpstreamBody => "tally.upstream_body",
            ErrorKind::ClientGone => "tally.client_gone",
            ErrorKind::NoUpstream => "tally.no_upstream",
            ErrorKind::EventLog => "tally.event_log",
        }
    }

    /// Where errors of this kind come from.
    pub const fn source(self) -> ErrorSource {
        match self {
            ErrorKind::Unauthenticated
            | ErrorKind::InvalidRequest
            | ErrorKind::BodyTooLarge
            | ErrorKind::UnknownPath
            | ErrorKind::Denied
            | ErrorKind::ClientGone => ErrorSource::Downstream,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamBody => {
                ErrorSource::Upstream
            }
            ErrorKind::NoUpstream | ErrorKind::EventLog => ErrorSource::Internal,
        }
    }

    /// Whether a new attempt (same or fallback upstream) is safe: nothing reached the
    /// client yet and the upstream may not have processed the request.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamTimeout
        )
    }

    /// HTTP status for the client.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::Unauthenticated => 401,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::UnknownPath => 404,
            ErrorKind::Denied => 429,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamBody => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::ClientGone => 499,
            ErrorKind::NoUpstream | ErrorKind::EventLog => 503,
        }
    }
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}
