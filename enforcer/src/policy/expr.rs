//! CEL expressions of policy rules: the shared environment (standard library plus the
//! strings extension), the request variables, compile-time checks (syntax, unknown
//! variables, result type against sample requests) and evaluation. Owns the variable
//! vocabulary; must not know about rules, counters or decisions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, ExecutionError, Program, Value};
use chrono::{Datelike, Timelike};
use tally_events::{FinishState, Timestamp, UsageEvent};

use crate::policy::RequestAttrs;
use crate::policy::fast::{self, Fast, StrVar};

/// Every variable an expression may use, with its CEL type, for error messages and docs.
pub(crate) const VARIABLES: &[(&str, &str)] = &[
    ("tenant", "string"),
    ("key_id", "string"),
    ("labels", "map(string, string)"),
    ("provider", "string"),
    ("route", "string"),
    ("model", "string"),
    ("headers", "map(string, string)"),
    ("input_tokens", "int"),
    ("max_output_tokens", "int"),
    ("hour", "int"),
    ("weekday", "int"),
    ("now", "timestamp"),
];

/// Variables whose value is not in a usage event: rules using them cannot be rebuilt
/// exactly from history.
pub(crate) const NOT_IN_HISTORY: &[&str] = &["headers", "input_tokens", "max_output_tokens"];

/// Identifiers CEL resolves by itself (type names), never request variables.
const BUILT_IN_IDENTS: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "timestamp",
    "duration",
    "strings",
];

/// The CEL environment every policy expression is compiled and run with.
#[derive(Clone)]
pub(crate) struct CelEnv(Arc<Env>);

impl fmt::Debug for CelEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CelEnv(stdlib + strings)")
    }
}

impl CelEnv {
    pub(crate) fn new() -> Self {
        let mut env = Env::stdlib();
        // Only fails on a duplicate declaration, which a fresh stdlib cannot have.
        if let Err(e) = env.add_extension(cel::extensions::strings) {
            tracing::warn!(error = %e, "CEL strings extension unavailable");
        }
        Self(Arc::new(env))
    }
}

/// What an expression must evaluate to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    Bool,
    String,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::Bool => "bool",
            Want::String => "string",
        }
    }
}

/// A compiled expression with its source and the variables it reads.
#[derive(Debug)]
pub(crate) struct CompiledExpr {
    pub(crate) source: String,
    program: Program,
    want: Want,
    pub(crate) vars: BTreeSet<String>,
    /// The native form of a boolean expression, when it has one (see `fast`).
    fast: Option<Fast>,
    /// The variable a string expression reads, when it is a plain path.
    fast_path: Option<StrVar>,
}

/// Why an expression could not be compiled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CompileError {
    Syntax(String),
    UnknownVariable(Vec<String>),
    Type(String),
}

