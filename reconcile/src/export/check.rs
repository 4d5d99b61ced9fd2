//! The three-way check: the export's usage lines against the ledger's totals for the
//! same period and table versions (must be equal, before markup), and — when the
//! `provider_costs` table exists — the gateway's cost per provider against what the
//! providers billed for the period. Returns a structured result; must not print or
//! decide exit codes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use datafusion::execution::context::SessionContext;
use serde::Serialize;
use url::Url;

use super::ExportError;
use super::lines::{Figures, LineItem, LineKind};
use super::period::Period;
use super::read::{self, Versions};
use crate::report::dollars;

/// Gateway cost against provider cost for one provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderCheck {
    pub provider: String,
    /// What the gateway counted, µ$ (corrections applied).
    pub gateway_cost_micros: i64,
    /// What the provider billed (USD lines of `provider_costs`), µ$.
    pub provider_cost_micros: i64,
    /// provider − gateway.
    pub difference_micros: i64,
}

/// The result of a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub period: String,
    pub versions: Versions,
    /// Sum of the export's usage lines.
    pub export: Figures,
    /// The ledger's totals (`usage_corrected`) for the period, same versions.
    pub ledger: Figures,
    /// Export equals ledger, figure by figure.
    pub export_matches_ledger: bool,
    /// Sum billed to customers, µ$ (after markup/prices).
    pub billed_micros: i64,
    /// Whether `provider_costs` exists under the tables root.
    pub provider_costs_available: bool,
    /// Per provider, when `provider_costs` exists.
    pub providers: Vec<ProviderCheck>,
}

impl CheckReport {
    /// Text for a terminal.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let e = &self.export;
        let l = &self.ledger;
        let _ = writeln!(s, "check {} ({})", self.period, self.versions);
        let _ = writeln!(
            s,
            "  export: {} requests, {} input + {} output tokens, cost {}",
            e.requests,
            e.input_tokens,
            e.output_tokens,
            dollars(e.cost_micros)
        );
        let _ = writeln!(
            s,
            "  ledger: {} requests, {} input + {} output tokens, cost {}",
            l.requests,
            l.input_tokens,
            l.output_tokens,
            dollars(l.cost_micros)
        );
        let _ = writeln!(
            s,
            "  export = ledger: {}",
            if self.export_matches_ledger {
                "yes"
            } else {
                "NO — the export does not add up to the ledger"
            }
        );
        let _ = writeln!(s, "  billed to customers: {}", dollars(self.billed_micros));
        if !self.provider_costs_available {
            let _ = writeln!(
                s,
                "  provider costs: none imported (tally reconcile imports them)"
            );
        }
        for p in &self.providers {
            let _ = writeln!(
                s,
                "  {}: gateway {} provider {} difference {}",
                p.provider,
                dollars(p.gateway_cost_micros),
                dollars(p.provider_cost_micros),
                dollars(p.difference_micros)
            );
        }
        s
    }
}

/// Check `lines` (read from `ctx` at `versions`) against the ledger and provider costs.
pub(crate) async fn run(
    ctx: &SessionContext,
    root: &Url,
    period: &Period,
    versions: Versions,
    lines: &[LineItem],
) -> Result<CheckReport, ExportError> {
    let mut export = Figures::default();
    let mut billed = 0i64;
    for l in lines.iter().filter(|l| l.kind == LineKind::Usage) {
        export = export.plus(&l.figures);
        billed = billed.saturating_add(l.billed_micros);
    }
    let q = format!(
        "SELECT COALESCE(provider, '') AS provider, CAST(count(*) AS BIGINT), \
           CAST(COALESCE(sum(input_tokens), 0) AS BIGINT), CAST(COALESCE(sum(cached_input_tokens), 0) AS BIGINT), \
           CAST(COALESCE(sum(cache_write_tokens), 0) AS BIGINT), CAST(COALESCE(sum(output_tokens), 0) AS BIGINT), \
           CAST(COALESCE(sum(reasoning_tokens), 0) AS BIGINT), CAST(COALESCE(sum(audio_input_tokens), 0) AS BIGINT), \
           CAST(COALESCE(sum(audio_output_tokens), 0) AS BIGINT), CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) \
         FROM usage_corrected uc WHERE {} GROUP BY 1 ORDER BY 1",
        read::period_filter("uc", period)
    );
    let mut ledger = Figures::default();
    let mut gateway: BTreeMap<String, i64> = BTreeMap::new();
    for b in read::sql(ctx, &q).await? {
        let p = read::strings(&b, 0)?;
        let c: Vec<Vec<i64>> = (1..=9)
            .map(|i| read::ints(&b, i))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            let f = Figures {
                requests: c[0][r],
                input_tokens: c[1][r],
                cached_input_tokens: c[2][r],
                cache_write_tokens: c[3][r],
                output_tokens: c[4][r],
                reasoning_tokens: c[5][r],
                audio_input_tokens: c[6][r],
                audio_output_tokens: c[7][r],
                cost_micros: c[8][r],
            };
            ledger = ledger.plus(&f);
            *gateway.entry(p[r].clone()).or_default() += f.cost_micros;
        }
    }

    let mut providers = Vec::new();
    let costs = read::open_table(root, "provider_costs", None).await?;
    let available = costs.is_some();
    if let Some(table) = costs {
        let pctx = read::session();
        table
            .update_datafusion_session(&pctx.state())
            .map_err(|e| ExportError::read("provider_costs", e))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| ExportError::read("provider_costs", e))?;
        pctx.register_table("provider_costs", provider)
            .map_err(|e| ExportError::read("provider_costs", e))?;
        // One amount per row id: a re-imported line counts once.
        let q = format!(
            "SELECT provider, CAST(sum(a) AS BIGINT) FROM ( \
               SELECT row_id, provider, max(amount_micros) AS a FROM provider_costs \
               WHERE lower(currency) = 'usd' \
                 AND bucket_start >= arrow_cast({s}, 'Timestamp(µs, \"UTC\")') \
                 AND bucket_start < arrow_cast({e}, 'Timestamp(µs, \"UTC\")') \
               GROUP BY row_id, provider) GROUP BY provider ORDER BY provider",
            s = period.start_micros(),
            e = period.end_micros()
        );
        let mut billed_by: BTreeMap<String, i64> = BTreeMap::new();
        for b in read::sql(&pctx, &q).await? {
            let p = read::strings(&b, 0)?;
            let a = read::ints(&b, 1)?;
            for r in 0..b.num_rows() {
                billed_by.insert(p[r].clone(), a[r]);
            }
        }
        let mut names: Vec<&String> = gateway.keys().chain(billed_by.keys()).collect();
        names.sort();
        names.dedup();
        for n in names {
            let g = gateway.get(n).copied().unwrap_or(0);
            let p = billed_by.get(n).copied().unwrap_or(0);
            providers.push(ProviderCheck {
                provider: n.clone(),
                gateway_cost_micros: g,
                provider_cost_micros: p,
                difference_micros: p - g,
            });
        }
    }
    Ok(CheckReport {
        period: period.label.clone(),
        versions,
        export_matches_ledger: export == ledger,
        export,
        ledger,
        billed_micros: billed,
        provider_costs_available: available,
        providers,
    })
}
