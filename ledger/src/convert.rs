//! Decoded events to the Arrow batch of their table: which table an event belongs to,
//! ordering rows by `occurred_at`, the `day` partition column. Must not decode payloads
//! or touch storage.

use deltalake::arrow::array::RecordBatch;
use tally_events::arrow::{
    Table, corrections_to_batch, decisions_to_batch, usage_to_batch, with_day_column,
};
use tally_events::{Event, EventType};

use crate::error::LedgerError;

/// Index of an event's table in [`Table::ALL`].
pub(crate) fn table_index(event: &Event) -> usize {
    match event.event_type() {
        EventType::Usage | EventType::Other => 0,
        EventType::Decision => 1,
        EventType::Correction => 2,
    }
}

/// The rows of `table` for `events` (all of that table's type), sorted by `occurred_at`,
/// with the `day` column: the batch as stored.
pub(crate) fn events_to_batch(
    table: Table,
    mut events: Vec<Event>,
) -> Result<RecordBatch, LedgerError> {
    events.sort_by_key(|e| e.header().occurred_at);
    let batch = match table {
        Table::Usage => usage_to_batch(
            &events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Usage(u) => Some(u),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Table::Decisions => decisions_to_batch(
            &events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Decision(d) => Some(d),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Table::Corrections => corrections_to_batch(
            &events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Correction(c) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    };
    batch
        .and_then(|b| with_day_column(table, &b))
        .map_err(|e| LedgerError::Convert {
            table: table.name(),
            source: e.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::support::{decision, usage_at};

    #[test]
    fn rows_are_sorted_by_occurred_at_and_get_their_day() {
        let late = usage_at("t1", 1_700_000_000_000_000);
        let early = usage_at("t1", 1_600_000_000_000_000);
        let mid = usage_at("t1", 1_650_000_000_000_000);
        let batch = events_to_batch(Table::Usage, vec![late, early, mid]);
        let Ok(batch) = batch else {
            panic!("{:?}", batch.err());
        };
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.schema(), Table::Usage.table_schema());
        use deltalake::arrow::array::AsArray;
        use deltalake::arrow::datatypes::{Date32Type, TimestampMicrosecondType};
        let at = batch.column_by_name("occurred_at").map(|c| {
            c.as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec()
        });
        assert_eq!(
            at,
            Some(vec![
                1_600_000_000_000_000,
                1_650_000_000_000_000,
                1_700_000_000_000_000
            ])
        );
        let day = batch
            .column_by_name("day")
            .map(|c| c.as_primitive::<Date32Type>().value(0));
        assert_eq!(day, Some(18_518)); // 2020-09-13
        assert_eq!(table_index(&decision("t1")), 1);
    }
}
