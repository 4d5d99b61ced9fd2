//! Fault injection: per-request `x-sim-*` overrides and the deterministic error and
//! rate-limit draws from `SimConfig`; it must not build responses itself.

use http::{HeaderMap, StatusCode};

use crate::config::SimConfig;
use crate::generate::{Rng, mix};
use crate::record::Provider;

/// How to corrupt a response (`x-sim-invalid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// `json`: a non-streaming body is cut in half; in a stream, the first content
    /// event's JSON is cut in half (the rest of the stream is intact).
    Json,
    /// `sse`: in a stream, the first content event loses its terminating blank line, so
    /// it merges with the next event into one unparsable `data` payload. On a
    /// non-streaming request it behaves like `json`.
    Sse,
}

/// Per-request overrides read from `x-sim-*` headers. Unparseable values are ignored
/// (with a warning in the log).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    pub(crate) status: Option<StatusCode>,
    pub(crate) hang_ms: Option<u64>,
    pub(crate) latency_ms: Option<u64>,
    pub(crate) ttft_ms: Option<u64>,
    pub(crate) chunk_delay_ms: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) fail_after_chunks: Option<u64>,
    pub(crate) invalid: Option<Invalid>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn number(h: &HeaderMap, name: &str) -> Option<u64> {
    let raw = header(h, name)?;
    match raw.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(
                header = name,
                value = raw,
                "ignoring unparseable x-sim header"
            );
            None
        }
    }
}

impl Faults {
    pub(crate) fn from_headers(h: &HeaderMap) -> Self {
        let status = number(h, "x-sim-status")
            .and_then(|n| u16::try_from(n).ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .filter(|s| s.is_client_error() || s.is_server_error());
        let invalid = match header(h, "x-sim-invalid") {
            Some(v) if v.eq_ignore_ascii_case("json") => Some(Invalid::Json),
            Some(v) if v.eq_ignore_ascii_case("sse") => Some(Invalid::Sse),
            Some(v) => {
                tracing::warn!(value = v, "ignoring unknown x-sim-invalid");
                None
            }
            None => None,
        };
        Self {
            status,
            hang_ms: number(h, "x-sim-hang-ms"),
            latency_ms: number(h, "x-sim-latency-ms"),
            ttft_ms: number(h, "x-sim-ttft-ms"),
            chunk_delay_ms: number(h, "x-sim-chunk-delay-ms"),
            output_tokens: number(h, "x-sim-output-tokens"),
            fail_after_chunks: number(h, "x-sim-fail-after-chunks"),
            invalid,
        }
    }

    /// The error status this request must fail with, if any: `x-sim-status` first,
    /// then the configured rate-limit and error rates, drawn deterministically from
    /// `request_hash` (which covers the body, the seed and the SDK retry count).
    pub(crate) fn failure(
        &self,
        config: &SimConfig,
        provider: Provider,
        request_hash: u64,
    ) -> Option<StatusCode> {
        if let Some(s) = self.status {
            return Some(s);
        }
        if config.rate_limit_rate <= 0.0 && config.error_rate <= 0.0 {
            return None;
        }
        let mut rng = Rng::new(mix(request_hash ^ 0x6661_756c_7473));
        if rng.unit() < config.rate_limit_rate {
            return Some(StatusCode::TOO_MANY_REQUESTS);
        }
        if rng.unit() < config.error_rate {
            let alt = match provider {
                Provider::Anthropic => 529,
                Provider::Openai | Provider::Gemini => 503,
            };
            let code = if rng.next_u64().is_multiple_of(2) {
                500
            } else {
                alt
            };
            return StatusCode::from_u16(code).ok();
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-sim-status", HeaderValue::from_static("529"));
        h.insert("x-sim-fail-after-chunks", HeaderValue::from_static("3"));
        h.insert("x-sim-invalid", HeaderValue::from_static("SSE"));
        h.insert("x-sim-ttft-ms", HeaderValue::from_static("oops"));
        let f = Faults::from_headers(&h);
        assert_eq!(f.status.map(|s| s.as_u16()), Some(529));
        assert_eq!(f.fail_after_chunks, Some(3));
        assert_eq!(f.invalid, Some(Invalid::Sse));
        assert_eq!(f.ttft_ms, None);
        let mut ok = HeaderMap::new();
        ok.insert("x-sim-status", HeaderValue::from_static("200"));
        assert!(Faults::from_headers(&ok).status.is_none());
    }

    #[test]
    fn rates_are_deterministic_and_roughly_right() {
        let cfg = SimConfig {
            error_rate: 0.2,
            rate_limit_rate: 0.1,
            ..SimConfig::default()
        };
        let f = Faults::default();
        let (mut limited, mut errors) = (0, 0);
        for h in 0..10_000u64 {
            let a = f.failure(&cfg, Provider::Anthropic, h);
            assert_eq!(a, f.failure(&cfg, Provider::Anthropic, h));
            match a.map(|s| s.as_u16()) {
                Some(429) => limited += 1,
                Some(500 | 529) => errors += 1,
                Some(other) => panic!("unexpected {other}"),
                None => {}
            }
        }
        assert!((800..1200).contains(&limited), "{limited}");
        assert!((1500..2100).contains(&errors), "{errors}");
        assert!(
            f.failure(&SimConfig::default(), Provider::Openai, 1)
                .is_none()
        );
    }
}
