//! Read-only enforcement: decides from the logical plan (never from SQL text) whether a
//! statement may run. Rejects DDL, DML, COPY, session statements (SET, PREPARE, ...)
//! and any scan of a table that is not one of tally's event tables, the built-in
//! `generate_series`/`range`, a recursive CTE's work table, `information_schema` or
//! `pg_catalog` — so no table function can read a file. Must not rewrite plans (that is `scope`).

use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::cte_worktable::CteWorkTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SQLOptions;
use datafusion::functions_table::generate_series::GenerateSeriesTable;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, TableScan};

use crate::error::QueryError;
use crate::scope::{Principal, is_event_scan, is_org_scan};

/// The SQL options every query is verified with: no DDL, no DML, no statements.
pub fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Check that `plan` only reads tally's tables. Walks subqueries too. EXPLAIN is for
/// admins only: its plans and metrics show files and row counts of every tenant.
pub fn check(plan: &LogicalPlan, principal: &Principal) -> Result<(), QueryError> {
    let mut problem: Option<QueryError> = None;
    plan.apply_with_subqueries(|node| {
        if principal.tenant().is_some()
            && matches!(node, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_))
        {
            problem = Some(QueryError::Forbidden(
                "EXPLAIN is available to admin credentials only (plans show storage details of every tenant)"
                    .to_owned(),
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        if let Some(p) = forbidden(node) {
            problem = Some(p);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::Internal(format!("read-only check failed: {e}")))?;
    if let Some(p) = problem {
        return Err(p);
    }
    // Second, independent layer: DataFusion's own verifier.
    sql_options()
        .verify_plan(plan)
        .map_err(|e| QueryError::Forbidden(e.to_string()))
}

fn forbidden(node: &LogicalPlan) -> Option<QueryError> {
    let f = |m: String| Some(QueryError::Forbidden(m));
    match node {
        LogicalPlan::Ddl(ddl) => {
            let what = match ddl {
                DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE",
                DdlStatement::CreateMemoryTable(_) => "CREATE TABLE",
                DdlStatement::CreateView(_) => "CREATE VIEW",
                DdlStatement::CreateCatalogSchema(_) | DdlStatement::CreateCatalog(_) => {
                    "CREATE SCHEMA/CATALOG"
                }
                DdlStatement::CreateIndex(_) => "CREATE INDEX",
                DdlStatement::DropTable(_) => "DROP TABLE",
                DdlStatement::DropView(_) => "DROP VIEW",
                DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
                DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
                DdlStatement::DropFunction(_) => "DROP FUNCTION",
            };
            f(format!("{what} is not allowed"))
        }
        LogicalPlan::Dml(dml) => f(format!("{} is not allowed", dml.op.name())),
        LogicalPlan::Copy(_) => f("COPY is not allowed".to_owned()),
        LogicalPlan::Statement(s) => f(format!("the statement {} is not allowed", s.name())),
        LogicalPlan::Extension(ext) => {
            f(format!("the plan node {} is not allowed", ext.node.name()))
        }
        LogicalPlan::TableScan(scan) if !allowed_scan(scan) => f(format!(
            "reading `{}` is not allowed: only tally's tables, views, information_schema and generate_series/range can be queried",
            scan.table_name
        )),
        _ => None,
    }
}

fn allowed_scan(scan: &TableScan) -> bool {
    // Organisation-wide tables: tenant scoping refuses them to tenant tokens.
    if is_event_scan(scan) || is_org_scan(scan) {
        return true;
    }
    let Ok(provider) = source_as_provider(&scan.source) else {
        return false;
    };
    let provider = provider.as_ref();
    // generate_series/range compute rows; a recursive CTE's work table holds rows the
    // query itself produced from (scoped) scans.
    if provider.downcast_ref::<GenerateSeriesTable>().is_some()
        || provider.downcast_ref::<CteWorkTable>().is_some()
    {
        return true;
    }
    match scan.table_name.schema() {
        Some("information_schema") => provider.downcast_ref::<StreamingTable>().is_some(),
        // Registered once by the engine (Postgres clients list tables from it); no
        // statement can add a table to it.
        Some("pg_catalog") => cfg!(feature = "postgres"),
        _ => false,
    }
}
