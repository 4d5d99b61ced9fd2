//! Tenant scoping: who is asking ([`Principal`]) and the logical-plan rewrite that puts a
//! `tenant = '<t>'` filter directly above every scan of an event table, including scans
//! inside subqueries, CTEs, unions, joins and expanded views. Must not look at SQL text
//! and must not decide what statements are allowed (that is `safety`).

use std::fmt;

use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableScan, TableScanBuilder, lit,
};

use crate::error::QueryError;
use crate::tables::{OrgTable, TallyTable};

/// Name of the column every event table is scoped by.
pub const TENANT_COLUMN: &str = "tenant";

/// Who runs a query.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Principal {
    /// Sees every tenant's rows.
    Admin,
    /// Sees only the rows whose `tenant` column equals this value.
    Tenant(String),
}

impl Principal {
    /// The tenant this principal is limited to, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Tenant(t) => write!(f, "tenant:{t}"),
        }
    }
}

/// Whether a scan reads an organisation-wide table (provider reports, runs).
pub(crate) fn is_org_scan(scan: &TableScan) -> bool {
    source_as_provider(&scan.source)
        .map(|p| p.as_ref().downcast_ref::<OrgTable>().is_some())
        .unwrap_or(false)
}

/// Whether a scan reads one of tally's event tables.
pub(crate) fn is_event_scan(scan: &TableScan) -> bool {
    source_as_provider(&scan.source)
        .map(|p| p.as_ref().downcast_ref::<TallyTable>().is_some())
        .unwrap_or(false)
}

fn tenant_predicate(scan: &TableScan, tenant: &str) -> Expr {
    Expr::Column(Column::new(Some(scan.table_name.clone()), TENANT_COLUMN))
        .eq(lit(ScalarValue::Utf8(Some(tenant.to_owned()))))
}

/// Rewrite `plan` so that the principal sees only its rows. For [`Principal::Admin`] the
/// plan is returned unchanged. Views are already expanded to their scans by the planner,
/// so they are covered like any other scan.
pub fn apply(plan: LogicalPlan, principal: &Principal) -> Result<LogicalPlan, QueryError> {
    let Some(tenant) = principal.tenant() else {
        return Ok(plan);
    };
    // Organisation-wide tables have no tenant column: not for tenant tokens.
    let mut org_table = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && is_org_scan(scan)
        {
            org_table = Some(scan.table_name.to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::Internal(format!("tenant scoping failed: {e}")))?;
    if let Some(name) = org_table {
        return Err(QueryError::Forbidden(format!(
            "table {name} is organisation-wide (no tenant column): only admin tokens may read it"
        )));
    }
    let rewritten = plan
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) if is_event_scan(&scan) => {
                scoped_scan(scan, tenant).map(Transformed::yes)
            }
            other => Ok(Transformed::no(other)),
        })
        .map_err(|e| QueryError::Internal(format!("tenant scoping failed: {e}")))?
        .data;
    verify(&rewritten, tenant)?;
    Ok(rewritten)
}

/// `Filter(tenant = t)` over the scan. A scan that does not read the tenant column
/// (a projection pushed in by the planner) reads it too, and a projection above restores
/// the original columns.
fn scoped_scan(scan: TableScan, tenant: &str) -> datafusion::error::Result<LogicalPlan> {
    let predicate = tenant_predicate(&scan, tenant);
    let tenant_index = scan.source.schema().index_of(TENANT_COLUMN)?;
    match scan.projection.clone() {
        Some(projection) if !projection.contains(&tenant_index) => {
            let original: Vec<Expr> = scan
                .projected_schema
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            let mut widened = projection;
            widened.push(tenant_index);
            let wide = TableScanBuilder::new(scan.table_name.clone(), scan.source.clone())
                .with_projection(Some(widened))
                .with_filters(scan.filters.clone())
                .with_fetch(scan.fetch)
                .build()?;
            LogicalPlanBuilder::from(LogicalPlan::TableScan(wide))
                .filter(predicate)?
                .project(original)?
                .build()
        }
        _ => LogicalPlanBuilder::from(LogicalPlan::TableScan(scan))
            .filter(predicate)?
            .build(),
    }
}

/// Check the rewrite: every event-table scan (in subqueries too) sits directly under a
/// filter on the principal's tenant. Fails closed.
pub(crate) fn verify(plan: &LogicalPlan, tenant: &str) -> Result<(), QueryError> {
    let mut scans = 0usize;
    let mut guarded = 0usize;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) if is_event_scan(scan) => scans += 1,
            LogicalPlan::Filter(filter) => {
                if let LogicalPlan::TableScan(scan) = filter.input.as_ref()
                    && is_event_scan(scan)
                    && filter.predicate == tenant_predicate(scan, tenant)
                {
                    guarded += 1;
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::Internal(format!("tenant scope check failed: {e}")))?;
    if scans == guarded {
        Ok(())
    } else {
        Err(QueryError::Internal(format!(
            "tenant scope check failed: {guarded} of {scans} table scans are filtered by tenant"
        )))
    }
}
