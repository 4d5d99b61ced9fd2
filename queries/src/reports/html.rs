//! The HTML usage report (`tally usage --format html`): one self-contained page, readable
//! offline (no scripts, no external files, charts drawn as inline SVG): totals, daily
//! spend per model as stacked bars, the top keys by spend, usage by tenant and model, and
//! where tokens went. Built from the same reports as the text and JSON output, for the
//! same principal; must not run SQL of its own beyond the daily spend series.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tally_events::Timestamp;

use crate::engine::QueryEngine;
use crate::error::QueryError;
use crate::reports::usage::{Dimension, TopBy, UsageReport, top, usage_report};
use crate::reports::{Col, Since, range_params, thousands, usd};
use crate::scope::Principal;

/// Bar colours, one per series, in order (also what tests look for in a screenshot).
pub const PALETTE: [&str; 12] = [
    "#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#84cc16", "#f97316",
    "#db2777", "#14b8a6", "#a16207", "#64748b",
];

/// `$1`: the first UTC day of the period. Grouped straight from `usage_corrected` by day
/// and model (the sums `spend_daily` would add up again per tenant and provider).
pub(crate) const DAILY_SQL: &str =
    "SELECT CAST(day AS VARCHAR) AS day, CAST(model AS VARCHAR) AS model, cost_micros
FROM (
  SELECT day, COALESCE(model_served, model_requested) AS model, sum(cost_micros) AS cost_micros
  FROM usage_corrected WHERE day >= $1
  GROUP BY day, COALESCE(model_served, model_requested)
) ORDER BY 1, 2";