/// A value for every variable, built once per request (or per historical usage event).
#[derive(Debug, Clone)]
pub(crate) struct Vars {
    pub(crate) tenant: String,
    pub(crate) key_id: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) provider: String,
    pub(crate) route: String,
    pub(crate) model: String,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) input_tokens: i64,
    pub(crate) max_output_tokens: i64,
    pub(crate) now: Timestamp,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Vars {
    /// The variables of a live request.
    pub(crate) fn from_request(req: &RequestAttrs, now: Timestamp) -> Self {
        Self {
            tenant: req.tenant.clone(),
            key_id: req.key_id.clone().unwrap_or_default(),
            labels: req.labels.clone(),
            provider: req
                .provider
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            route: req.route.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            model: req.model.clone().unwrap_or_default(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            input_tokens: to_i64(req.estimated_input_tokens),
            max_output_tokens: to_i64(req.max_output_tokens),
            now,
        }
    }

    /// The variables of a historical request, from its usage event: no headers; the
    /// real input and output tokens stand in for the estimate and the requested maximum.
    pub(crate) fn from_usage(u: &UsageEvent) -> Self {
        let h = &u.header;
        Self {
            tenant: h.tenant.clone(),
            key_id: h.api_key_id.clone().unwrap_or_default(),
            labels: h.labels.clone(),
            provider: h
                .provider
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            route: h.route.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            model: h
                .model_requested
                .clone()
                .or_else(|| h.model_served.clone())
                .unwrap_or_default(),
            headers: BTreeMap::new(),
            input_tokens: to_i64(u.tokens.input_tokens),
            max_output_tokens: to_i64(u.tokens.output_tokens),
            now: h.occurred_at,
        }
    }

    /// Whether a historical usage event stands for a request that was never admitted.
    pub(crate) fn was_denied(u: &UsageEvent) -> bool {
        u.finish_state == FinishState::Denied
    }

    fn string_map(m: &BTreeMap<String, String>) -> Value {
        let map: HashMap<String, String> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Value::from(map)
    }

    fn value(&self, name: &str) -> Option<Value> {
        let utc = self.now.to_datetime();
        Some(match name {
            "tenant" => Value::from(self.tenant.as_str()),
            "key_id" => Value::from(self.key_id.as_str()),
            "labels" => Self::string_map(&self.labels),
            "provider" => Value::from(self.provider.as_str()),
            "route" => Value::from(self.route.as_str()),
            "model" => Value::from(self.model.as_str()),
            "headers" => Self::string_map(&self.headers),
            "input_tokens" => Value::Int(self.input_tokens),
            "max_output_tokens" => Value::Int(self.max_output_tokens),
            "hour" => Value::Int(i64::from(utc.hour())),
            "weekday" => Value::Int(i64::from(utc.weekday().num_days_from_sunday())),
            "now" => Value::Timestamp(utc.fixed_offset()),
            _ => return None,
        })
    }
}

/// The variables of one request for a set of expressions: read directly by the native
/// evaluator, and bound into a CEL context only when some expression needs CEL.
pub(crate) struct Activation<'a> {
    env: &'a CelEnv,
    vars: &'a Vars,
    used: &'a BTreeSet<String>,
    ctx: std::cell::OnceCell<Context<'a, 'a>>,
}

impl fmt::Debug for Activation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Activation")
    }
}

impl<'a> Activation<'a> {
    /// Bind the variables in `used` (the union over the rules to run).
    pub(crate) fn new(env: &'a CelEnv, vars: &'a Vars, used: &'a BTreeSet<String>) -> Self {
        Self {
            env,
            vars,
            used,
            ctx: std::cell::OnceCell::new(),
        }
    }

    fn ctx(&self) -> &Context<'a, 'a> {
        self.ctx.get_or_init(|| {
            let mut ctx = Context::with_env(self.env.0.clone());
            for name in self.used {
                if let Some(v) = self.vars.value(name) {
                    ctx.add_variable_from_value(name.clone(), v);
                }
            }
            ctx
        })
    }
}

/// A runtime failure of an expression, as a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError(pub(crate) String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!(
            "no such key `{k}` (use has(labels.{k}) or labels[\"{k}\"] guarded by `\"{k}\" in labels` when the key may be missing)"
        ),
        other => other.to_string(),
    }
}

