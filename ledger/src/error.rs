//! The ledger's errors, each with a stable code (`ledger.*`) and a message that tells the
//! user what to do. Must not hide the underlying cause (it is kept as the source).

use tally_events::log::{LogError, Position};

/// Boxed underlying error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the ledger. See [`LedgerError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("ledger.config: `ledger.{key}`: {detail}. Fix the value in tally.yaml")]
    Config { key: String, detail: String },

    #[error(
        "ledger.tables_uri: cannot use `{uri}` as the tables root: {detail}. Use a local directory or a URI such as file:///var/lib/tally/tables or s3://bucket/prefix"
    )]
    TablesUri { uri: String, detail: String },

    #[error(
        "ledger.storage: {context} (table `{table}`): {source}. Check that the tables root is reachable and writable (path permissions, or endpoint, bucket and credentials of the object store)"
    )]
    Storage {
        table: &'static str,
        context: String,
        #[source]
        source: Cause,
    },

    #[error(
        "ledger.commit: committing {rows} events to table `{table}` failed: {source}. The ledger re-reads the position the table recorded and retries from the event log, so nothing is lost or written twice; if this persists, check the storage and `tally ledger status`"
    )]
    Commit {
        table: &'static str,
        rows: usize,
        #[source]
        source: Cause,
    },

    #[error(
        "ledger.source_moved: another ledger committed source `{app_id}` to table `{table}` since this ledger read its position (two ledgers own one Kafka partition for a moment during a rebalance, or two ledgers share a source name). This ledger's batch was not committed; it resumes from the position the other recorded, so nothing is written twice. If this keeps happening, run the ledgers of one topic in one consumer group (kafka.group) and give every other source its own ledger.source_name"
    )]
    SourceMoved { table: &'static str, app_id: String },

    #[error(
        "ledger.log: reading the event log failed: {0}. The ledger retries; check the log directory (or Kafka) is readable"
    )]
    Log(#[source] LogError),

    #[error(
        "ledger.position: log position {position} cannot be stored as a Delta transaction version (the segment must be below 2^23 and the offset below 2^40); start a new log or report this"
    )]
    PositionRange { position: Position },

    #[error(
        "ledger.txn: table `{table}` records transaction version {version} for `{app_id}`, which is not a position this ledger wrote; was the table written by another tool with the same app id? Use another `ledger.source_name` or a fresh tables root"
    )]
    BadTxnVersion {
        table: &'static str,
        app_id: String,
        version: i64,
    },

    #[error(
        "ledger.convert: building the Arrow batch for table `{table}` failed: {source}. This is a bug in tally; please report it with the log position shown by `tally ledger status`"
    )]
    Convert {
        table: &'static str,
        #[source]
        source: Cause,
    },

    #[error(
        "ledger.read: reading table `{table}` back failed while {context}: {source}. Check the table with `tally sql` and the storage; if files were deleted by hand, restore them"
    )]
    Read {
        table: &'static str,
        context: String,
        #[source]
        source: Cause,
    },

    #[error(
        "ledger.maintenance: {operation} of table `{table}` failed: {source}. Ingestion is not affected; retry later (for vacuum, a retention below the table's `delta.deletedFileRetentionDuration` is refused)"
    )]
    Maintenance {
        operation: &'static str,
        table: &'static str,
        #[source]
        source: Cause,
    },

    #[error(
        "ledger.state: the state of table `{table}` could not be confirmed after a failed commit: {source}. The ledger will not write again until it can read the table (so no event is written twice); check the storage"
    )]
    Unconfirmed {
        table: &'static str,
        #[source]
        source: Cause,
    },

    #[error("ledger.runtime: {0}. This is a bug in tally; please report it")]
    Runtime(String),
}

impl LedgerError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Config { .. } => "ledger.config",
            LedgerError::TablesUri { .. } => "ledger.tables_uri",
            LedgerError::Storage { .. } => "ledger.storage",
            LedgerError::Commit { .. } => "ledger.commit",
            LedgerError::SourceMoved { .. } => "ledger.source_moved",
            LedgerError::Log(_) => "ledger.log",
            LedgerError::PositionRange { .. } => "ledger.position",
            LedgerError::BadTxnVersion { .. } => "ledger.txn",
            LedgerError::Convert { .. } => "ledger.convert",
            LedgerError::Read { .. } => "ledger.read",
            LedgerError::Maintenance { .. } => "ledger.maintenance",
            LedgerError::Unconfirmed { .. } => "ledger.state",
            LedgerError::Runtime(_) => "ledger.runtime",
        }
    }

    pub(crate) fn storage(
        table: &'static str,
        context: impl Into<String>,
        source: impl Into<Cause>,
    ) -> Self {
        LedgerError::Storage {
            table,
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn read(
        table: &'static str,
        context: impl Into<String>,
        source: impl Into<Cause>,
    ) -> Self {
        LedgerError::Read {
            table,
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn maintenance(
        operation: &'static str,
        table: &'static str,
        source: impl Into<Cause>,
    ) -> Self {
        LedgerError::Maintenance {
            operation,
            table,
            source: source.into(),
        }
    }
}

impl From<LogError> for LedgerError {
    fn from(e: LogError) -> Self {
        LedgerError::Log(e)
    }
}
