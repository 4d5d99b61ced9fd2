//! The `proxy:` section of tally.yaml: listener, named upstreams, per-provider routes
//! with retries and fallbacks, gateway keys, limits and timeouts. Owns the types and
//! their defaults and validation; must not open sockets or read keys from the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tally_events::Provider;

/// Settings of the proxy.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key (HTTP/2 and HTTP/1.1 by ALPN); plain
    /// HTTP without.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Named upstreams.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Which upstream serves each provider's API, with retries and fallbacks.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Gateway API keys (stored as hashes).
    pub keys: Vec<KeyConfig>,
    /// Accept `dev-<tenant>-<anything>` keys without configuration (`tally up --dev`).
    pub dev_keys: bool,
    /// What to do with paths tally does not know: `deny` (404) or `passthrough`.
    pub unknown_paths: UnknownPaths,
    /// Largest request body accepted, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, bytes; larger heads
    /// are refused (HTTP/1.1: 431; HTTP/2: the stream is reset). At least 8192.
    pub max_header_bytes: usize,
    /// Largest non-streaming response body parsed for usage, bytes.
    pub max_response_bytes: usize,
    /// When the client disconnects mid-stream: `drain` reads the upstream to the end to
    /// get the provider's usage; `cancel` closes it at once to stop generation.
    pub on_client_abort: OnClientAbort,
    /// Longest time `drain` keeps reading after the client left, ms.
    pub drain_timeout_ms: u64,
    /// Longest time to receive a client's request body, ms.
    pub request_body_timeout_ms: u64,
    /// Connecting to an upstream, ms.
    pub connect_timeout_ms: u64,
    /// Waiting for the upstream's response head, ms.
    pub response_timeout_ms: u64,
    /// Longest gap between two chunks of an upstream body, ms.
    pub idle_timeout_ms: u64,
    /// The queue between request handling and the event log.
    pub event_queue: EventQueueConfig,
    /// A price table file overriding the built-in one.
    pub prices: Option<PathBuf>,
    /// The policy file (access rules, rate limits, usage caps); see docs/policies.md.
    pub policy_file: Option<PathBuf>,
    /// How often the policy file is checked for changes and reloaded, seconds (also on
    /// SIGHUP); 0 = only on SIGHUP. A file with problems is refused and the policy in
    /// force stays.
    pub policy_reload_secs: u64,
    /// Output tokens reserved for a request that does not set a maximum.
    pub default_max_output_tokens: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let upstreams = [
            ("openai", Provider::Openai, "https://api.openai.com"),
            (
                "anthropic",
                Provider::Anthropic,
                "https://api.anthropic.com",
            ),
            (
                "gemini",
                Provider::Gemini,
                "https://generativelanguage.googleapis.com",
            ),
        ]
        .into_iter()
        .map(|(name, provider, url)| {
            (
                name.to_owned(),
                UpstreamConfig {
                    base_url: url.to_owned(),
                    provider,
                    credentials: Credentials::Passthrough,
                    http2: false,
                },
            )
        })
        .collect();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            upstreams,
            routes: BTreeMap::new(),
            keys: Vec::new(),
            dev_keys: false,
            unknown_paths: UnknownPaths::Deny,
            max_body_bytes: 32 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            on_client_abort: OnClientAbort::Drain,
            drain_timeout_ms: 30_000,
            request_body_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 300_000,
            idle_timeout_ms: 120_000,
            event_queue: EventQueueConfig::default(),
            prices: None,
            policy_file: None,
            policy_reload_secs: 2,
            default_max_output_tokens: 4096,
        }
    }
}

impl ProxyConfig {
    /// Point every default upstream at one base URL (the simulator in `--dev` mode).
    pub fn point_all_upstreams_at(&mut self, base_url: &str) {
        for u in self.upstreams.values_mut() {
            u.base_url = base_url.trim_end_matches('/').to_owned();
        }
    }

    /// The route for a provider: configured, or the upstream named after the provider.
    pub fn route_for(&self, provider: Provider) -> RouteConfig {
        self.routes
            .get(provider.as_str())
            .cloned()
            .unwrap_or_else(|| RouteConfig {
                upstream: provider.as_str().to_owned(),
                ..RouteConfig::default()
            })
    }

