//! A native evaluator for the common shapes of policy expressions, compiled once from the
//! CEL syntax tree: a request variable compared with a literal (`==`, `!=`, `<`, `<=`,
//! `>`, `>=`), `in` a list of literals, `startsWith`/`endsWith`/`contains`, `has(...)`,
//! joined by `&&`, `||` and `!`; and a plain variable or label as a counter key. It
//! answers only where it agrees with CEL by construction: any other shape is not compiled,
//! and a label or header that is missing (an error in CEL) makes it answer `None`, so the
//! caller runs the CEL program for that request. Must not change any result.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use chrono::{Datelike, Timelike};

use crate::policy::expr::Vars;

/// A boolean expression in native form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fast {
    Bool(bool),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    Str { var: StrVar, op: StrOp, lit: String },
    In { var: StrVar, set: Vec<String> },
    Has { map: MapVar, key: String },
    Int { var: IntVar, op: Cmp, lit: i64 },
}

/// A string-valued request variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrVar {
    Tenant,
    KeyId,
    Provider,
    Route,
    Model,
    Label(String),
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapVar {
    Labels,
    Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrOp {
    Eq,
    Ne,
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntVar {
    InputTokens,
    MaxOutputTokens,
    Hour,
    Weekday,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn of(func: &str) -> Option<Cmp> {
        Some(match func {
            "_<_" => Cmp::Lt,
            "_<=_" => Cmp::Le,
            "_>_" => Cmp::Gt,
            "_>=_" => Cmp::Ge,
            "_==_" => Cmp::Eq,
            "_!=_" => Cmp::Ne,
            _ => return None,
        })
    }

    /// `a op b` written as `b op' a`.
    fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            other => other,
        }
    }

    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

fn string_lit(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn int_lit(e: &IdedExpr) -> Option<i64> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(*i.inner()),
        _ => None,
    }
}

fn map_var(e: &IdedExpr) -> Option<MapVar> {
    match &e.expr {
        Expr::Ident(n) if n == "labels" => Some(MapVar::Labels),
        Expr::Ident(n) if n == "headers" => Some(MapVar::Headers),
        _ => None,
    }
}

fn int_var(e: &IdedExpr) -> Option<IntVar> {
    let Expr::Ident(n) = &e.expr else { return None };
    Some(match n.as_str() {
        "input_tokens" => IntVar::InputTokens,
        "max_output_tokens" => IntVar::MaxOutputTokens,
        "hour" => IntVar::Hour,
        "weekday" => IntVar::Weekday,
        _ => return None,
    })
}

/// A string variable: `tenant`, `model`…, `labels.team`, `labels["team"]`,
/// `headers["x-user"]`.
pub(crate) fn string_path(e: &IdedExpr) -> Option<StrVar> {
    match &e.expr {
        Expr::Ident(n) => Some(match n.as_str() {
            "tenant" => StrVar::Tenant,
            "key_id" => StrVar::KeyId,
            "provider" => StrVar::Provider,
            "route" => StrVar::Route,
            "model" => StrVar::Model,
            _ => return None,
        }),
        Expr::Select(sel) if !sel.test => match map_var(&sel.operand)? {
            MapVar::Labels => Some(StrVar::Label(sel.field.clone())),
            MapVar::Headers => Some(StrVar::Header(sel.field.clone())),
        },
        Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() => {
            let [map, key] = c.args.as_slice() else {
                return None;
            };
            let key = string_lit(key)?.to_owned();
            match map_var(map)? {
                MapVar::Labels => Some(StrVar::Label(key)),
                MapVar::Headers => Some(StrVar::Header(key)),
            }
        }
        _ => None,
    }
}

impl StrVar {
    /// The value, or `None` for a missing label or header (an error in CEL).
    pub(crate) fn get<'v>(&self, v: &'v Vars) -> Option<&'v str> {
        match self {
            StrVar::Tenant => Some(&v.tenant),
            StrVar::KeyId => Some(&v.key_id),
            StrVar::Provider => Some(&v.provider),
            StrVar::Route => Some(&v.route),
            StrVar::Model => Some(&v.model),
            StrVar::Label(k) => v.labels.get(k).map(String::as_str),
            StrVar::Header(k) => v.headers.get(k).map(String::as_str),
        }
    }
}

