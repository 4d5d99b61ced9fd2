//! Round trip: events of every type through a segment log and the ledger into Delta
//! tables, read back with DataFusion and compared column by column; the files are plain
//! Delta and Parquet. Must not use the ledger's own readers to check its output.

use std::fs::File;

use deltalake::arrow::array::{Array, ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::basic::{Compression, Encoding};
use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
use deltalake::parquet::file::serialized_reader::ReadOptionsBuilder;
use tally_events::arrow::{
    Table, corrections_to_batch, decisions_to_batch, usage_to_batch, with_day_column,
};
use tally_events::log::EventLog;
use tally_events::{Event, Timestamp};

use super::support::*;

fn strings(col: &dyn Array) -> TestResult<Vec<String>> {
    let fmt = ArrayFormatter::try_new(col, &FormatOptions::default())?;
    Ok((0..col.len()).map(|i| fmt.value(i).to_string()).collect())
}

/// Expected rows of `table`, ordered by event_id.
fn expected(table: Table, events: &[Event]) -> TestResult<RecordBatch> {
    let mut events: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type() == table.event_type())
        .collect();
    events.sort_by_key(|e| e.header().event_id.to_string());
    let batch = match table {
        Table::Usage => usage_to_batch(
            &events
                .iter()
                .filter_map(|e| match e {
                    Event::Usage(u) => Some(u.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )?,
        Table::Decisions => decisions_to_batch(
            &events
                .iter()
                .filter_map(|e| match e {
                    Event::Decision(d) => Some(d.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )?,
        Table::Corrections => corrections_to_batch(
            &events
                .iter()
                .filter_map(|e| match e {
                    Event::Correction(c) => Some(c.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )?,
    };
    Ok(with_day_column(table, &batch)?)
}

/// Every column of the table equals the events' (compared as displayed values, after
/// casting to the contract type where a reader returns another representation).
pub(crate) async fn assert_table_matches(env: &Env, table: Table, events: &[Event]) -> TestResult {
    let want = expected(table, events)?;
    let got = query(
        &env.tables(),
        &format!("SELECT * FROM {} ORDER BY event_id", table.name()),
    )
    .await?;
    let got = deltalake::arrow::compute::concat_batches(
        &got.first().map(|b| b.schema()).ok_or("no batches")?,
        &got,
    )?;
    assert_eq!(got.num_rows(), want.num_rows(), "rows of {}", table.name());
    for field in want.schema().fields() {
        let name = field.name();
        let actual = got
            .column_by_name(name)
            .ok_or_else(|| format!("column {name} missing in {}", table.name()))?;
        let actual: ArrayRef = if actual.data_type() != field.data_type()
            && !matches!(
                field.data_type(),
                deltalake::arrow::datatypes::DataType::Map(..)
            ) {
            cast(actual, field.data_type())?
        } else {
            actual.clone()
        };
        let expected = want.column_by_name(name).ok_or("column")?;
        assert_eq!(
            strings(actual.as_ref())?,
            strings(expected.as_ref())?,
            "column {}.{name}",
            table.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_every_event_type_and_column() -> TestResult {
    let env = Env::new()?;
    let mut events = Vec::new();
    for i in 0..20 {
        events.push(if i % 4 == 0 {
            bare_usage("acme")
        } else {
            usage("acme")
        });
        if i % 3 == 0 {
            events.push(decision("beta"));
        }
    }
    let corrected = events[1].header().event_id;
    events.push(correction("acme", corrected));
    events.push(correction("acme", corrected));
    env.append(&events)?;

    let mut ledger = env.ledger(config()).await?;
    let step = ledger.step().await?;
    assert_eq!(step.rows, [20, 7, 2]);
    assert_eq!(step.records, 29);
    assert_eq!(step.end, env.log.durable_end());
    for table in Table::ALL {
        assert_table_matches(&env, table, &events).await?;
        assert_eq!(
            ledger.committed_positions().get(&table),
            Some(&env.log.durable_end())
        );
    }
    // A few values checked against the events themselves, not through the converter.
    let u = events
        .iter()
        .find_map(|e| match e {
            Event::Usage(u) if u.retry_of.is_some() => Some(u),
            _ => None,
        })
        .ok_or("fixture")?;
    let n = count(
        &env.tables(),
        &format!(
            "SELECT count(*) FROM usage WHERE event_id = '{}' AND input_tokens = 1200 \
             AND labels['team'] = 'ml' AND occurred_at = TIMESTAMP '{}' \
             AND day = DATE '{}' AND retry_of = 'req-previous'",
            u.header.event_id,
            u.header.occurred_at.to_string().trim_end_matches('Z'),
            u.header.occurred_at.utc_day()
        ),
    )
    .await?;
    assert_eq!(n, 1);

    // Nothing new: a step commits nothing and changes no position.
    let again = ledger.step().await?;
    assert_eq!((again.records, again.commits), (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_plain_delta_and_parquet() -> TestResult {
    let env = Env::new()?;
    // One day, occurred_at shuffled.
    let base = Timestamp::parse("2026-01-15T12:00:00Z")?.as_micros();
    let events: Vec<Event> = (0..50i64)
        .map(|i| {
            usage_at(
                if i % 2 == 0 { "a" } else { "b" },
                base + (i * 37 % 50) * 60_000_000,
            )
        })
        .collect();
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    ledger.step().await?;

    for table in Table::ALL {
        let log0 = env
            .tables()
            .join(table.name())
            .join("_delta_log/00000000000000000000.json");
        assert!(log0.is_file(), "{} missing", log0.display());
    }
    let files = parquet_files(&env.tables().join("usage"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].to_string_lossy().contains("day=2026-01-15"),
        "{}",
        files[0].display()
    );
    let reader = SerializedFileReader::new_with_options(
        File::open(&files[0])?,
        ReadOptionsBuilder::new().with_page_index().build(),
    )?;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 50);
    let rg = meta.row_group(0);
    let col_named = |name: &str| {
        (0..rg.num_columns())
            .map(|i| rg.column(i))
            .find(|c| c.column_path().string() == name)
    };
    let tenant = col_named("tenant").ok_or("tenant column")?;
    assert!(matches!(tenant.compression(), Compression::ZSTD(_)));
    assert!(
        tenant.encodings().any(|e| e == Encoding::RLE_DICTIONARY),
        "low-cardinality strings are dictionary-encoded"
    );
    let event_id = col_named("event_id").ok_or("event_id column")?;
    assert!(!event_id.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
    assert!(
        meta.column_index().is_some(),
        "page-level statistics (column index)"
    );
    let request_id = col_named("request_id").ok_or("request_id column")?;
    assert!(
        request_id.bloom_filter_offset().is_some(),
        "bloom filter on request_id"
    );
    // The partition column lives in the path, not in the file.
    assert!(col_named("day").is_none());

    // Rows are ordered by occurred_at within the file (read with the plain Parquet reader).
    let at = file_times(&files[0])?;
    assert_eq!(at.len(), 50);
    assert!(at.is_sorted(), "{at:?}");
    Ok(())
}

/// The `occurred_at` values of a Parquet file, in file order.
fn file_times(path: &std::path::Path) -> TestResult<Vec<String>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?.build()?;
    let mut at: Vec<String> = Vec::new();
    for b in reader {
        let b = b?;
        at.extend(strings(
            b.column_by_name("occurred_at")
                .ok_or("occurred_at")?
                .as_ref(),
        )?);
    }
    Ok(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_in_time_order_within_files_across_log_reads() -> TestResult {
    let env = Env::new()?;
    // More events than one log read takes: each read's rows are in order, but the second
    // read's rows are older than the first's (an out-of-order producer), so they are
    // written in one order only if the file writer looks across reads.
    let base = Timestamp::parse("2026-01-15T12:00:00Z")?.as_micros();
    let n = 5_000i64;
    let events: Vec<Event> = (0..n)
        .map(|i| usage_at("a", base + ((i + n / 2) % n) * 1_000_000))
        .collect();
    env.append(&events)?;
    let mut ledger = env.ledger(config()).await?;
    ledger.step().await?;
    // One commit, one chunk: one file, its rows in order.
    let files = parquet_files(&env.tables().join("usage"));
    assert_eq!(files.len(), 1, "{files:?}");
    let mut rows = 0;
    for f in &files {
        let at = file_times(f)?;
        assert!(at.is_sorted(), "{} is out of time order", f.display());
        rows += at.len();
    }
    assert_eq!(rows, n as usize);
    Ok(())
}
