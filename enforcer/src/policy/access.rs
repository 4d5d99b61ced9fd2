//! Access rules (`deny` / `allow`): how a matching rule steps the access decision, and
//! the sentences that explain access denials and rules that could not be evaluated.
//! Must not touch counters or build events.

use crate::policy::file::{Action, OnError, Rule};

/// What one access rule does to a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The rule does not apply.
    Pass,
    /// An `allow` matched: later access rules are skipped (limits still apply).
    Allowed,
    /// A `deny` matched, or the rule failed and fails closed.
    Denied(String),
}

/// Step the access decision with `rule`, given its match result.
pub(crate) fn step(rule: &Rule, matched: Result<bool, String>) -> Step {
    match (matched, &rule.action) {
        (Err(e), _) => match rule.on_error {
            OnError::FailOpen => Step::Pass,
            OnError::FailClosed => Step::Denied(error_reason(rule, &e)),
        },
        (Ok(false), _) => Step::Pass,
        (Ok(true), Action::Allow) => Step::Allowed,
        (Ok(true), _) => Step::Denied(deny_reason(rule)),
    }
}

/// Why a matching `deny` rule refused a request.
pub(crate) fn deny_reason(rule: &Rule) -> String {
    match (&rule.reason, &rule.match_) {
        (Some(r), _) => format!("{r} (policy rule `{}`)", rule.name),
        (None, Some(m)) => format!(
            "denied by policy rule `{}` because the request matches `{}`; ask your platform team if you need access",
            rule.name, m.source
        ),
        (None, None) => format!(
            "denied by policy rule `{}`, which refuses every request; ask your platform team if you need access",
            rule.name
        ),
    }
}

/// Why a rule that failed to evaluate refused a request (`on_error: fail_closed`).
pub(crate) fn error_reason(rule: &Rule, error: &str) -> String {
    format!(
        "policy rule `{}` could not be evaluated for this request ({error}); it fails closed, so the request is denied. Fix the rule, or set `on_error: fail_open` on it to let such requests through",
        rule.name
    )
}

/// Why an `allow` rule let a request through (for `emit_allow_decisions`).
pub(crate) fn allow_reason(rule: &Rule) -> String {
    match (&rule.reason, &rule.match_) {
        (Some(r), _) => format!("{r} (policy rule `{}`)", rule.name),
        (None, Some(m)) => format!(
            "allowed by policy rule `{}` because the request matches `{}`",
            rule.name, m.source
        ),
        (None, None) => format!("allowed by policy rule `{}`", rule.name),
    }
}
