//! How a consumer position in the event log is recorded in a Delta table: the
//! application transaction (`txn` action) id and the encoding of a [`Position`] as its
//! `i64` version. Must not read or write tables or the log.
//!
//! Encoding: `version = (segment << 40) | offset`, so offsets up to 1 TiB per segment
//! and 2^23 segments fit in a non-negative `i64`, and the order of versions is the order
//! of positions. The version stored with a commit is the position *after* the last
//! record of the batch, i.e. where reading resumes.

use tally_events::log::Position;

use crate::error::LedgerError;

const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const MAX_SEGMENT: u64 = (1 << (63 - OFFSET_BITS)) - 1;

/// The Delta application transaction id of the ledger consuming `source_name`.
pub fn app_id(source_name: &str) -> String {
    format!("tally-ledger/{source_name}")
}

/// Encode a log position as a Delta transaction version (see the module docs).
pub fn txn_version(position: Position) -> Result<i64, LedgerError> {
    if position.segment > MAX_SEGMENT || position.offset > OFFSET_MASK {
        return Err(LedgerError::PositionRange { position });
    }
    i64::try_from((position.segment << OFFSET_BITS) | position.offset)
        .map_err(|_| LedgerError::PositionRange { position })
}

/// Decode a Delta transaction version written by [`txn_version`]; `None` if negative.
pub fn txn_position(version: i64) -> Option<Position> {
    let v = u64::try_from(version).ok()?;
    Some(Position::new(v >> OFFSET_BITS, v & OFFSET_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_order() {
        let positions = [
            Position::START,
            Position::new(0, 16),
            Position::new(0, OFFSET_MASK),
            Position::new(1, 0),
            Position::new(7, 1 << 30),
            Position::new(MAX_SEGMENT, OFFSET_MASK),
        ];
        let mut last = -1;
        for p in positions {
            let v = txn_version(p).ok();
            assert!(v.is_some_and(|v| v > last), "{p} -> {v:?}");
            last = v.unwrap_or(-1);
            assert_eq!(v.and_then(txn_position), Some(p));
        }
        assert_eq!(txn_version(Position::new(3, 40)).ok(), Some((3 << 40) | 40));
    }

    #[test]
    fn refuses_out_of_range() {
        assert!(txn_version(Position::new(MAX_SEGMENT + 1, 0)).is_err());
        assert!(txn_version(Position::new(0, OFFSET_MASK + 1)).is_err());
        assert_eq!(txn_position(-1), None);
        assert_eq!(app_id("local"), "tally-ledger/local");
    }
}
