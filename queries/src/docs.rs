//! The generated reference of what SQL users can query (`docs/schema.md`): every table's
//! columns with type, nullability and description (from the Arrow field metadata), and
//! every view's columns and definition. Must not hand-write column facts: they come from
//! `tally_events::arrow` and the planned views.

use std::fmt::Write as _;

use arrow::datatypes::{DataType, Field, TimeUnit};
use tally_events::arrow::{DESCRIPTION_KEY, PARTITION_COLUMN, Table};

use crate::config::QueryConfig;
use crate::engine::QueryEngine;
use crate::error::QueryError;
use crate::scope::Principal;
use crate::views::{ViewDef, views};

/// The command that rewrites `docs/schema.md`.
pub const REGENERATE_COMMAND: &str =
    "TALLY_REGENERATE_DOCS=1 cargo test -p tally-queries schema_doc";

fn table_description(t: Table) -> &'static str {
    match t {
        Table::Usage => {
            "What each forwarded (or denied) request consumed: one row per attempt (a retry is its own row, `retry_attempt` > 0)."
        }
        Table::Decisions => {
            "Every policy decision about a request: allow, deny or shadow_deny, with the rule, its counter and the reason. A denial always has one."
        }
        Table::Corrections => {
            "Amendments of earlier usage events (`corrects_event_id`): the figures present replace the original's in `usage_corrected`."
        }
    }
}

/// A SQL-style name of an Arrow type.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".to_owned(),
        DataType::Int32 => "INT".to_owned(),
        DataType::Int64 => "BIGINT".to_owned(),
        DataType::UInt64 => "BIGINT UNSIGNED".to_owned(),
        DataType::Boolean => "BOOLEAN".to_owned(),
        DataType::Float64 => "DOUBLE".to_owned(),
        DataType::Date32 => "DATE".to_owned(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "µs",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("TIMESTAMP({unit}, {tz})"),
                None => format!("TIMESTAMP({unit})"),
            }
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(f) if f.len() == 2 => format!(
                "MAP({}, {})",
                type_name(f[0].data_type()),
                type_name(f[1].data_type())
            ),
            other => format!("MAP({other})"),
        },
        other => other.to_string(),
    }
}

fn description(f: &Field) -> &str {
    f.metadata()
        .get(DESCRIPTION_KEY)
        .map(String::as_str)
        .unwrap_or("")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The view columns as planned: name, type, nullability, description.
fn view_columns(v: &ViewDef) -> Result<Vec<(String, String, bool, String)>, QueryError> {
    let name = v.name.to_owned();
    std::thread::spawn(
        move || -> Result<Vec<(String, DataType, bool, String)>, QueryError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            rt.block_on(async {
                // Planning never reads the tables, so the root need not exist.
                let root = std::env::temp_dir().join("tally-schema-doc-unused");
                let engine =
                    QueryEngine::new(QueryConfig::default(), &root.to_string_lossy(), None).await?;
                let plan = engine
                    .logical_plan(&format!("SELECT * FROM {name}"), &Principal::Admin)
                    .await?;
                Ok(plan
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| {
                        (
                            f.name().clone(),
                            f.data_type().clone(),
                            f.is_nullable(),
                            description(f).to_owned(),
                        )
                    })
                    .collect())
            })
        },
    )
    .join()
    .map_err(|_| QueryError::Internal("planning the views panicked".to_owned()))?
    .map(|cols| {
        cols.into_iter()
            .map(|(n, t, null, d)| {
                let computed = v.computed_columns.iter().find(|(c, _)| *c == n);
                let d = match computed {
                    Some((_, d)) => (*d).to_owned(),
                    None if d.is_empty() => v
                        .base
                        .table_schema()
                        .field_with_name(&n)
                        .map(|f| description(f).to_owned())
                        .unwrap_or_default(),
                    None => d,
                };
                (n, type_name(&t), null, d)
            })
            .collect()
    })
}

/// `docs/schema.md`: the tables and views SQL users can query.
pub fn schema_markdown() -> Result<String, QueryError> {
    let mut md = String::new();
    let _ = writeln!(md, "# Table and view reference\n");
    let _ = writeln!(
        md,
        "Generated from the Arrow schemas (`events/src/arrow.rs`) and the view definitions (`queries/src/views.rs`) by `tally_queries::schema_markdown()`; do not edit by hand. Regenerate with `{REGENERATE_COMMAND}`.\n"
    );
    let _ = writeln!(
        md,
        "The tables are Delta Lake tables under the tables root (`<data-dir>/tables` by default): `usage/`, `decisions/` and `corrections/`, each partitioned by `{PARTITION_COLUMN}` (the UTC day of `occurred_at`; filter on it to read less). Queries also see events acknowledged by the event log but not yet committed by the ledger. Query them with `tally sql`, `POST /v1/sql` or the Postgres wire protocol; a tenant-scoped credential sees only its tenant's rows, in tables and views alike.\n"
    );
    let _ = writeln!(md, "## Tables\n");
    for t in Table::ALL {
        let _ = writeln!(md, "### {}\n\n{}\n", t.name(), table_description(t));
        let _ = writeln!(md, "| column | type | nullable | description |");
        let _ = writeln!(md, "|---|---|---|---|");
        for f in t.table_schema().fields() {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} |",
                f.name(),
                type_name(f.data_type()),
                if f.is_nullable() { "yes" } else { "no" },
                cell(description(f))
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Views\n");
    for v in views() {
        let _ = writeln!(md, "### {}\n\n{}\n", v.name, v.description);
        let _ = writeln!(md, "| column | type | nullable | description |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (n, t, null, d) in view_columns(&v)? {
            let _ = writeln!(
                md,
                "| `{n}` | {t} | {} | {} |",
                if null { "yes" } else { "no" },
                cell(&d)
            );
        }
        let _ = writeln!(md, "\n```sql\nCREATE VIEW {} AS\n{};\n```\n", v.name, v.sql);
    }
    while md.ends_with("\n\n") {
        md.pop();
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when docs/schema.md is stale; `TALLY_REGENERATE_DOCS=1` rewrites it.
    #[test]
    fn schema_doc_matches_the_schemas() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema.md");
        let expected = schema_markdown().unwrap();
        if std::env::var_os("TALLY_REGENERATE_DOCS").is_some() {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            "docs/schema.md is out of date with the Arrow schemas and views; regenerate it with `{REGENERATE_COMMAND}` and commit the result"
        );
    }

    #[test]
    fn every_column_is_described() {
        for t in Table::ALL {
            for f in t.table_schema().fields() {
                assert!(
                    !description(f).is_empty(),
                    "{}.{} has no description",
                    t.name(),
                    f.name()
                );
            }
        }
        for v in views() {
            for (n, _, _, d) in view_columns(&v).unwrap() {
                assert!(!d.is_empty(), "view {}.{n} has no description", v.name);
            }
        }
    }
}