impl CompiledExpr {
    /// Compile `source`, check its variables, and run it against sample requests to
    /// check that it returns `want`.
    pub(crate) fn compile(env: &CelEnv, source: &str, want: Want) -> Result<Self, CompileError> {
        let program = env.0.compile(source).map_err(|e| {
            let text = e.to_string().replace("<input>", "expression");
            let text = text.trim().trim_start_matches("ERROR: ");
            // Indent the source excerpt and caret lines under the problem.
            CompileError::Syntax(text.replace('\n', "\n      "))
        })?;
        let mut free = BTreeSet::new();
        let mut keys = BTreeMap::new();
        walk(program.expression(), &mut Vec::new(), &mut free, &mut keys);
        let known: BTreeSet<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
        let unknown: Vec<String> = free
            .iter()
            .filter(|v| !known.contains(v.as_str()) && !BUILT_IN_IDENTS.contains(&v.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(CompileError::UnknownVariable(unknown));
        }
        let vars: BTreeSet<String> = free
            .into_iter()
            .filter(|v| known.contains(v.as_str()))
            .collect();
        let mut compiled = Self {
            source: source.to_owned(),
            fast: (want == Want::Bool)
                .then(|| Fast::compile(program.expression()))
                .flatten(),
            fast_path: (want == Want::String)
                .then(|| fast::string_path(program.expression()))
                .flatten(),
            program,
            want,
            vars,
        };
        for sample in samples(&keys) {
            let act = Activation::new(env, &sample, &compiled.vars);
            let cel = compiled.program.execute(act.ctx());
            // The native form must agree with CEL wherever it answers; if a sample ever
            // shows otherwise, CEL alone runs this expression.
            let agrees = match (&cel, &compiled.fast, &compiled.fast_path) {
                (Ok(Value::Bool(b)), Some(f), _) => f.eval(&sample).is_none_or(|n| n == *b),
                (Ok(Value::String(s)), _, Some(p)) => {
                    p.get(&sample).is_none_or(|n| n == s.as_str())
                }
                (Err(_), Some(f), _) => f.eval(&sample).is_none(),
                (Err(_), _, Some(p)) => p.get(&sample).is_none(),
                _ => true,
            };
            if !agrees {
                tracing::debug!(
                    source,
                    "native evaluation disagrees with CEL on a sample; using CEL"
                );
                compiled.fast = None;
                compiled.fast_path = None;
            }
            match cel {
                Ok(v) => compiled.check_type(&v).map_err(CompileError::Type)?,
                Err(e) if data_dependent(&e) => {}
                Err(e) => {
                    return Err(CompileError::Type(format!(
                        "it fails on a sample request: {}",
                        describe(&e)
                    )));
                }
            }
        }
        Ok(compiled)
    }

    fn check_type(&self, v: &Value) -> Result<(), String> {
        let ok = matches!(
            (self.want, v),
            (Want::Bool, Value::Bool(_)) | (Want::String, Value::String(_))
        );
        if ok {
            Ok(())
        } else {
            let got = v.type_of().to_string();
            let article = if got.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            let hint = if self.want == Want::String {
                " (convert it with string(...))"
            } else {
                ""
            };
            Err(format!(
                "it must return a {} but returns {article} {got} on a sample request{hint}",
                self.want.name(),
            ))
        }
    }

    /// Evaluate to a bool.
    pub(crate) fn eval_bool(&self, act: &Activation<'_>) -> Result<bool, EvalError> {
        if let Some(b) = self.fast.as_ref().and_then(|f| f.eval(act.vars)) {
            return Ok(b);
        }
        match self.execute(act)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.wrong_type(&v, "bool")),
        }
    }

    /// Evaluate to a string.
    pub(crate) fn eval_string(&self, act: &Activation<'_>) -> Result<String, EvalError> {
        if let Some(s) = self.fast_path.as_ref().and_then(|p| p.get(act.vars)) {
            return Ok(s.to_owned());
        }
        match self.execute(act)? {
            Value::String(s) => Ok(s.as_str().to_owned()),
            v => Err(self.wrong_type(&v, "string")),
        }
    }

    fn execute(&self, act: &Activation<'_>) -> Result<Value, EvalError> {
        self.program
            .execute(act.ctx())
            .map_err(|e| EvalError(format!("`{}` failed: {}", self.source, describe(&e))))
    }

    fn wrong_type(&self, v: &Value, expected: &str) -> EvalError {
        EvalError(format!(
            "`{}` returned a {} instead of a {expected}",
            self.source,
            v.type_of()
        ))
    }

    /// Whether the source is a plain variable or field path (`key_id`, `labels.team`),
    /// usable as a readable counter-key label.
    pub(crate) fn is_simple_path(&self) -> bool {
        let s = self.source.trim();
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    }
}

