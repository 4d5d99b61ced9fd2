//! The policy file: YAML types, validation into compiled rules, and the problems a user
//! sees from `tally policy check` (each with a stable `policy.*` code, the rule's name
//! and a line number). Owns the file format and every default; must not keep counters or
//! decide requests.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono_tz::Tz;
use serde::Deserialize;
use tally_events::{CounterUnit, RuleKind};

use crate::policy::expr::{CelEnv, CompileError, CompiledExpr, NOT_IN_HISTORY, VARIABLES, Want};
use crate::policy::period::{Period, format_window, parse_tz, parse_window};
use crate::policy::usage_cap::{format_count, format_usd};

/// Largest dollar cap accepted (a typo guard): $1 billion.
const MAX_USD_MICROS: i64 = 1_000_000_000 * 1_000_000;

/// One thing wrong (or suspicious) in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Stable code, e.g. `policy.bad_limit`; warnings start with `policy.warn.`.
    pub code: &'static str,
    /// The file, when loaded from one.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known (YAML errors).
    pub column: Option<usize>,
    /// The rule concerned, when there is one.
    pub rule: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code)?;
        // `file:line:column: ` like a compiler, or `line 3, column 5: ` without a file.
        match (&self.file, self.line, self.column) {
            (Some(file), Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: ")?,
            (Some(file), Some(l), None) => write!(f, "{file}:{l}: ")?,
            (Some(file), None, _) => write!(f, "{file}: ")?,
            (None, Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (None, Some(l), None) => write!(f, "line {l}: ")?,
            (None, None, _) => {}
        }
        if let Some(r) = &self.rule {
            write!(f, "rule `{r}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy.read: cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or does not have the expected shape.
    #[error("{0}")]
    Yaml(Problem),
    /// The file parsed but has problems; all of them are listed.
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
}

fn render(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("policy.invalid: {} problems in the policy file", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

impl PolicyError {
    /// The stable code of the error (of its first problem when there are several).
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Read { .. } => "policy.read",
            PolicyError::Yaml(p) => p.code,
            PolicyError::Invalid(ps) => match ps.as_slice() {
                [one] => one.code,
                _ => "policy.invalid",
            },
        }
    }

    /// Every problem found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Yaml(p) => std::slice::from_ref(p),
            PolicyError::Invalid(ps) => ps,
        }
    }

    fn with_file(mut self, file: &str) -> Self {
        match &mut self {
            PolicyError::Read { .. } => {}
            PolicyError::Yaml(p) => p.file = Some(file.to_owned()),
            PolicyError::Invalid(ps) => {
                for p in ps {
                    p.file = Some(file.to_owned());
                }
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------------
// YAML shapes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    emit_allow_decisions: bool,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    match_: Option<String>,
    action: RawAction,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    on_error: Option<OnError>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    unit: Option<RawUnit>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    limit_usd: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    limit_tokens: Option<i64>,
    #[serde(default)]
    period: Option<Period>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    on_exceed: Option<OnExceed>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
enum RawAction {
    #[serde(rename = "deny")]
    Deny,
    #[serde(rename = "allow")]
    Allow,
    #[serde(rename = "rate-limit", alias = "rate_limit")]
    RateLimit,
    #[serde(rename = "usage-cap", alias = "usage_cap")]
    UsageCap,
}

impl fmt::Display for RawAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawAction::Deny => "deny",
            RawAction::Allow => "allow",
            RawAction::RateLimit => "rate-limit",
            RawAction::UsageCap => "usage-cap",
        })
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum RawUnit {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
}

/// Whether a rule decides (`enforce`) or only records what it would have decided.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// What happens when a rule cannot be evaluated for a request.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnError {
    FailOpen,
    #[default]
    FailClosed,
}

/// Rate-limit algorithm.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Algorithm {
    #[default]
    SlidingWindow,
    TokenBucket,
}

/// What a usage cap does to a stream that would take it past its limit.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnExceed {
    #[default]
    Finish,
    Cut,
}

// ---------------------------------------------------------------------------------------
// Compiled rules

/// What a limit or cap counts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Unit {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    UsdMicros,
}

impl Unit {
    pub(crate) fn counter_unit(self) -> CounterUnit {
        match self {
            Unit::Requests => CounterUnit::Requests,
            Unit::Tokens => CounterUnit::Tokens,
            Unit::InputTokens => CounterUnit::InputTokens,
            Unit::OutputTokens => CounterUnit::OutputTokens,
            Unit::UsdMicros => CounterUnit::UsdMicros,
        }
    }

