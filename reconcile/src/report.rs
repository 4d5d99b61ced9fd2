//! Rendering a [`Reconciliation`] as Markdown, HTML, JSON or CSV: the summary first, then
//! money by cause, then every finding with its evidence. Must not compute or change any
//! figure: what it prints is exactly what the matcher produced.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::matcher::{Cause, Finding, Reconciliation};

/// Output format of a reconciliation report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Markdown,
    Html,
    Json,
    Csv,
}

impl FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "md" | "markdown" => Ok(ReportFormat::Markdown),
            "html" => Ok(ReportFormat::Html),
            "json" => Ok(ReportFormat::Json),
            "csv" => Ok(ReportFormat::Csv),
            other => Err(format!(
                "unknown report format `{other}`: use markdown, html, json or csv"
            )),
        }
    }
}

/// Micro-dollars as dollars with six decimals, sign first: `-$0.000250`.
pub fn dollars(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", m / 1_000_000, m % 1_000_000)
}

fn day_time(r: &Reconciliation) -> (String, String) {
    let f = |t: tally_events::Timestamp| t.to_datetime().format("%Y-%m-%d %H:%M").to_string();
    (f(r.start), f(r.end))
}

fn when(f: &Finding) -> String {
    f.bucket_start
        .to_datetime()
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// Render `r` in `format`.
pub fn render(r: &Reconciliation, format: ReportFormat) -> String {
    match format {
        ReportFormat::Markdown => markdown(r),
        ReportFormat::Html => html(r),
        ReportFormat::Json => serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
        ReportFormat::Csv => csv(r),
    }
}

/// One line saying whether the run passes.
pub fn verdict(r: &Reconciliation) -> String {
    if r.unexplained_over_tolerance == 0 {
        format!(
            "OK: every difference explained or within tolerance ({} finding(s))",
            r.findings.len()
        )
    } else {
        format!(
            "FAIL: {} unexplained difference(s) over tolerance",
            r.unexplained_over_tolerance
        )
    }
}

struct CauseRow {
    cause: Cause,
    count: usize,
    requests: i64,
    input: i64,
    output: i64,
    money: i64,
}

fn by_cause(r: &Reconciliation) -> Vec<CauseRow> {
    Cause::ALL
        .iter()
        .filter_map(|&cause| {
            let fs: Vec<&Finding> = r.of(cause).collect();
            (!fs.is_empty()).then(|| CauseRow {
                cause,
                count: fs.len(),
                requests: fs.iter().map(|f| f.difference.requests).sum(),
                input: fs.iter().map(|f| f.difference.input).sum(),
                output: fs.iter().map(|f| f.difference.output).sum(),
                money: fs.iter().map(|f| f.money_micros).sum(),
            })
        })
        .collect()
}

fn markdown(r: &Reconciliation) -> String {
    let (from, to) = day_time(r);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Reconciliation: {} {from} → {to} UTC ({} s buckets)\n",
        r.provider, r.bucket_seconds
    );
    let _ = writeln!(s, "{}\n", verdict(r));
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(
        s,
        "| side | requests | input | cached | cache write | output | money |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let g = r.gateway.figures;
    let p = r.provider_totals.figures;
    let d = p - g;
    for (name, f, m) in [
        ("gateway", g, r.gateway.money_micros),
        ("provider", p, r.provider_totals.money_micros),
        ("difference", d, r.money_difference_micros),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            f.requests,
            f.input,
            f.cached,
            f.cache_write,
            f.output,
            dollars(m)
        );
    }
    let _ = writeln!(
        s,
        "\nGateway money is its tokens priced per day and model; per-request recorded cost: {} (rounding {}).\n",
        dollars(r.gateway_recorded_micros),
        dollars(r.gateway_recorded_micros - r.gateway.money_micros)
    );
    let _ = writeln!(s, "## By cause\n");
    let _ = writeln!(
        s,
        "| cause | findings | Δ requests | Δ input | Δ output | money |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for c in by_cause(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            c.cause.as_str(),
            c.count,
            c.requests,
            c.input,
            c.output,
            dollars(c.money)
        );
    }
    let _ = writeln!(s, "\n## Findings\n");
    let _ = writeln!(
        s,
        "| bucket (UTC) | cause | account | model | Δ requests | Δ input | Δ cached | Δ output | money | evidence |"
    );
    let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---:|---:|---|");
    for f in &r.findings {
        let tol = if f.cause == Cause::Unexplained && f.within_tolerance {
            " (within tolerance)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {} | {}{tol} | {} | {} | {} | {} | {} | {} | {} | {} |",
            when(f),
            f.cause.as_str(),
            f.account,
            f.model.as_deref().unwrap_or(""),
            f.difference.requests,
            f.difference.input,
            f.difference.cached,
            f.difference.output,
            dollars(f.money_micros),
            f.evidence.replace('|', "\\|")
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(r: &Reconciliation) -> String {
    let (from, to) = day_time(r);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Reconciliation {p}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         .fail{{color:#b00}}.ok{{color:#070}}</style></head><body>\
         <h1>Reconciliation: {p}</h1><p>{from} → {to} UTC, {w} s buckets</p>",
        p = esc(&r.provider),
        w = r.bucket_seconds
    );
    let class = if r.unexplained_over_tolerance == 0 {
        "ok"
    } else {
        "fail"
    };
    let _ = write!(s, "<p class=\"{class}\"><b>{}</b></p>", esc(&verdict(r)));
    let _ = write!(
        s,
        "<h2>Summary</h2><table><tr><th>side</th><th>requests</th><th>input</th><th>cached</th><th>output</th><th>money</th></tr>"
    );
    let g = r.gateway.figures;
    let p = r.provider_totals.figures;
    for (name, f, m) in [
        ("gateway", g, r.gateway.money_micros),
        ("provider", p, r.provider_totals.money_micros),
        ("difference", p - g, r.money_difference_micros),
    ] {
        let _ = write!(
            s,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.requests,
            f.input,
            f.cached,
            f.output,
            dollars(m)
        );
    }
    let _ = write!(
        s,
        "</table><h2>By cause</h2><table><tr><th>cause</th><th>findings</th><th>Δ requests</th><th>Δ input</th><th>Δ output</th><th>money</th></tr>"
    );
    for c in by_cause(r) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.cause.as_str(),
            c.count,
            c.requests,
            c.input,
            c.output,
            dollars(c.money)
        );
    }
    let _ = write!(
        s,
        "</table><h2>Findings</h2><table><tr><th>bucket (UTC)</th><th>cause</th><th>account</th><th>model</th><th>Δ requests</th><th>Δ input</th><th>Δ output</th><th>money</th><th>evidence</th></tr>"
    );
    for f in &r.findings {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            when(f),
            f.cause.as_str(),
            esc(&f.account),
            esc(f.model.as_deref().unwrap_or("")),
            f.difference.requests,
            f.difference.input,
            f.difference.output,
            dollars(f.money_micros),
            esc(&f.evidence)
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(r: &Reconciliation) -> String {
    let mut s = String::from(
        "bucket_start,bucket_end,cause,account,model,requests,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,money_micros,within_tolerance,evidence\n",
    );
    for f in &r.findings {
        let d = f.difference;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            f.bucket_start.to_datetime().format("%Y-%m-%dT%H:%M:%SZ"),
            f.bucket_end.to_datetime().format("%Y-%m-%dT%H:%M:%SZ"),
            f.cause.as_str(),
            csv_field(&f.account),
            csv_field(f.model.as_deref().unwrap_or("")),
            d.requests,
            d.input,
            d.cached,
            d.cache_write,
            d.output,
            f.money_micros,
            f.within_tolerance,
            csv_field(&f.evidence)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(dollars(0), "$0.000000");
        assert_eq!(dollars(1_234_567), "$1.234567");
        assert_eq!(dollars(-250), "-$0.000250");
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
