//! The export's typed error: one variant per failure class, each with a stable code
//! (`export.period`, `export.pricing`, …) and a message that says what to do. Must not
//! format output or decide anything.

use std::fmt;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The `--period` argument is not a month or a day range.
    #[error("export.period: {0}")]
    Period(String),
    /// The pricing file cannot be read or is invalid.
    #[error("export.pricing: {0}")]
    Pricing(String),
    /// Reading the ledger's Delta tables failed.
    #[error("export.read: {0}")]
    Read(String),
    /// Reading or writing the `export_runs` state table failed.
    #[error("export.state: {0}")]
    State(String),
    /// The request does not fit the period's state (e.g. adjustments of an open period).
    #[error("export.closed: {0}")]
    Closed(String),
    /// The format cannot express what was asked (e.g. Stripe without customer ids).
    #[error("export.format: {0}")]
    Format(String),
}

impl ExportError {
    /// The stable code, e.g. `export.period`.
    pub fn code(&self) -> &'static str {
        match self {
            ExportError::Period(_) => "export.period",
            ExportError::Pricing(_) => "export.pricing",
            ExportError::Read(_) => "export.read",
            ExportError::State(_) => "export.state",
            ExportError::Closed(_) => "export.closed",
            ExportError::Format(_) => "export.format",
        }
    }

    pub(crate) fn read(what: &str, e: impl fmt::Display) -> Self {
        ExportError::Read(format!(
            "{what}: {e}. Check that the tables root is the ledger's (`<data-dir>/tables`) and readable"
        ))
    }

    pub(crate) fn state(what: &str, e: impl fmt::Display) -> Self {
        ExportError::State(format!(
            "{what}: {e}. The export state lives in `<tables-root>/export_runs`; check it is writable"
        ))
    }
}