impl Fast {
    /// The native form of `e`, if it has one of the shapes above.
    pub(crate) fn compile(e: &IdedExpr) -> Option<Fast> {
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Bool(*b.inner())),
            Expr::Select(sel) if sel.test => Some(Fast::Has {
                map: map_var(&sel.operand)?,
                key: sel.field.clone(),
            }),
            Expr::Call(c) => Self::call(c),
            _ => None,
        }
    }

    fn call(c: &cel::common::ast::CallExpr) -> Option<Fast> {
        if let Some(target) = &c.target {
            let op = match c.func_name.as_str() {
                "startsWith" => StrOp::StartsWith,
                "endsWith" => StrOp::EndsWith,
                "contains" => StrOp::Contains,
                _ => return None,
            };
            let [arg] = c.args.as_slice() else {
                return None;
            };
            return Some(Fast::Str {
                var: string_path(target)?,
                op,
                lit: string_lit(arg)?.to_owned(),
            });
        }
        match (c.func_name.as_str(), c.args.as_slice()) {
            ("_&&_", [a, b]) => Some(Fast::And(
                Box::new(Self::compile(a)?),
                Box::new(Self::compile(b)?),
            )),
            ("_||_", [a, b]) => Some(Fast::Or(
                Box::new(Self::compile(a)?),
                Box::new(Self::compile(b)?),
            )),
            ("!_", [a]) => Some(Fast::Not(Box::new(Self::compile(a)?))),
            ("@in", [a, list]) => {
                let Expr::List(l) = &list.expr else {
                    return None;
                };
                let set = l
                    .elements
                    .iter()
                    .map(|e| string_lit(e).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?;
                Some(Fast::In {
                    var: string_path(a)?,
                    set,
                })
            }
            (f, [a, b]) => {
                let cmp = Cmp::of(f)?;
                if let (Some(var), Some(lit)) = (int_var(a), int_lit(b)) {
                    return Some(Fast::Int { var, op: cmp, lit });
                }
                if let (Some(lit), Some(var)) = (int_lit(a), int_var(b)) {
                    return Some(Fast::Int {
                        var,
                        op: cmp.flipped(),
                        lit,
                    });
                }
                let op = match cmp {
                    Cmp::Eq => StrOp::Eq,
                    Cmp::Ne => StrOp::Ne,
                    _ => return None,
                };
                let (var, lit) = match (string_path(a), string_lit(b)) {
                    (Some(v), Some(l)) => (v, l),
                    _ => (string_path(b)?, string_lit(a)?),
                };
                Some(Fast::Str {
                    var,
                    op,
                    lit: lit.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The value, or `None` when CEL must decide (a missing label or header).
    pub(crate) fn eval(&self, v: &Vars) -> Option<bool> {
        match self {
            Fast::Bool(b) => Some(*b),
            // CEL's logical operators absorb an error on one side when the other decides.
            Fast::And(a, b) => match a.eval(v) {
                Some(false) => Some(false),
                left => match (left, b.eval(v)?) {
                    (_, false) => Some(false),
                    (Some(true), true) => Some(true),
                    _ => None,
                },
            },
            Fast::Or(a, b) => match a.eval(v) {
                Some(true) => Some(true),
                left => match (left, b.eval(v)?) {
                    (_, true) => Some(true),
                    (Some(false), false) => Some(false),
                    _ => None,
                },
            },
            Fast::Not(a) => a.eval(v).map(|b| !b),
            Fast::Str { var, op, lit } => {
                let s = var.get(v)?;
                Some(match op {
                    StrOp::Eq => s == lit,
                    StrOp::Ne => s != lit,
                    StrOp::StartsWith => s.starts_with(lit.as_str()),
                    StrOp::EndsWith => s.ends_with(lit.as_str()),
                    StrOp::Contains => s.contains(lit.as_str()),
                })
            }
            Fast::In { var, set } => {
                let s = var.get(v)?;
                Some(set.iter().any(|x| x == s))
            }
            Fast::Has { map, key } => Some(match map {
                MapVar::Labels => v.labels.contains_key(key),
                MapVar::Headers => v.headers.contains_key(key),
            }),
            Fast::Int { var, op, lit } => {
                let value = match var {
                    IntVar::InputTokens => v.input_tokens,
                    IntVar::MaxOutputTokens => v.max_output_tokens,
                    IntVar::Hour => i64::from(v.now.to_datetime().hour()),
                    IntVar::Weekday => {
                        i64::from(v.now.to_datetime().weekday().num_days_from_sunday())
                    }
                };
                Some(op.holds(value, *lit))
            }
        }
    }
}
