//! The HTTP client towards upstreams (pooled, HTTP/1.1 and HTTP/2, TLS via rustls) and
//! the rewriting of a client request into an upstream request: hop-by-hop and gateway
//! headers removed, provider credentials applied. Must not parse bodies or account usage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tally_events::Provider;

use crate::config::{Credentials, ProxyConfig, UpstreamConfig};
use crate::keys::KeyLocation;

/// The pooled client type.
pub type HttpClient = Client<Connector, Full<Bytes>>;

/// Requests one HTTP/2 connection carries before the next lane (its own connection) is
/// used. A client never opens a second HTTP/2 connection to a host by itself (RFC 9113
/// §9.1), so without lanes every request beyond the server's stream limit
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`, 100 to 256 at the providers) would wait for a
/// stream to end. 100 is the limit the RFC recommends servers allow at least.
pub const STREAMS_PER_LANE: usize = 100;
/// Lanes per client: 100 × 256 requests in flight before lanes are shared beyond the
/// target (then the least busy lane takes the request).
const LANES: usize = 256;

/// One pooled client and the requests in flight on it.
#[derive(Debug)]
struct Lane {
    client: HttpClient,
    in_flight: AtomicUsize,
}

/// A client made of lanes, each with its own connection pool: a request takes the first
/// lane with fewer than [`STREAMS_PER_LANE`] requests in flight, so HTTP/2 traffic
/// spreads over more connections as it grows. HTTP/1.1 traffic (a connection per request
/// in flight anyway) stays on the first lane up to 100 in flight; beyond that, idle
/// connections of one lane are not reused by another.
#[derive(Debug)]
struct Laned {
    lanes: Vec<Lane>,
}

impl Laned {
    fn new(https: &Connector, http2_only: bool) -> Self {
        Self {
            lanes: (0..LANES)
                .map(|_| Lane {
                    client: client(https, http2_only),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
        }
    }

    fn take(self: &Arc<Self>) -> LaneGuard {
        let index = self
            .lanes
            .iter()
            .position(|l| l.in_flight.load(Ordering::Relaxed) < STREAMS_PER_LANE)
            .unwrap_or_else(|| {
                (0..self.lanes.len())
                    .min_by_key(|&i| self.lanes[i].in_flight.load(Ordering::Relaxed))
                    .unwrap_or(0)
            });
        self.lanes[index].in_flight.fetch_add(1, Ordering::Relaxed);
        LaneGuard {
            laned: self.clone(),
            index,
        }
    }
}

/// A request's place on a lane: hold it until the response body has been read, so the
/// lane counts the stream as in flight.
#[derive(Debug)]
pub struct LaneGuard {
    laned: Arc<Laned>,
    index: usize,
}

impl LaneGuard {
    /// The client to send the request with.
    pub fn client(&self) -> &HttpClient {
        &self.laned.lanes[self.index].client
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.laned.lanes[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pooled clients: one that speaks HTTP/1.1 to cleartext upstreams (and negotiates
/// HTTP/2 by ALPN over TLS), one that speaks HTTP/2 only (for `http2: true` upstreams).
#[derive(Clone, Debug)]
pub struct Clients {
    default: Arc<Laned>,
    http2: Arc<Laned>,
}

impl Clients {
    /// Build both clients (no connection is opened before a request needs one).
    pub fn new(config: &ProxyConfig) -> Self {
        let https = connector(config);
        Self {
            default: Arc::new(Laned::new(&https, false)),
            http2: Arc::new(Laned::new(&https, true)),
        }
    }

    /// A lane of the client for `upstream`.
    pub fn lane(&self, upstream: &Upstream) -> LaneGuard {
        if upstream.http2 {
            self.http2.take()
        } else {
            self.default.take()
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The connector every lane shares (one TLS configuration and root store).
fn connector(config: &ProxyConfig) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
    // An explicit crypto provider: dependencies may enable more than one rustls backend,
    // and the process-wide default is then ambiguous.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_webpki_roots(provider) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "TLS setup failed; upstreams must use http://");
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
        }
    };
    builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// A pooled client over `connector` (`http2_only`: HTTP/2 with prior knowledge).
fn client(https: &Connector, http2_only: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_only(http2_only)
        .http2_adaptive_window(http2_only)
        .build(https.clone())
}

/// An upstream with its resolved credentials (secrets read once at start-up).
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub base: String,
    pub provider: Provider,
    /// HTTP/2 with prior knowledge (see `UpstreamConfig::http2`).
    pub http2: bool,
    secret: Option<HeaderValue>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("provider", &self.provider)
            .field("http2", &self.http2)
            .field("has_secret", &self.secret.is_some())
            .finish()
    }
}

/// Resolve every configured upstream; errors name the missing environment variables.
pub fn resolve_upstreams(
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> Result<BTreeMap<String, Upstream>, String> {
    let mut out = BTreeMap::new();
    for (name, u) in upstreams {
        let secret = match &u.credentials {
            Credentials::Passthrough => None,
            Credentials::ApiKeyEnv(var) => {
                let value = std::env::var(var).map_err(|_| {
                    format!(
                        "proxy.upstreams.{name}.credentials: environment variable {var} is not set"
                    )
                })?;
                let value = match u.provider {
                    Provider::Anthropic | Provider::Gemini => value,
                    _ => format!("Bearer {value}"),
                };
                let mut hv = HeaderValue::from_str(&value)
                    .map_err(|_| format!("{var} holds characters not allowed in a header"))?;
                hv.set_sensitive(true);
                Some(hv)
            }
        };
        out.insert(
            name.clone(),
            Upstream {
                name: name.clone(),
                base: u.base_url.trim_end_matches('/').to_owned(),
                provider: u.provider,
                http2: u.http2,
                secret,
            },
        );
    }
    Ok(out)
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers (including those named in `Connection`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Build the request for `upstream` from the client's request parts.
pub fn build_request(
    upstream: &Upstream,
    method: &Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    key_location: Option<KeyLocation>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let mut path_and_query = path_and_query.to_owned();
    let mut headers = client_headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // tally parses response bodies for usage: ask for them uncompressed.
    headers.remove(header::ACCEPT_ENCODING);
    headers.remove("x-tally-key");
    if let Some(secret) = &upstream.secret {
        // The gateway holds the provider key: drop whatever credentials the client sent.
        headers.remove(header::AUTHORIZATION);
        headers.remove("x-api-key");
        headers.remove("x-goog-api-key");
        if key_location == Some(KeyLocation::QueryKey) {
            path_and_query = strip_query_key(&path_and_query);
        }
        let name = match upstream.provider {
            Provider::Anthropic => HeaderName::from_static("x-api-key"),
            Provider::Gemini => HeaderName::from_static("x-goog-api-key"),
            _ => header::AUTHORIZATION,
        };
        headers.insert(name, secret.clone());
    }
    let uri: Uri = format!("{}{}", upstream.base, path_and_query)
        .parse()
        .map_err(|e| format!("cannot build upstream URL: {e}"))?;
    let mut req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = headers;
    Ok(req)
}

fn strip_query_key(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => path_and_query.to_owned(),
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("key="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn gateway_held_credentials_replace_the_clients() {
        let up = Upstream {
            name: "g".into(),
            base: "http://127.0.0.1:9".into(),
            provider: Provider::Gemini,
            http2: false,
            secret: Some(HeaderValue::from_static("provider-secret")),
        };
        let mut h = HeaderMap::new();
        h.insert("x-goog-api-key", HeaderValue::from_static("gateway-key"));
        let req = build_request(
            &up,
            &Method::POST,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=gw",
            &h,
            Some(KeyLocation::QueryKey),
            Bytes::new(),
        );
        let Ok(req) = req else { panic!("{req:?}") };
        assert_eq!(req.uri().query(), Some("alt=sse"));
        assert_eq!(
            req.headers().get("x-goog-api-key").map(|v| v.as_bytes()),
            Some(&b"provider-secret"[..])
        );
    }
}
