//! tally's enforcer: the inline proxy in front of AI providers. Applications point their
//! SDK's base URL at it; it authenticates gateway keys, forwards to the configured
//! upstream, accounts every attempt's tokens and cost exactly, and writes `decision` and
//! `usage` events to the event log.

mod accounting;
pub mod config;
pub mod error;
mod forward;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod sink;
pub mod tls;
pub mod upstream;

pub use config::ProxyConfig;
pub use metrics::EnforcerMetrics;
pub use proxy::{ProxyState, new_request_id};
pub use sink::{EventSink, SinkHealth, SinkTask};