    /// An amount in this unit, for people: `$1.50`, `1,200 tokens`, `3 requests`.
    pub(crate) fn amount(self, n: i64) -> String {
        match self {
            Unit::UsdMicros => format_usd(n),
            Unit::Requests => format!("{} request{}", format_count(n), plural(n)),
            Unit::Tokens => format!("{} token{}", format_count(n), plural(n)),
            Unit::InputTokens => format!("{} input token{}", format_count(n), plural(n)),
            Unit::OutputTokens => format!("{} output token{}", format_count(n), plural(n)),
        }
    }

    fn from_raw(u: RawUnit) -> Self {
        match u {
            RawUnit::Requests => Unit::Requests,
            RawUnit::Tokens => Unit::Tokens,
            RawUnit::InputTokens => Unit::InputTokens,
            RawUnit::OutputTokens => Unit::OutputTokens,
        }
    }
}

fn plural(n: i64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A rate limit.
#[derive(Debug)]
pub(crate) struct RateLimit {
    pub(crate) limit: i64,
    pub(crate) unit: Unit,
    pub(crate) window_us: i64,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: Option<CompiledExpr>,
}

/// A usage cap over a calendar period.
#[derive(Debug)]
pub(crate) struct UsageCap {
    pub(crate) limit: i64,
    pub(crate) unit: Unit,
    pub(crate) period: Period,
    pub(crate) tz: Tz,
    pub(crate) key: Option<CompiledExpr>,
    pub(crate) on_exceed: OnExceed,
}

/// What a rule does when it matches.
#[derive(Debug)]
pub(crate) enum Action {
    Deny,
    Allow,
    RateLimit(RateLimit),
    UsageCap(UsageCap),
}

/// A validated, compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) match_: Option<CompiledExpr>,
    pub(crate) action: Action,
    pub(crate) mode: Mode,
    pub(crate) on_error: OnError,
    pub(crate) reason: Option<String>,
    pub(crate) status: u16,
}

impl Rule {
    pub(crate) fn kind(&self) -> RuleKind {
        match self.action {
            Action::Deny | Action::Allow => RuleKind::Access,
            Action::RateLimit(_) => RuleKind::RateLimit,
            Action::UsageCap(_) => RuleKind::UsageCap,
        }
    }

    /// The key expression of a limit or cap (`None`: the tenant).
    pub(crate) fn key_expr(&self) -> Option<&CompiledExpr> {
        match &self.action {
            Action::RateLimit(r) => r.key.as_ref(),
            Action::UsageCap(c) => c.key.as_ref(),
            Action::Deny | Action::Allow => None,
        }
    }

    /// `(limit, unit)` of a limit or cap.
    pub(crate) fn limit(&self) -> Option<(i64, Unit)> {
        match &self.action {
            Action::RateLimit(r) => Some((r.limit, r.unit)),
            Action::UsageCap(c) => Some((c.limit, c.unit)),
            Action::Deny | Action::Allow => None,
        }
    }

    fn summary(&self) -> String {
        let when = self
            .match_
            .as_ref()
            .map_or_else(|| "every request".to_owned(), |m| format!("`{}`", m.source));
        let by = |k: &Option<CompiledExpr>| {
            k.as_ref()
                .map_or_else(|| "tenant".to_owned(), |k| format!("`{}`", k.source))
        };
        let what = match &self.action {
            Action::Deny => format!("deny (status {})", self.status),
            Action::Allow => "allow".to_owned(),
            Action::RateLimit(r) => format!(
                "rate-limit {} per {} per {} ({})",
                r.unit.amount(r.limit),
                format_window(r.window_us),
                by(&r.key),
                match r.algorithm {
                    Algorithm::SlidingWindow => "sliding window",
                    Algorithm::TokenBucket => "token bucket",
                }
            ),
            Action::UsageCap(c) => format!(
                "usage-cap {} per {} ({}) per {}, on_exceed {}",
                c.unit.amount(c.limit),
                c.period,
                c.tz.name(),
                by(&c.key),
                match c.on_exceed {
                    OnExceed::Finish => "finish",
                    OnExceed::Cut => "cut",
                }
            ),
        };
        let mode = match self.mode {
            Mode::Enforce => "",
            Mode::Shadow => " [shadow]",
        };
        format!("{}: {what} when {when}{mode}", self.name)
    }
}

