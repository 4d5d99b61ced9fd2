//! tally's query layer: SQL (DataFusion) over the Delta tables the ledger writes plus the
//! not-yet-committed tail of the event log; the documented views; the `why` and `usage`
//! reports; output formats; the HTTP SQL API. Read-only by construction, and tenant-scoped
//! by rewriting logical plans. Must not write to the tables or the log, and must not know
//! about the CLI (the binary wires it).

pub mod auth;
pub mod config;
pub mod docs;
pub mod engine;
pub mod error;
pub mod format;
pub mod http;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod reports;
pub mod safety;
pub mod scope;
mod tables;
pub mod tail;
pub mod views;

pub use auth::Authenticator;
pub use config::{QueryConfig, hash_token};
pub use docs::schema_markdown;
pub use engine::{QueryEngine, Truncation};
pub use error::QueryError;
pub use format::{Encoder, Format, write_batches, write_stream};
pub use http::router;
#[cfg(feature = "postgres")]
pub use postgres::{serve_postgres, serve_postgres_on};
pub use reports::Since;
pub use reports::html::html_report;
pub use reports::usage::{Dimension, TopBy, TopReport, UsageReport, top, usage_report};
pub use reports::why::{Verdict, WhyReport, why};
pub use scope::Principal;
pub use tables::ORG_TABLES;
pub use tail::{CommittedPositions, LogTail, TailSource};