/// Errors that depend on the request's data (a missing label, a division by a zero
/// count), so a sample request hitting them says nothing about the expression.
fn data_dependent(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::NoSuchKey(_)
            | ExecutionError::IndexOutOfBounds(_)
            | ExecutionError::DivisionByZero(_)
            | ExecutionError::RemainderByZero(_)
            | ExecutionError::Overflow(..)
            | ExecutionError::FunctionError { .. }
    )
}

/// Two sample requests: one with empty strings and zeros, one with non-empty values.
/// Every `labels`/`headers` key the expression names literally is present in both.
fn samples(keys: &BTreeMap<String, BTreeSet<String>>) -> [Vars; 2] {
    let map = |var: &str, value: &str| -> BTreeMap<String, String> {
        keys.get(var)
            .map(|ks| ks.iter().map(|k| (k.clone(), value.to_owned())).collect())
            .unwrap_or_default()
    };
    let now = Timestamp::from_micros(1_764_064_800_000_000);
    [
        Vars {
            tenant: String::new(),
            key_id: String::new(),
            labels: map("labels", ""),
            provider: String::new(),
            route: String::new(),
            model: String::new(),
            headers: map("headers", ""),
            input_tokens: 0,
            max_output_tokens: 0,
            now,
        },
        Vars {
            tenant: "sample-tenant".into(),
            key_id: "sample-key".into(),
            labels: map("labels", "sample"),
            provider: "openai".into(),
            route: "chat".into(),
            model: "gpt-4o-mini".into(),
            headers: map("headers", "sample"),
            input_tokens: 1_000,
            max_output_tokens: 1_000,
            now,
        },
    ]
}