/// A loaded, validated policy: an ordered list of compiled rules.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub(crate) rules: Vec<Arc<Rule>>,
    pub(crate) emit_allow_decisions: bool,
    pub(crate) env: CelEnv,
    /// Union of the variables the rules read: only these are bound per request.
    pub(crate) vars: BTreeSet<String>,
    warnings: Vec<Problem>,
}

impl PolicySet {
    /// A policy with no rules: every request is allowed and nothing is counted.
    pub fn empty() -> Self {
        Self {
            rules: Vec::new(),
            emit_allow_decisions: false,
            env: CelEnv::new(),
            vars: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    /// Read and validate a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.with_file(&path.display().to_string()))
    }

    /// Validate a policy document: a mapping with `rules:` (and optionally
    /// `emit_allow_decisions:`), or a bare list of rules. Every problem is reported.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Yaml(yaml_problem(&e, None)))?;
        let raw = if value.is_sequence() {
            serde_yaml_ng::from_str::<Vec<RawRule>>(text).map(|rules| RawFile {
                emit_allow_decisions: false,
                rules,
            })
        } else {
            serde_yaml_ng::from_str::<RawFile>(text)
        }
        .map_err(|e| PolicyError::Yaml(yaml_problem(&e, Some(&value))))?;
        let env = CelEnv::new();
        let lines = name_lines(text, raw.rules.len());
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut seen = HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let mut ctx = Ctx {
                rule: r.name.clone(),
                line: lines.get(i).copied(),
                problems: &mut problems,
            };
            if !seen.insert(r.name.clone()) {
                ctx.push(
                    "policy.duplicate_name",
                    "another rule has the same name; names identify counters and appear in every decision, give each rule its own".into(),
                );
            }
            if let Some(rule) = compile_rule(&env, r, &mut ctx) {
                rules.push(Arc::new(rule));
            }
        }
        check_reachability(&rules, &lines, &mut warnings);
        for (i, rule) in rules.iter().enumerate() {
            let limited = rule.limit().is_some();
            let mut used: BTreeSet<&str> = BTreeSet::new();
            if let Some(m) = &rule.match_ {
                used.extend(m.vars.iter().map(String::as_str));
            }
            if let Some(k) = rule.key_expr() {
                used.extend(k.vars.iter().map(String::as_str));
            }
            let inexact: Vec<&str> = NOT_IN_HISTORY
                .iter()
                .copied()
                .filter(|v| used.contains(v))
                .collect();
            if limited && !inexact.is_empty() {
                warnings.push(Problem {
                    code: "policy.warn.not_rebuildable",
                    file: None,
                    line: lines.get(i).copied(),
                    column: None,
                    rule: Some(rule.name.to_string()),
                    message: format!(
                        "uses {} which usage events do not record: after a restart its counters are rebuilt with empty headers and real token counts instead, so they may differ from before",
                        inexact.join(", ")
                    ),
                });
            }
            if let Action::UsageCap(c) = &rule.action
                && c.on_exceed == OnExceed::Cut
                && c.unit == Unit::InputTokens
            {
                warnings.push(Problem {
                    code: "policy.warn.cut_never_applies",
                    file: None,
                    line: lines.get(i).copied(),
                    column: None,
                    rule: Some(rule.name.to_string()),
                    message: "on_exceed: cut has no effect on an input_tokens cap (input does not grow while a response streams)".into(),
                });
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        let mut vars = BTreeSet::new();
        for r in &rules {
            if let Some(m) = &r.match_ {
                vars.extend(m.vars.iter().cloned());
            }
            if let Some(k) = r.key_expr() {
                vars.extend(k.vars.iter().cloned());
            }
        }
        Ok(Self {
            rules,
            emit_allow_decisions: raw.emit_allow_decisions,
            env,
            vars,
            warnings,
        })
    }

    /// Things that are allowed but probably not what was meant (codes `policy.warn.*`).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names in file order.
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| &*r.name).collect()
    }

    /// Whether `allow` decisions are written for requests a limit or cap let through.
    pub fn emit_allow_decisions(&self) -> bool {
        self.emit_allow_decisions
    }

    /// One line per rule saying what it does, for `tally policy check`.
    pub fn summary(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.summary()).collect()
    }
}

struct Ctx<'a> {
    rule: String,
    line: Option<usize>,
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn push(&mut self, code: &'static str, message: String) {
        self.problems.push(Problem {
            code,
            file: None,
            line: self.line,
            column: None,
            rule: Some(self.rule.clone()),
            message,
        });
    }
}

