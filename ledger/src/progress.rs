//! How far a catch-up has come, in the unit its log measures itself in. Must not read
//! the log: the amounts come from `EventLog::span` or from the records already read.

use std::fmt;

/// The unit of a [`Progress`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProgressUnit {
    /// Log records (events).
    Records,
    /// Bytes of the local event log.
    LogBytes,
}

/// Progress of [`crate::Ledger::catch_up`]: `done` of `total`, never past it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub unit: ProgressUnit,
}

impl Progress {
    /// Done, in percent (100 when there is nothing to do).
    pub fn percent(&self) -> u64 {
        (self.done.saturating_mul(100))
            .checked_div(self.total)
            .unwrap_or(100)
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            ProgressUnit::Records => {
                write!(f, "{}/{} records", self.done, self.total)?;
            }
            ProgressUnit::LogBytes => {
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                write!(f, "{:.1}/{:.1} MiB of log", mib(self.done), mib(self.total))?;
            }
        }
        write!(f, " ({}%)", self.percent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_in_its_unit() {
        let p = Progress {
            done: 3 * 1024 * 1024,
            total: 12 * 1024 * 1024,
            unit: ProgressUnit::LogBytes,
        };
        assert_eq!(p.to_string(), "3.0/12.0 MiB of log (25%)");
        let p = Progress {
            done: 0,
            total: 0,
            unit: ProgressUnit::Records,
        };
        assert_eq!(p.to_string(), "0/0 records (100%)");
    }
}