/// The report page for `principal` since `since`.
pub async fn html_report(
    engine: &QueryEngine,
    since: Since,
    principal: &Principal,
) -> Result<String, QueryError> {
    let start = since.start(Timestamp::now());
    let usage = usage_report(
        engine,
        &[Dimension::Tenant, Dimension::Model],
        Since::At(start),
        principal,
    )
    .await?;
    let keys = top(
        engine,
        TopBy::Spend,
        Dimension::Key,
        10,
        Since::At(start),
        principal,
    )
    .await?;
    let mut daily: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for b in engine
        .collect_with_params(DAILY_SQL, range_params(start).split_off(1), principal)
        .await?
    {
        let (day, model, cost) = (
            Col::str(&b, "day")?,
            Col::str(&b, "model")?,
            Col::int(&b, "cost_micros")?,
        );
        for i in 0..b.num_rows() {
            *daily
                .entry(day.get_str(i).unwrap_or_default())
                .or_default()
                .entry(model.get_str(i).unwrap_or_else(|| "(unknown)".into()))
                .or_default() += cost.get_int(i).unwrap_or(0);
        }
    }
    let top_keys: Vec<(String, i64)> = keys
        .rows
        .iter()
        .map(|r| (r.key.clone().unwrap_or_else(|| "(no key)".into()), r.value))
        .collect();
    Ok(render(&usage, &daily, &top_keys))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Stacked bars: one per day, one segment per model.
fn daily_chart(daily: &BTreeMap<String, BTreeMap<String, i64>>) -> String {
    let models: Vec<&String> = {
        let mut totals: BTreeMap<&String, i64> = BTreeMap::new();
        for per_model in daily.values() {
            for (m, c) in per_model {
                *totals.entry(m).or_default() += c;
            }
        }
        let mut v: Vec<(&String, i64)> = totals.into_iter().filter(|(_, c)| *c > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.into_iter().map(|(m, _)| m).collect()
    };
    let colour = |m: &String| {
        let i = models.iter().position(|x| *x == m).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let max = daily
        .values()
        .map(|m| m.values().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, left, bottom) = (760.0_f64, 260.0_f64, 70.0_f64, 40.0_f64);
    let n = daily.len().max(1) as f64;
    let slot = (w - left) / n;
    let bar = (slot * 0.7).clamp(4.0, 60.0);
    let mut svg = format!(
        r#"<svg class="chart" id="daily-spend" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="Daily spend per model">"#
    );
    let plot = h - bottom - 10.0;
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="10" x2="{left}" y2="{}" stroke="#888"/><text x="{}" y="18" font-size="11" text-anchor="end">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">$0</text>"##,
        plot + 10.0,
        left - 6.0,
        esc(&usd(max)),
        left - 6.0,
        plot + 10.0
    );
    for (i, (day, per_model)) in daily.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = plot + 10.0;
        for m in &models {
            let Some(c) = per_model.get(*m) else { continue };
            let hgt = plot * (*c as f64) / (max as f64);
            y -= hgt;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{hgt:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                colour(m),
                esc(day),
                esc(m),
                esc(&usd(*c))
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            x + bar / 2.0,
            h - bottom + 18.0,
            esc(day.get(5..).unwrap_or(day))
        );
    }
    svg.push_str("</svg><p class=\"legend\">");
    for m in &models {
        let _ = write!(
            svg,
            r#"<span><i style="background:{}"></i>{}</span> "#,
            colour(m),
            esc(m)
        );
    }
    svg.push_str("</p>");
    svg
}

/// Horizontal bars, largest first.
fn top_keys_chart(keys: &[(String, i64)]) -> String {
    let max = keys.iter().map(|k| k.1).max().unwrap_or(0).max(1);
    let (w, row, label) = (760.0_f64, 26.0_f64, 200.0_f64);
    let h = row * keys.len().max(1) as f64 + 10.0;
    let mut svg = format!(
        r#"<svg class="chart" id="top-keys" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="Top keys by spend">"#
    );
    for (i, (key, cost)) in keys.iter().enumerate() {
        let y = 5.0 + row * i as f64;
        let len = (w - label - 110.0) * (*cost as f64) / (max as f64);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text><rect x="{label}" y="{y:.1}" width="{len:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            label - 8.0,
            y + row * 0.6,
            esc(key),
            row * 0.7,
            PALETTE[0],
            label + len + 6.0,
            y + row * 0.6,
            esc(&usd(*cost))
        );
    }
    svg.push_str("</svg>");
    svg
}

fn render(
    usage: &UsageReport,
    daily: &BTreeMap<String, BTreeMap<String, i64>>,
    top_keys: &[(String, i64)],
) -> String {
    let t = &usage.totals;
    let mut page = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tally usage report</title><style>
body{font-family:system-ui,sans-serif;margin:24px;color:#111;background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.totals{display:flex;gap:28px;font-size:14px}.totals b{display:block;font-size:20px}
</style></head><body>"#,
    );
    let _ = write!(
        page,
        r#"<h1>tally usage report</h1><p>{} – {} (UTC)</p><div class="totals"><div><b>{}</b>spend</div><div><b>{}</b>requests</div><div><b>{}</b>input tokens</div><div><b>{}</b>output tokens</div></div>"#,
        esc(&usage.since.to_string()),
        esc(&usage.until.to_string()),
        esc(&usd(t.cost_micros)),
        thousands(t.requests),
        thousands(t.input_tokens),
        thousands(t.output_tokens),
    );
    page.push_str("<h2>Daily spend per model</h2>");
    if daily.is_empty() {
        page.push_str("<p>No spend in this period.</p>");
    } else {
        page.push_str(&daily_chart(daily));
    }
    page.push_str("<h2>Top keys by spend</h2>");
    if top_keys.is_empty() {
        page.push_str("<p>No requests in this period.</p>");
    } else {
        page.push_str(&top_keys_chart(top_keys));
    }
    page.push_str("<h2>Usage by tenant and model</h2><table><tr><th>tenant</th><th>model</th><th>requests</th><th>input</th><th>cached</th><th>output</th><th>reasoning</th><th>cost</th></tr>");
    for r in &usage.rows {
        let k = |i: usize| {
            esc(r
                .keys
                .get(i)
                .cloned()
                .flatten()
                .as_deref()
                .unwrap_or("(none)"))
        };
        let f = &r.figures;
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            k(0),
            k(1),
            thousands(f.requests),
            thousands(f.input_tokens),
            thousands(f.cached_input_tokens),
            thousands(f.output_tokens),
            thousands(f.reasoning_tokens),
            esc(&usd(f.cost_micros))
        );
    }
    page.push_str("</table><h2>Where tokens went</h2><table><tr><th>what</th><th></th><th>requests</th><th>tokens</th><th>cost</th></tr>");
    let w = &usage.where_tokens_went;
    for (what, f) in [
        ("failed (upstream error, timeout)", &w.failed),
        ("aborted by the client", &w.aborted),
        ("retries", &w.retries),
    ] {
        let _ = write!(
            page,
            "<tr><td>{what}</td><td></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            thousands(f.requests),
            thousands(f.input_tokens + f.output_tokens),
            esc(&usd(f.cost_micros))
        );
    }
    for d in &w.denied {
        let _ = write!(
            page,
            "<tr><td>{} by rule {}</td><td>{}</td><td>{}</td><td></td><td></td></tr>",
            esc(&d.outcome),
            esc(&d.rule),
            esc(&d.rule_kind),
            thousands(d.requests)
        );
    }
    page.push_str("</table></body></html>\n");
    page
}
