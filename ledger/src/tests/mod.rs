//! Tests of the ledger against real Delta tables in temporary directories. Owns the
//! shared fixtures (`support`); must not depend on anything outside the temp dirs except
//! the optional Python tools (skipped with a message when missing).

mod crash;
mod external;
mod features;
mod owners;
mod roundtrip;
mod s3;
pub(crate) mod support;
