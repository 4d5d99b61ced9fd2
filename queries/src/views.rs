//! The SQL views over the event tables (`requests`, `usage_corrected`, `usage_hourly`,
//! `spend_daily`, `denials`): their definitions and documentation. Views are plain SQL
//! over the tables, so tenant scoping reaches through them (the planner expands a view
//! into its scans). Must not execute anything.

use tally_events::arrow::Table;

/// A view: name, what it is for, and its defining query.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ViewDef {
    pub name: &'static str,
    pub description: &'static str,
    pub sql: String,
    /// Descriptions of the columns the view computes (columns taken from a table keep
    /// the table's description).
    pub computed_columns: &'static [(&'static str, &'static str)],
    /// The table most columns come from: a column without a description of its own is
    /// described as the table's column of the same name.
    pub base: Table,
}

/// The usage columns a correction can replace, in usage column order: the columns of
/// `corrections` that `usage` also has, less the common header (which every table has).
pub fn correctable_columns() -> Vec<String> {
    let corrections = Table::Corrections.event_schema();
    let decisions = Table::Decisions.event_schema();
    Table::Usage
        .event_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| corrections.field_with_name(n).is_ok() && decisions.field_with_name(n).is_err())
        .collect()
}

fn usage_corrected_sql() -> String {
    let correctable = correctable_columns();
    let columns: Vec<String> = Table::Usage
        .table_schema()
        .fields()
        .iter()
        .map(|f| {
            let n = f.name();
            if correctable.contains(n) {
                format!("COALESCE(c.{n}, u.{n}) AS {n}")
            } else {
                format!("u.{n}")
            }
        })
        .collect();
    format!(
        "SELECT {},\n  \
         c.event_id IS NOT NULL AS corrected,\n  \
         c.event_id AS correction_event_id,\n  \
         c.reason AS correction_reason\n\
         FROM usage u\n\
         LEFT JOIN (\n  \
         SELECT *, ROW_NUMBER() OVER (PARTITION BY corrects_event_id ORDER BY occurred_at DESC, event_id DESC) AS correction_rank\n  \
         FROM corrections\n\
         ) c ON c.corrects_event_id = u.event_id AND c.tenant = u.tenant AND c.correction_rank = 1",
        columns.join(",\n  ")
    )
}

const REQUESTS_SQL: &str = "SELECT u.*,
  d.rule AS decision_rule,
  d.rule_kind AS decision_rule_kind,
  d.outcome AS decision_outcome,
  d.reason AS decision_reason
FROM (
  SELECT *,
    CASE WHEN retry_attempt > 0 THEN regexp_replace(request_id, '-r[0-9]+$', '') ELSE request_id END AS root_request_id
  FROM usage
) u
LEFT JOIN (
  SELECT request_id, tenant, rule, rule_kind, outcome, reason,
    ROW_NUMBER() OVER (
      PARTITION BY request_id
      ORDER BY CASE WHEN outcome IN ('deny', 'shadow_deny') THEN 0 ELSE 1 END, occurred_at, event_id
    ) AS decision_rank
  FROM decisions
) d ON d.request_id = u.root_request_id AND d.tenant = u.tenant AND d.decision_rank = 1";

const USAGE_HOURLY_SQL: &str = "SELECT tenant, api_key_id, provider,
  COALESCE(model_served, model_requested) AS model,
  route,
  date_trunc('hour', occurred_at) AS hour,
  count(*) AS requests,
  sum(input_tokens) AS input_tokens,
  sum(cached_input_tokens) AS cached_input_tokens,
  sum(cache_write_tokens) AS cache_write_tokens,
  sum(output_tokens) AS output_tokens,
  sum(reasoning_tokens) AS reasoning_tokens,
  sum(input_tokens + output_tokens) AS total_tokens,
  sum(cost_micros) AS cost_micros,
  sum(CASE WHEN finish_state IN ('upstream_error', 'timeout') THEN 1 ELSE 0 END) AS errors,
  sum(CASE WHEN finish_state = 'client_aborted' THEN 1 ELSE 0 END) AS aborted,
  sum(CASE WHEN finish_state = 'denied' THEN 1 ELSE 0 END) AS denied,
  sum(CASE WHEN retry_attempt > 0 THEN 1 ELSE 0 END) AS retries
FROM usage_corrected
GROUP BY tenant, api_key_id, provider, COALESCE(model_served, model_requested), route, date_trunc('hour', occurred_at)";