    /// Check references between sections; returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(Err(e)) = self.tls.as_ref().map(crate::tls::TlsConfig::acceptor) {
            problems.push(format!("proxy.tls: {e}"));
        }
        for (name, route) in &self.routes {
            if Provider::parse(name) == Provider::Other {
                problems.push(format!(
                    "proxy.routes.{name}: not a provider (openai, anthropic, gemini)"
                ));
            }
            for up in std::iter::once(&route.upstream).chain(&route.fallbacks) {
                if !self.upstreams.contains_key(up) {
                    problems.push(format!(
                        "proxy.routes.{name}: upstream `{up}` is not defined under proxy.upstreams"
                    ));
                }
            }
        }
        for (name, up) in &self.upstreams {
            if !(up.base_url.starts_with("http://") || up.base_url.starts_with("https://")) {
                problems.push(format!(
                    "proxy.upstreams.{name}.base_url: must start with http:// or https://"
                ));
            }
        }
        for (i, k) in self.keys.iter().enumerate() {
            if crate::keys::parse_hash(&k.hash).is_none() {
                problems.push(format!(
                    "proxy.keys[{i}] ({}): hash must be `sha256:<64 hex digits>`; make one with `tally keys hash`",
                    k.id
                ));
            }
        }
        problems
    }
}

/// One named upstream.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, e.g. `https://api.openai.com` (paths are appended as received).
    pub base_url: String,
    /// The API family it speaks: `openai`, `anthropic` or `gemini`.
    #[schemars(with = "String")]
    pub provider: Provider,
    /// Whose credentials reach the provider.
    #[serde(default)]
    pub credentials: Credentials,
    /// Speak HTTP/2 to this upstream even over cleartext (`http://`, prior knowledge):
    /// all requests share a few connections instead of one socket per open stream.
    /// `https://` upstreams negotiate HTTP/2 by ALPN whatever this says.
    #[serde(default)]
    pub http2: bool,
}

/// Provider credentials for an upstream.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    /// The client's provider key is forwarded as received (the gateway key then comes in
    /// `x-tally-key`).
    #[default]
    Passthrough,
    /// The gateway holds the provider key in this environment variable.
    ApiKeyEnv(String),
}

/// How one provider's traffic is routed.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Primary upstream.
    pub upstream: String,
    /// Tried in order after the primary fails with a retryable error.
    pub fallbacks: Vec<String>,
    /// Attempts in total, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Wait before a retry, doubled each time, ms.
    pub backoff_ms: u64,
    /// Retry on these upstream statuses when nothing reached the client yet.
    pub retry_on_status: Vec<u16>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            upstream: String::new(),
            fallbacks: Vec::new(),
            max_attempts: 1,
            backoff_ms: 100,
            retry_on_status: vec![429, 500, 502, 503, 504, 529],
        }
    }
}

/// A gateway API key.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id written into events (not secret).
    pub id: String,
    /// Tenant the key belongs to.
    pub tenant: String,
    /// `sha256:<hex>` of the secret (`tally keys hash <secret>`).
    pub hash: String,
    /// Labels copied into every event of this key.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Handling of paths tally does not know.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPaths {
    #[default]
    Deny,
    Passthrough,
}

/// Handling of a client that disconnects mid-stream.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnClientAbort {
    #[default]
    Drain,
    Cancel,
}

/// The bounded queue in front of the event log.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventQueueConfig {
    /// Events held in memory at most.
    pub capacity: usize,
    /// When full: `block` (wait for room: back-pressure, nothing lost) or `fail_closed`
    /// (answer 503 to new requests until there is room). `fail_closed` also refuses new
    /// requests for a second after the event log refused an append (disk full,
    /// read-only), then lets one through to test it again; `block` keeps serving and
    /// counts the events it could not write.
    pub when_full: WhenFull,
    /// When a response may complete: `durable` holds the last bytes of every response
    /// (the body of a whole response; the terminal event and end of a stream) until its
    /// usage event is durable in the log, so a client that got a complete response can
    /// rely on its row even if the process is killed right after. `queued` completes
    /// responses as soon as the event is queued: lowest latency, but a crash can lose
    /// the events of responses delivered in the last few milliseconds.
    pub respond_after: RespondAfter,
    /// With `respond_after: durable`, the longest a response waits for its event, ms;
    /// past it the response completes anyway and the wait is counted as a timeout.
    pub durable_wait_ms: u64,
}

impl Default for EventQueueConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            when_full: WhenFull::Block,
            respond_after: RespondAfter::Durable,
            durable_wait_ms: 5_000,
        }
    }
}

/// When a response completes relative to its usage event (see
/// [`EventQueueConfig::respond_after`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RespondAfter {
    /// After the event is durable in the log.
    #[default]
    Durable,
    /// After the event is queued.
    Queued,
}

/// Behaviour of a full event queue.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Block,
    FailClosed,
}
