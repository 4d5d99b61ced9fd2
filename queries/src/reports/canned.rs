//! The statements the reports run, listed with the parameters each report binds, so that
//! benchmarks (and other engines) can run exactly what `tally usage`, `tally top`,
//! `tally why` and the HTML report run. Must not execute anything.

use datafusion::scalar::ScalarValue;
use tally_events::Timestamp;

use super::html::DAILY_SQL;
use super::range_params;
use super::usage::{Dimension, TopBy, top_sql, usage_report_sql};
use super::why::{ATTEMPTS_SQL, DECISIONS_SQL};

/// One statement of a report, with its bound parameters (`$1`, `$2`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct CannedQuery {
    /// A short stable name, e.g. `usage.groups`.
    pub name: &'static str,
    /// The command that runs it.
    pub report: &'static str,
    pub sql: String,
    pub params: Vec<ScalarValue>,
}

/// Every report statement over the period from `since` (for `tally usage --by
/// tenant,model`, `tally top --by spend` over keys and the HTML report's daily chart) and
/// the two statements of `tally why <request_id>`.
pub fn canned_queries(since: Timestamp, request_id: &str) -> Vec<CannedQuery> {
    let range = range_params(since);
    let usage = usage_report_sql(&[Dimension::Tenant, Dimension::Model]);
    let names = [
        "usage.groups",
        "usage.totals",
        "usage.finish_state",
        "usage.retries",
        "usage.denied",
        "usage.source",
    ];
    let mut out: Vec<CannedQuery> = names
        .into_iter()
        .zip(usage)
        .map(|(name, sql)| CannedQuery {
            name,
            report: "tally usage --by tenant,model",
            sql,
            params: range.clone(),
        })
        .collect();
    out.push(CannedQuery {
        name: "top.keys_by_spend",
        report: "tally top --by spend --dimension key",
        sql: top_sql(TopBy::Spend, Dimension::Key, 10),
        params: range.clone(),
    });
    out.push(CannedQuery {
        name: "html.daily_spend",
        report: "tally usage --format html",
        sql: DAILY_SQL.to_owned(),
        params: range[1..].to_vec(),
    });
    let id = || {
        vec![
            ScalarValue::Utf8(Some(request_id.to_owned())),
            ScalarValue::Utf8(Some(format!("{request_id}-r"))),
        ]
    };
    out.push(CannedQuery {
        name: "why.decisions",
        report: "tally why",
        sql: DECISIONS_SQL.to_owned(),
        params: id(),
    });
    out.push(CannedQuery {
        name: "why.attempts",
        report: "tally why",
        sql: ATTEMPTS_SQL.to_owned(),
        params: id(),
    });
    out
}