const SPEND_DAILY_SQL: &str = "SELECT day, tenant, provider,
  COALESCE(model_served, model_requested) AS model,
  count(*) AS requests,
  sum(cost_micros) AS cost_micros,
  CAST(CAST(sum(cost_micros) AS DECIMAL(38, 6)) / 1000000 AS DECIMAL(24, 6)) AS cost_usd,
  sum(input_tokens) AS input_tokens,
  sum(output_tokens) AS output_tokens,
  sum(input_tokens + output_tokens) AS tokens
FROM usage_corrected
GROUP BY day, tenant, provider, COALESCE(model_served, model_requested)";

const DENIALS_SQL: &str = "SELECT * FROM decisions WHERE outcome IN ('deny', 'shadow_deny')";

/// Every view, in creation order (a view may use the ones before it).
pub fn views() -> Vec<ViewDef> {
    vec![
        ViewDef {
            name: "usage_corrected",
            description: "`usage` with the latest correction of each event applied: every figure a correction carries replaces the original (COALESCE), the others stay. One row per usage event.",
            sql: usage_corrected_sql(),
            computed_columns: &[
                ("corrected", "Whether a correction applies to this event."),
                (
                    "correction_event_id",
                    "event_id of the correction applied (the latest).",
                ),
                ("correction_reason", "Why the applied correction was made."),
            ],
            base: Table::Usage,
        },
        ViewDef {
            name: "requests",
            description: "One row per usage event (attempt) with the decision that explains it: the first deny or shadow_deny for the request if any, else its first allow. Retries (`<id>-r<n>`) are matched to the decisions of their original request id.",
            sql: REQUESTS_SQL.to_owned(),
            computed_columns: &[
                (
                    "root_request_id",
                    "request_id of the original request (without the -r<n> retry suffix).",
                ),
                ("decision_rule", "Rule of the explaining decision."),
                ("decision_rule_kind", "Kind of that rule."),
                (
                    "decision_outcome",
                    "allow, deny or shadow_deny; null when no decision was recorded.",
                ),
                ("decision_reason", "Reason of the explaining decision."),
            ],
            base: Table::Usage,
        },
        ViewDef {
            name: "usage_hourly",
            description: "Corrected usage per tenant, key, provider, model (served, else requested), route and UTC hour.",
            sql: USAGE_HOURLY_SQL.to_owned(),
            computed_columns: &[
                ("model", "Model served, else the model requested."),
                ("hour", "UTC hour (start)."),
                ("requests", "Usage events (attempts)."),
                ("input_tokens", "Sum of input tokens."),
                ("cached_input_tokens", "Sum of cached input tokens."),
                ("cache_write_tokens", "Sum of cache write tokens."),
                ("output_tokens", "Sum of output tokens."),
                ("reasoning_tokens", "Sum of reasoning tokens."),
                ("total_tokens", "Sum of input plus output tokens."),
                ("cost_micros", "Sum of cost, micro-USD."),
                (
                    "errors",
                    "Attempts that ended in upstream_error or timeout.",
                ),
                ("aborted", "Attempts the client aborted."),
                ("denied", "Requests denied by policy."),
                ("retries", "Attempts with retry_attempt > 0."),
            ],
            base: Table::Usage,
        },
        ViewDef {
            name: "spend_daily",
            description: "Corrected spend per UTC day, tenant, provider and model.",
            sql: SPEND_DAILY_SQL.to_owned(),
            computed_columns: &[
                ("model", "Model served, else the model requested."),
                ("requests", "Usage events (attempts)."),
                ("cost_micros", "Sum of cost, micro-USD."),
                ("cost_usd", "Sum of cost in USD, exact (decimal, 6 places)."),
                ("input_tokens", "Sum of input tokens."),
                ("output_tokens", "Sum of output tokens."),
                ("tokens", "Sum of input plus output tokens."),
            ],
            base: Table::Usage,
        },
        ViewDef {
            name: "denials",
            description: "Decisions that denied a request or would have (shadow mode).",
            sql: DENIALS_SQL.to_owned(),
            computed_columns: &[],
            base: Table::Decisions,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correctable_columns_are_the_figures() {
        assert_eq!(
            correctable_columns(),
            vec![
                "input_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
                "usage_source",
                "cost_micros",
                "price_version",
            ]
        );
    }
}