/// The line of each rule's `name:` key, when they can be found unambiguously.
fn name_lines(text: &str, rules: usize) -> Vec<usize> {
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            let t = t.strip_prefix('-').map_or(t, str::trim_start);
            t.starts_with("name:")
        })
        .map(|(i, _)| i + 1)
        .collect();
    if found.len() == rules {
        found
    } else {
        Vec::new()
    }
}

/// A serde/YAML error as a problem: code by kind, position, and the rule's name when
/// the error is inside a rule.
fn yaml_problem(e: &serde_yaml_ng::Error, doc: Option<&serde_yaml_ng::Value>) -> Problem {
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) if e.location().is_some() => full[..i].to_owned(),
        _ => full.clone(),
    };
    let code = if msg.contains("unknown field") {
        "policy.unknown_field"
    } else if msg.contains("missing field") {
        "policy.missing_field"
    } else if msg.contains("unknown variant") {
        "policy.unknown_value"
    } else {
        "policy.yaml"
    };
    // `rules[3].limit: …` or `[3].limit: …` for a bare list.
    let index = msg
        .strip_prefix("rules[")
        .or_else(|| msg.strip_prefix('['))
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse::<usize>().ok());
    let rules = doc.and_then(|d| {
        if d.is_sequence() {
            d.as_sequence()
        } else {
            d.get("rules").and_then(|r| r.as_sequence())
        }
    });
    let rule = index
        .and_then(|i| rules.and_then(|rs| rs.get(i)))
        .and_then(|r| r.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let hint = if code == "policy.unknown_field" {
        "; check the spelling (docs/policies.md lists every field)"
    } else {
        ""
    };
    Problem {
        code,
        file: None,
        line: e.location().map(|l| l.line()),
        column: e.location().map(|l| l.column()),
        rule,
        message: format!("{msg}{hint}"),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn compile_expr(
    env: &CelEnv,
    field: &str,
    source: Option<&str>,
    want: Want,
    ctx: &mut Ctx<'_>,
) -> Option<CompiledExpr> {
    let source = source?;
    match CompiledExpr::compile(env, source, want) {
        Ok(e) => Some(e),
        Err(CompileError::Syntax(m)) => {
            ctx.push(
                "policy.expr_syntax",
                format!("`{field}` is not a valid CEL expression: {m}"),
            );
            None
        }
        Err(CompileError::UnknownVariable(vs)) => {
            let known: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
            ctx.push(
                "policy.expr_unknown_variable",
                format!(
                    "`{field}` uses unknown variable{} {}; the variables are {}",
                    if vs.len() == 1 { "" } else { "s" },
                    vs.iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    known.join(", ")
                ),
            );
            None
        }
        Err(CompileError::Type(m)) => {
            ctx.push(
                "policy.expr_type",
                format!("`{field}: {source}` is wrong: {m}"),
            );
            None
        }
    }
}

/// Convert a dollar amount (number or decimal string) to micro-USD exactly.
fn usd_micros(v: &serde_yaml_ng::Value) -> Result<i64, String> {
    let text = match v {
        serde_yaml_ng::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(x)) if x.is_finite() => {
                let scaled = x * 1e6;
                if (scaled - scaled.round()).abs() > 1e-3 {
                    return Err(format!(
                        "limit_usd `{x}` has more than 6 decimal places; amounts are kept in whole micro-dollars"
                    ));
                }
                format!("{x:.6}")
            }
            _ => n.to_string(),
        },
        serde_yaml_ng::Value::String(s) => s.trim().trim_start_matches('$').to_owned(),
        _ => return Err("limit_usd must be a number of dollars, e.g. 100.00".into()),
    };
    let bad = || format!("limit_usd `{text}` is not an amount of dollars; write e.g. 100 or 12.50");
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !whole.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(if text.starts_with('-') {
            format!("limit_usd must be greater than 0 (got {text})")
        } else {
            bad()
        });
    }
    if frac.len() > 6 {
        return Err(format!(
            "limit_usd `{text}` has more than 6 decimal places; amounts are kept in whole micro-dollars"
        ));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_micros: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    let micros = whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac_micros))
        .filter(|m| *m <= MAX_USD_MICROS)
        .ok_or_else(|| format!("limit_usd `{text}` is too large (at most $1,000,000,000)"))?;
    if micros <= 0 {
        return Err(format!("limit_usd must be greater than 0 (got {text})"));
    }
    Ok(micros)
}

