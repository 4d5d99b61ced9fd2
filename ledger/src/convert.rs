//! Decoded events to the Arrow batch of their table: which table an event belongs to,
//! ordering rows by `occurred_at`, the `day` partition column. Must not decode payloads
//! or touch storage.

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::{SortOptions, sort_to_indices, take_record_batch};
use deltalake::arrow::datatypes::TimestampMicrosecondType;
use tally_events::EventType;
use tally_events::arrow::{Table, with_day_column};

use crate::error::LedgerError;

/// Index of an event type's table in [`Table::ALL`].
pub(crate) fn table_index(event_type: EventType) -> usize {
    match event_type {
        EventType::Usage | EventType::Other => 0,
        EventType::Decision => 1,
        EventType::Correction => 2,
    }
}

fn convert(table: Table, e: impl Into<crate::error::Cause>) -> LedgerError {
    LedgerError::Convert {
        table: table.name(),
        source: e.into(),
    }
}

/// A batch of `table`'s rows (its event schema) ordered by `occurred_at` (as is when
/// already in order), with the `day` column: the rows as stored.
pub(crate) fn sorted_with_day(table: Table, rows: RecordBatch) -> Result<RecordBatch, LedgerError> {
    let at = rows
        .column_by_name("occurred_at")
        .ok_or_else(|| convert(table, "occurred_at missing"))?;
    let sorted = at
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| convert(table, "occurred_at is not a microsecond timestamp"))?
        .values()
        .windows(2)
        .all(|w| w[0] <= w[1]);
    let rows = if sorted {
        rows
    } else {
        let order = sort_to_indices(
            at,
            Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
            None,
        )
        .map_err(|e| convert(table, e))?;
        take_record_batch(&rows, &order).map_err(|e| convert(table, e))?
    };
    with_day_column(table, &rows).map_err(|e| convert(table, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::support::{decision, usage_at};
    use tally_events::WireEvent;
    use tally_events::arrow::RowsBuilder;

    #[test]
    fn rows_are_sorted_by_occurred_at_and_get_their_day() {
        let mut rows = RowsBuilder::new(Table::Usage);
        for at in [
            1_700_000_000_000_000,
            1_600_000_000_000_000,
            1_650_000_000_000_000,
        ] {
            let e = usage_at("t1", at);
            assert!(rows.append(&WireEvent::from_event(&e)).is_ok());
        }
        let batch = rows
            .finish()
            .map_err(|e| convert(Table::Usage, e))
            .and_then(|b| sorted_with_day(Table::Usage, b));
        let Ok(batch) = batch else {
            panic!("{:?}", batch.err());
        };
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.schema(), Table::Usage.table_schema());
        use deltalake::arrow::datatypes::Date32Type;
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
        assert_eq!(table_index(decision("t1").event_type()), 1);
    }
}
