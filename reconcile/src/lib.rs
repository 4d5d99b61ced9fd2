//! tally's reconciler: imports what providers report and bill (usage and cost reports,
//! from files or pulled from their admin APIs) into Delta tables, matches it against
//! what the gateway counted, attributes every difference to a cause, and produces billing
//! exports per tenant. Reads the ledger's tables through `tally-queries`; never writes
//! to the event tables.

pub mod config;
pub mod error;
pub mod export;
pub mod figures;
pub mod gateway;
pub mod import;
pub mod matcher;
pub mod model;
pub mod report;
pub mod runs;
pub mod tables;

pub use error::ReconcileError;
pub use tables::{ReconStore, UpsertSummary};