fn compile_rule(env: &CelEnv, r: RawRule, ctx: &mut Ctx<'_>) -> Option<Rule> {
    let before = ctx.problems.len();
    if !valid_name(&r.name) {
        ctx.push(
            "policy.bad_name",
            "a rule name must be 1-128 characters of letters, digits, `-`, `_` or `.` (it is part of counter keys)".into(),
        );
    }
    let action = r.action;
    // Fields that only some actions take.
    let given: [(&str, bool, &[RawAction]); 12] = [
        (
            "status",
            r.status.is_some(),
            &[RawAction::Deny, RawAction::RateLimit, RawAction::UsageCap],
        ),
        ("limit", r.limit.is_some(), &[RawAction::RateLimit]),
        ("window", r.window.is_some(), &[RawAction::RateLimit]),
        ("algorithm", r.algorithm.is_some(), &[RawAction::RateLimit]),
        (
            "unit",
            r.unit.is_some(),
            &[RawAction::RateLimit, RawAction::UsageCap],
        ),
        (
            "key",
            r.key.is_some(),
            &[RawAction::RateLimit, RawAction::UsageCap],
        ),
        ("limit_usd", r.limit_usd.is_some(), &[RawAction::UsageCap]),
        (
            "limit_tokens",
            r.limit_tokens.is_some(),
            &[RawAction::UsageCap],
        ),
        ("period", r.period.is_some(), &[RawAction::UsageCap]),
        ("timezone", r.timezone.is_some(), &[RawAction::UsageCap]),
        ("on_exceed", r.on_exceed.is_some(), &[RawAction::UsageCap]),
        (
            "reason",
            r.reason.is_some(),
            &[
                RawAction::Deny,
                RawAction::Allow,
                RawAction::RateLimit,
                RawAction::UsageCap,
            ],
        ),
    ];
    for (field, present, allowed) in given {
        if present && !allowed.contains(&action) {
            let hint = match field {
                "limit" if action == RawAction::UsageCap => {
                    "; a usage-cap takes limit_usd or limit_tokens"
                }
                "limit_usd" | "limit_tokens" if action == RawAction::RateLimit => {
                    "; a rate-limit takes limit with unit and window (use usage-cap for budgets)"
                }
                "status" if action == RawAction::Allow => "; an allow rule never sends an error",
                _ => "",
            };
            ctx.push(
                "policy.field_not_allowed",
                format!("`{field}` does not apply to action {action}; remove it{hint}"),
            );
        }
    }
    let mode = r.mode.unwrap_or_default();
    if mode == Mode::Shadow && action == RawAction::Allow {
        ctx.push(
            "policy.bad_mode",
            "mode: shadow has no meaning for an allow rule (it never denies); remove it".into(),
        );
    }
    let default_status = match action {
        RawAction::Deny | RawAction::Allow => 403,
        RawAction::RateLimit | RawAction::UsageCap => 429,
    };
    let status = r.status.unwrap_or(default_status);
    if !(400..=599).contains(&status) {
        ctx.push(
            "policy.bad_status",
            format!("status {status} is not an error status; use 400-599 (403 and 429 are usual)"),
        );
    }
    if r.reason.as_deref().is_some_and(|s| s.trim().is_empty()) {
        ctx.push(
            "policy.bad_reason",
            "reason is empty; remove it or write a sentence".into(),
        );
    }
    let match_ = compile_expr(env, "match", r.match_.as_deref(), Want::Bool, ctx);
    let key = compile_expr(env, "key", r.key.as_deref(), Want::String, ctx);
    let act = match action {
        RawAction::Deny => Some(Action::Deny),
        RawAction::Allow => Some(Action::Allow),
        RawAction::RateLimit => {
            let limit = match r.limit {
                None => {
                    ctx.push(
                        "policy.missing_field",
                        "a rate-limit needs `limit:` (how many units per window)".into(),
                    );
                    None
                }
                Some(l) if l <= 0 => {
                    ctx.push(
                        "policy.bad_limit",
                        format!(
                            "limit must be greater than 0 (got {l}); to block, use action: deny"
                        ),
                    );
                    None
                }
                Some(l) => Some(l),
            };
            let window = match r.window.as_deref() {
                None => {
                    ctx.push(
                        "policy.missing_field",
                        "a rate-limit needs `window:` (e.g. 1m)".into(),
                    );
                    None
                }
                Some(w) => match parse_window(w) {
                    Ok(us) => Some(us),
                    Err(m) => {
                        ctx.push("policy.bad_duration", format!("window: {m}"));
                        None
                    }
                },
            };
            match (limit, window) {
                (Some(limit), Some(window_us)) => Some(Action::RateLimit(RateLimit {
                    limit,
                    unit: r.unit.map_or(Unit::Requests, Unit::from_raw),
                    window_us,
                    algorithm: r.algorithm.unwrap_or_default(),
                    key,
                })),
                _ => None,
            }
        }
        RawAction::UsageCap => {
            let limit = match (&r.limit_usd, r.limit_tokens) {
                (Some(_), Some(_)) => {
                    ctx.push(
                        "policy.bad_limit",
                        "give either limit_usd or limit_tokens, not both (use two rules for two caps)".into(),
                    );
                    None
                }
                (None, None) => {
                    ctx.push(
                        "policy.missing_field",
                        "a usage-cap needs `limit_usd:` (dollars) or `limit_tokens:`".into(),
                    );
                    None
                }
                (Some(usd), None) => {
                    if r.unit.is_some() {
                        ctx.push(
                            "policy.bad_unit",
                            "`unit` does not apply to a dollar cap (limit_usd); remove it".into(),
                        );
                    }
                    match usd_micros(usd) {
                        Ok(m) => Some((m, Unit::UsdMicros)),
                        Err(m) => {
                            ctx.push("policy.bad_limit", m);
                            None
                        }
                    }
                }
                (None, Some(t)) => {
                    let unit = match r.unit {
                        None | Some(RawUnit::Tokens) => Some(Unit::Tokens),
                        Some(RawUnit::InputTokens) => Some(Unit::InputTokens),
                        Some(RawUnit::OutputTokens) => Some(Unit::OutputTokens),
                        Some(RawUnit::Requests) => {
                            ctx.push(
                                "policy.bad_unit",
                                "a token cap counts tokens, input_tokens or output_tokens; to limit requests use a rate-limit".into(),
                            );
                            None
                        }
                    };
                    if t <= 0 {
                        ctx.push(
                            "policy.bad_limit",
                            format!("limit_tokens must be greater than 0 (got {t}); to block, use action: deny"),
                        );
                        None
                    } else {
                        unit.map(|u| (t, u))
                    }
                }
            };
            let period = r.period.or_else(|| {
                ctx.push(
                    "policy.missing_field",
                    "a usage-cap needs `period:` (hour, day or month)".into(),
                );
                None
            });
            let tz = match r.timezone.as_deref() {
                None => Some(Tz::UTC),
                Some(name) => match parse_tz(name) {
                    Ok(tz) => Some(tz),
                    Err(m) => {
                        ctx.push("policy.bad_timezone", m);
                        None
                    }
                },
            };
            match (limit, period, tz) {
                (Some((limit, unit)), Some(period), Some(tz)) => Some(Action::UsageCap(UsageCap {
                    limit,
                    unit,
                    period,
                    tz,
                    key,
                    on_exceed: r.on_exceed.unwrap_or_default(),
                })),
                _ => None,
            }
        }
    };
    if r.match_.is_some() && match_.is_none() {
        return None;
    }
    if ctx.problems.len() > before {
        return None;
    }
    Some(Rule {
        name: Arc::from(r.name.as_str()),
        match_,
        action: act?,
        mode,
        on_error: r.on_error.unwrap_or_default(),
        reason: r.reason.map(|s| s.trim().to_owned()),
        status,
    })
}

/// Warn about rules that can never apply because an enforced deny without a match (or
/// with `match: true`) denies every request and no allow rule comes before it.
fn check_reachability(rules: &[Arc<Rule>], lines: &[usize], warnings: &mut Vec<Problem>) {
    let blocker = rules.iter().position(|r| {
        matches!(r.action, Action::Deny)
            && r.mode == Mode::Enforce
            && r.match_.as_ref().is_none_or(|m| m.source.trim() == "true")
    });
    let Some(b) = blocker else { return };
    let allow_before = rules[..b].iter().any(|r| matches!(r.action, Action::Allow));
    if allow_before {
        // A deny-everything-else after allow rules is the allow-list pattern.
        return;
    }
    for (i, r) in rules.iter().enumerate().filter(|(i, _)| *i != b) {
        warnings.push(Problem {
            code: "policy.warn.unreachable",
            file: None,
            line: lines.get(i).copied(),
            column: None,
            rule: Some(r.name.to_string()),
            message: format!(
                "rule `{}` denies every request (no allow rule comes before it), so this rule never applies",
                rules[b].name
            ),
        });
    }
}