/// Collect free identifiers (not bound by a comprehension) and the literal keys read
/// from `labels` and `headers` (`labels.team`, `headers["x-user"]`).
fn walk(
    e: &IdedExpr,
    bound: &mut Vec<String>,
    free: &mut BTreeSet<String>,
    keys: &mut BTreeMap<String, BTreeSet<String>>,
) {
    match &e.expr {
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.iter().any(|b| b == name) {
                free.insert(name.clone());
            }
        }
        Expr::Select(sel) => {
            if let Expr::Ident(var) = &sel.operand.expr
                && (var == "labels" || var == "headers")
            {
                keys.entry(var.clone())
                    .or_default()
                    .insert(sel.field.clone());
            }
            walk(&sel.operand, bound, free, keys);
        }
        Expr::Call(call) => {
            if call.func_name == "_[_]"
                && let [
                    target,
                    IdedExpr {
                        expr: Expr::Literal(lit),
                        ..
                    },
                ] = call.args.as_slice()
                && let (Expr::Ident(var), cel::common::ast::LiteralValue::String(k)) =
                    (&target.expr, lit)
                && (var == "labels" || var == "headers")
            {
                keys.entry(var.clone())
                    .or_default()
                    .insert(k.inner().to_owned());
            }
            if let Some(t) = &call.target {
                walk(t, bound, free, keys);
            }
            for a in &call.args {
                walk(a, bound, free, keys);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, free, keys);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            walk(&c.accu_init, bound, free, keys);
            walk(&c.loop_cond, bound, free, keys);
            walk(&c.loop_step, bound, free, keys);
            walk(&c.result, bound, free, keys);
            bound.truncate(before);
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, bound, free, keys);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                walk_entry(&entry.expr, bound, free, keys);
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                walk_entry(&entry.expr, bound, free, keys);
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entry(
    entry: &EntryExpr,
    bound: &mut Vec<String>,
    free: &mut BTreeSet<String>,
    keys: &mut BTreeMap<String, BTreeSet<String>>,
) {
    match entry {
        EntryExpr::StructField(f) => walk(&f.value, bound, free, keys),
        EntryExpr::MapEntry(m) => {
            walk(&m.key, bound, free, keys);
            walk(&m.value, bound, free, keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> CelEnv {
        CelEnv::new()
    }

    fn vars() -> Vars {
        let mut v = samples(&BTreeMap::new())[1].clone();
        v.labels.insert("team".into(), "ml".into());
        v.headers.insert("x-user".into(), "ann".into());
        v
    }

    #[test]
    fn compiles_and_evaluates() {
        let env = env();
        let e = CompiledExpr::compile(
            &env,
            "tenant == 'sample-tenant' && labels.team == 'ml' && model.startsWith('gpt')",
            Want::Bool,
        )
        .unwrap();
        assert_eq!(
            e.vars.iter().map(String::as_str).collect::<Vec<_>>(),
            ["labels", "model", "tenant"]
        );
        let v = vars();
        let act = Activation::new(&env, &v, &e.vars);
        assert_eq!(e.eval_bool(&act), Ok(true));
        let k =
            CompiledExpr::compile(&env, "headers['x-user'] + '/' + model", Want::String).unwrap();
        let act = Activation::new(&env, &v, &k.vars);
        assert_eq!(k.eval_string(&act).as_deref(), Ok("ann/gpt-4o-mini"));
        assert!(!k.is_simple_path());
        assert!(
            CompiledExpr::compile(&env, "labels.team", Want::String)
                .unwrap()
                .is_simple_path()
        );
    }

    #[test]
    fn comprehension_variables_are_not_unknown() {
        let e = CompiledExpr::compile(
            &env(),
            "labels.exists(k, k == 'team') && [1, 2].all(x, x < input_tokens + 5)",
            Want::Bool,
        );
        assert!(e.is_ok(), "{e:?}");
        let e = CompiledExpr::compile(
            &env(),
            "hour >= 9 && weekday < 6 && now > timestamp('2020-01-01T00:00:00Z')",
            Want::Bool,
        );
        assert!(e.is_ok(), "{e:?}");
    }

    #[test]
    fn compile_errors() {
        let env = env();
        assert!(matches!(
            CompiledExpr::compile(&env, "tenant == ", Want::Bool),
            Err(CompileError::Syntax(_))
        ));
        assert_eq!(
            CompiledExpr::compile(&env, "tenat == 'a' || user == 'b'", Want::Bool).err(),
            Some(CompileError::UnknownVariable(vec![
                "tenat".into(),
                "user".into()
            ]))
        );
        assert!(matches!(
            CompiledExpr::compile(&env, "tenant", Want::Bool),
            Err(CompileError::Type(_))
        ));
        assert!(matches!(
            CompiledExpr::compile(&env, "input_tokens > 'x'", Want::Bool),
            Err(CompileError::Type(_))
        ));
        assert!(matches!(
            CompiledExpr::compile(&env, "tenant == 'a'", Want::String),
            Err(CompileError::Type(_))
        ));
        assert!(matches!(
            CompiledExpr::compile(&env, "frobnicate(tenant)", Want::String),
            Err(CompileError::Type(_))
        ));
    }

    #[test]
    fn missing_label_is_a_runtime_error_not_a_load_error() {
        let env = env();
        let e = CompiledExpr::compile(&env, "labels.team == 'ml'", Want::Bool).unwrap();
        let mut v = vars();
        v.labels.clear();
        let act = Activation::new(&env, &v, &e.vars);
        let err = e.eval_bool(&act).unwrap_err();
        assert!(err.0.contains("has(labels.team)"), "{err}");
    }

    /// The native evaluator agrees with CEL on every expression shape it compiles, for
    /// requests with and without the labels and headers the expressions read.
    #[test]
    fn native_evaluation_agrees_with_cel() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let env = CelEnv::new();
        let sources = [
            "tenant == 'acme'",
            "'acme' != tenant",
            "tenant == 'acme' && model.startsWith('gpt-4o')",
            "model in ['gpt-4o-mini', 'claude-haiku-4-5'] || key_id == 'k1'",
            "!(route == 'chat') || provider.endsWith('ai')",
            "labels.team == 'ml'",
            "has(labels.team) && labels.team == 'ml'",
            "labels['team'] != 'ml' && true",
            "headers['x-user'].contains('an')",
            "hour < 6 || 22 <= hour",
            "weekday == 0 || weekday == 6",
            "input_tokens > 1000 && max_output_tokens <= 4096",
            "false || has(headers.x_user)",
            "labels.team == 'ml' || tenant == 'acme'",
            "tenant == 'acme' || labels.team == 'ml'",
            "labels.team == 'ml' && tenant == 'nope'",
        ];
        let exprs: Vec<CompiledExpr> = sources
            .iter()
            .map(|s| CompiledExpr::compile(&env, s, Want::Bool).unwrap())
            .collect();
        assert!(
            exprs.iter().all(|e| e.fast.is_some()),
            "every shape above compiles natively"
        );
        let key = CompiledExpr::compile(&env, "labels.team", Want::String).unwrap();
        assert!(key.fast_path.is_some());
        let pick = |xs: &'static [&'static str]| proptest::sample::select(xs.to_vec());
        let strategy = (
            pick(&["acme", "beta", ""]),
            pick(&["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", ""]),
            pick(&["k1", "k2"]),
            pick(&["chat", "embeddings"]),
            pick(&["openai", "anthropic"]),
            proptest::option::of(pick(&["ml", "web"])),
            proptest::option::of(pick(&["ann", "bob"])),
            0i64..3000,
            0i64..8000,
            0i64..(7 * 86_400),
        );
        let mut runner = TestRunner::new(Config::with_cases(512));
        runner
            .run(
                &strategy,
                |(tenant, model, key_id, route, provider, team, user, input, output, secs)| {
                    let mut labels = BTreeMap::new();
                    if let Some(t) = team {
                        labels.insert("team".to_owned(), t.to_owned());
                    }
                    let mut headers = BTreeMap::new();
                    if let Some(u) = user {
                        headers.insert("x-user".to_owned(), u.to_owned());
                    }
                    let v = Vars {
                        tenant: tenant.into(),
                        key_id: key_id.into(),
                        labels,
                        provider: provider.into(),
                        route: route.into(),
                        model: model.into(),
                        headers,
                        input_tokens: input,
                        max_output_tokens: output,
                        now: Timestamp::from_micros(1_764_000_000_000_000 + secs * 1_000_000),
                    };
                    for e in exprs.iter().chain([&key]) {
                        let act = Activation::new(&env, &v, &e.vars);
                        let cel = e.program.execute(act.ctx());
                        match (&e.fast, &e.fast_path, &cel) {
                            (Some(f), _, Ok(Value::Bool(b))) => {
                                prop_assert!(f.eval(&v).is_none_or(|n| n == *b), "{}", e.source);
                            }
                            (Some(f), _, Err(_)) => {
                                prop_assert!(f.eval(&v).is_none(), "{}", e.source)
                            }
                            (_, Some(p), Ok(Value::String(s))) => {
                                prop_assert_eq!(p.get(&v), Some(s.as_str()));
                            }
                            (_, Some(p), Err(_)) => prop_assert!(p.get(&v).is_none()),
                            other => {
                                prop_assert!(false, "unexpected {:?} for {}", other.2, e.source)
                            }
                        }
                        // And through the public paths, which fall back to CEL.
                        if e.want == Want::Bool {
                            prop_assert_eq!(
                                e.eval_bool(&act).ok(),
                                cel.as_ref().ok().and_then(|c| match c {
                                    Value::Bool(b) => Some(*b),
                                    _ => None,
                                })
                            );
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
