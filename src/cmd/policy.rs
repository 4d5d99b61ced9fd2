//! `tally policy check` (validate a policy file and summarise its rules) and `tally policy
//! test` (what a policy would decide for one request, rule by rule, without sending it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Deserialize;
use tally_enforcer::policy::{Explanation, PolicyEngine, PolicySet, RequestAttrs, Verdict};
use tally_enforcer::pricing::PriceTable;
use tally_events::{EventHeader, Provider, Route, Timestamp, TokenCounts};

use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Check a policy file: syntax, fields, CEL expressions; prints every problem.
    Check {
        /// The policy file (YAML).
        file: PathBuf,
    },
    /// Show what a policy decides for one request, rule by rule (match, counter before
    /// and after), without sending anything.
    Test {
        /// The policy file (YAML).
        file: PathBuf,
        /// The request, as JSON: {"tenant": "acme", "key_id": "k1", "labels": {...},
        /// "provider": "openai", "route": "chat", "model": "gpt-4o", "headers": {...},
        /// "input_tokens": 1200, "max_output_tokens": 800, "time": "2026-11-30T10:00:00Z"}.
        #[arg(long)]
        request: PathBuf,
        /// Count the usage already recorded in the data directory (tables and event
        /// log), as `tally up` does on start; without it every counter starts at zero.
        #[arg(long)]
        history: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The request of `tally policy test --request`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    tenant: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    /// When the request happens (time-of-day rules, periods); default now.
    #[serde(default)]
    time: Option<String>,
}

pub(crate) fn run(global: &GlobalArgs, cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { file } => match PolicySet::load(&file) {
            Ok(set) => {
                for w in set.warnings() {
                    println!("warning: {w}");
                }
                for line in set.summary() {
                    println!("{line}");
                }
                println!("{}: {} rule(s), OK", file.display(), set.len());
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        PolicyCommand::Test {
            file,
            request,
            history,
            json,
        } => test(global, &file, &request, history, json),
    }
}

fn test(global: &GlobalArgs, file: &Path, request: &Path, history: bool, json: bool) -> Result<()> {
    let set = PolicySet::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = std::fs::read_to_string(request)
        .with_context(|| format!("policy.request: cannot read {}", request.display()))?;
    let req: TestRequest = serde_json::from_str(&text).with_context(|| {
        format!(
            "policy.request: {} is not a request (see `tally policy test --help` for the fields)",
            request.display()
        )
    })?;
    let cfg = super::load_config(global)?;
    let now = match &req.time {
        Some(t) => Timestamp::parse(t)
            .with_context(|| format!("policy.request: time `{t}` is not an RFC 3339 instant"))?,
        None => Timestamp::now(),
    };
    let prices = match &cfg.proxy.prices {
        Some(p) => PriceTable::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => PriceTable::built_in(),
    };
    let max_output = req
        .max_output_tokens
        .unwrap_or(cfg.proxy.default_max_output_tokens);
    let attrs = RequestAttrs {
        tenant: req.tenant.clone(),
        key_id: req.key_id.clone(),
        labels: req.labels.clone(),
        provider: req.provider.as_deref().map(Provider::parse),
        route: req.route.as_deref().map(Route::parse),
        model: req.model.clone(),
        headers: req.headers.clone(),
        estimated_input_tokens: req.input_tokens,
        max_output_tokens: max_output,
        estimated_cost_micros: req.model.as_deref().and_then(|m| {
            let tokens = TokenCounts {
                input_tokens: req.input_tokens,
                output_tokens: max_output,
                ..TokenCounts::default()
            };
            prices.cost_micros(m, &tokens, false)
        }),
    };
    let engine = PolicyEngine::new(set);
    if history {
        super::runtime()?.block_on(async {
            let queries = super::query::local_engine(&cfg).await?;
            super::up::rebuild_counters(&engine, &queries).await
        })?;
    }
    let header = EventHeader::new("policy-test", "req_policy_test", &attrs.tenant);
    let explanation = engine.explain(&attrs, &header, now);
    let text = if json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&to_json(&explanation))?
        )
    } else {
        render(&explanation)
    };
    // A reader that stops early (`| head`, `| grep -q`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn verdict_json(e: &Explanation) -> serde_json::Value {
    match &e.evaluation.verdict {
        Verdict::Allow(_) => serde_json::json!({"verdict": "allowed"}),
        Verdict::Deny {
            rule,
            status,
            message,
            retry_after_secs,
        } => serde_json::json!({
            "verdict": "denied",
            "rule": rule,
            "status": status,
            "message": message,
            "retry_after_secs": retry_after_secs,
        }),
    }
}

fn to_json(e: &Explanation) -> serde_json::Value {
    let mut v = verdict_json(e);
    v["rules"] = serde_json::json!(e.rules);
    v["decisions"] = serde_json::json!(e.evaluation.decisions);
    v
}

fn render(e: &Explanation) -> String {
    let mut rows = vec![
        [
            "rule", "kind", "mode", "match", "counter", "before", "amount", "after", "limit",
        ]
        .map(str::to_owned),
    ];
    let opt = |v: Option<i64>| v.map_or_else(String::new, |v| v.to_string());
    for t in &e.rules {
        let matched = match (t.matched, &t.error) {
            (_, Some(_)) => "error".to_owned(),
            (Some(m), None) => m.to_string(),
            (None, None) => "-".to_owned(),
        };
        rows.push([
            t.rule.clone(),
            t.kind.to_string(),
            t.mode.to_owned(),
            matched,
            t.counter_key.clone().unwrap_or_default(),
            opt(t.before),
            opt(t.amount),
            opt(t.after),
            opt(t.limit),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for t in e.rules.iter().filter(|t| t.error.is_some()) {
        out.push_str(&format!(
            "error in rule {}: {}\n",
            t.rule,
            t.error.as_deref().unwrap_or_default()
        ));
    }
    match &e.evaluation.verdict {
        Verdict::Allow(_) => out.push_str("\nverdict: allowed\n"),
        Verdict::Deny {
            rule,
            status,
            message,
            ..
        } => out.push_str(&format!(
            "\nverdict: denied ({status}) by rule `{rule}`: {message}\n"
        )),
    }
    for d in &e.evaluation.decisions {
        out.push_str(&format!(
            "decision: {} {} — {}\n",
            d.outcome, d.rule, d.reason
        ));
    }
    out
}
