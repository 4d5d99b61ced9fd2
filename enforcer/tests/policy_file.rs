//! Policy file validation: what `tally policy check` reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tally_enforcer::policy::{PolicyError, PolicySet};

fn problems(yaml: &str) -> Vec<(String, Option<String>, Option<usize>, String)> {
    match PolicySet::parse(yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems()
            .iter()
            .map(|p| (p.code.to_owned(), p.rule.clone(), p.line, p.message.clone()))
            .collect(),
    }
}

fn codes(yaml: &str) -> Vec<String> {
    problems(yaml).into_iter().map(|p| p.0).collect()
}

#[test]
fn a_complete_valid_file_parses_with_defaults() {
    let set = PolicySet::parse(
        r#"
emit_allow_decisions: true
rules:
  - name: block
    match: key_id == "k-bad"
    action: deny
  - name: rpm
    action: rate-limit
    limit: 60
    window: 1m
    key: key_id
  - name: budget
    action: usage-cap
    limit_usd: 100.00
    period: month
"#,
    )
    .unwrap();
    assert_eq!(set.rule_names(), ["block", "rpm", "budget"]);
    assert!(set.emit_allow_decisions());
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    let summary = set.summary();
    assert_eq!(
        summary[0],
        "block: deny (status 403) when `key_id == \"k-bad\"`"
    );
    assert_eq!(
        summary[1],
        "rpm: rate-limit 60 requests per 1m per `key_id` (sliding window) when every request"
    );
    assert_eq!(
        summary[2],
        "budget: usage-cap $100.00 per month (UTC) per tenant, on_exceed finish when every request"
    );
}

#[test]
fn a_bare_list_of_rules_is_accepted() {
    let set = PolicySet::parse("- name: all\n  action: deny\n").unwrap();
    assert_eq!(set.len(), 1);
    assert!(!set.emit_allow_decisions());
}

#[test]
fn yaml_errors_have_a_code_a_location_and_the_rule() {
    let yaml = "rules:\n  - name: ok\n    action: deny\n  - name: typo\n    action: rate-limit\n    limt: 5\n";
    let err = PolicySet::parse(yaml).unwrap_err();
    assert_eq!(err.code(), "policy.unknown_field");
    let p = &err.problems()[0];
    assert_eq!((p.line, p.column), (Some(6), Some(5)));
    assert_eq!(p.rule.as_deref(), Some("typo"));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "policy.unknown_field: line 6, column 5: rule `typo`: rules[1]: unknown field `limt`"
        ),
        "{text}"
    );

    let err = PolicySet::parse("rules:\n  - name: a\n    action: dny\n").unwrap_err();
    assert_eq!(err.code(), "policy.unknown_value");
    assert!(err.to_string().contains("expected one of `deny`"), "{err}");

    let err = PolicySet::parse("rules:\n  - action: deny\n").unwrap_err();
    assert_eq!(err.code(), "policy.missing_field");

    let err = PolicySet::parse("rules: [\n").unwrap_err();
    assert_eq!(err.code(), "policy.yaml");
    assert!(err.problems()[0].line.is_some());

    let err = PolicySet::parse("rulez: []\n").unwrap_err();
    assert_eq!(err.code(), "policy.unknown_field");

    let err = PolicySet::parse(
        "rules:\n  - name: a\n    action: rate-limit\n    limit: 1.5\n    window: 1m\n",
    )
    .unwrap_err();
    assert_eq!(err.code(), "policy.yaml");
    assert_eq!(err.problems()[0].line, Some(4));
}

#[test]
fn every_problem_is_reported_with_its_rule_and_line() {
    let yaml = r#"rules:
  - name: dup
    action: deny
  - name: dup
    action: allow
  - name: zero
    action: rate-limit
    limit: 0
    window: 1m
  - name: bad-window
    action: rate-limit
    limit: 5
    window: 1 week
  - name: bad-zone
    action: usage-cap
    limit_tokens: 5
    period: day
    timezone: Mars/Olympus
  - name: no-period
    action: usage-cap
    limit_usd: 5
"#;
    let ps = problems(yaml);
    let got: Vec<(&str, &str, usize)> = ps
        .iter()
        .map(|(c, r, l, _)| (c.as_str(), r.as_deref().unwrap_or(""), l.unwrap_or(0)))
        .collect();
    assert_eq!(
        got,
        [
            ("policy.duplicate_name", "dup", 4),
            ("policy.bad_limit", "zero", 6),
            ("policy.bad_duration", "bad-window", 10),
            ("policy.bad_timezone", "bad-zone", 14),
            ("policy.missing_field", "no-period", 19),
        ]
    );
    let err = PolicySet::parse(yaml).unwrap_err();
    assert_eq!(err.code(), "policy.invalid");
    let text = err.to_string();
    assert!(text.starts_with("policy.invalid: 5 problems in the policy file\n  - policy.duplicate_name: line 4: rule `dup`: "), "{text}");
    assert!(
        text.contains("Mars/Olympus` is not an IANA time zone name; use one like UTC"),
        "{text}"
    );
}

#[test]
fn fields_must_fit_the_action() {
    let cases = [
        ("action: deny\n    window: 1m", "policy.field_not_allowed"),
        ("action: allow\n    status: 403", "policy.field_not_allowed"),
        ("action: allow\n    mode: shadow", "policy.bad_mode"),
        ("action: deny\n    status: 200", "policy.bad_status"),
        ("action: deny\n    reason: ' '", "policy.bad_reason"),
        ("action: rate-limit\n    limit: 5", "policy.missing_field"),
        ("action: rate-limit\n    window: 1m", "policy.missing_field"),
        (
            "action: rate-limit\n    limit: 5\n    window: 1m\n    period: day",
            "policy.field_not_allowed",
        ),
        (
            "action: rate-limit\n    limit: 5\n    window: 1m\n    limit_usd: 5",
            "policy.field_not_allowed",
        ),
        ("action: usage-cap\n    period: day", "policy.missing_field"),
        (
            "action: usage-cap\n    period: day\n    limit_usd: 5\n    limit_tokens: 5",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_usd: 5\n    unit: tokens",
            "policy.bad_unit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_tokens: 5\n    unit: requests",
            "policy.bad_unit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_tokens: -5",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_usd: 0",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_usd: -3",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_usd: 0.0000001",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_usd: lots",
            "policy.bad_limit",
        ),
        (
            "action: usage-cap\n    period: day\n    limit_tokens: 5\n    algorithm: token_bucket",
            "policy.field_not_allowed",
        ),
        (
            "action: usage-cap\n    period: week\n    limit_tokens: 5",
            "policy.unknown_value",
        ),
    ];
    for (body, code) in cases {
        let yaml = format!("rules:\n  - name: r\n    {body}\n");
        assert_eq!(codes(&yaml), [code], "{body}");
    }
    let bad = PolicySet::parse("- name: 'a b'\n  action: deny\n").unwrap_err();
    assert_eq!(bad.code(), "policy.bad_name");
}

#[test]
fn dollar_limits_are_exact_micro_dollars() {
    for (text, ok) in [
        ("100.00", true),
        ("'12.345678'", true),
        ("\"$5\"", true),
        ("0.000001", true),
        ("1000000001", false),
    ] {
        let yaml = format!("- name: r\n  action: usage-cap\n  period: day\n  limit_usd: {text}\n");
        assert_eq!(PolicySet::parse(&yaml).is_ok(), ok, "{text}");
    }
    let set = PolicySet::parse(
        "- name: r\n  action: usage-cap\n  period: day\n  limit_usd: '12.345678'\n",
    )
    .unwrap();
    assert_eq!(
        set.summary()[0],
        "r: usage-cap $12.345678 per day (UTC) per tenant, on_exceed finish when every request"
    );
}

#[test]
fn expressions_are_compiled_and_checked_at_load() {
    let cases = [
        ("match: tenant ==", "policy.expr_syntax"),
        ("match: tenat == 'acme'", "policy.expr_unknown_variable"),
        ("match: tenant", "policy.expr_type"),
        ("match: input_tokens > 'many'", "policy.expr_type"),
        ("match: size(tenant)", "policy.expr_type"),
        ("match: headers['x-tier'] > 3", "policy.expr_type"),
        ("match: frobnicate(model)", "policy.expr_type"),
    ];
    for (m, code) in cases {
        let yaml = format!("rules:\n  - name: r\n    action: deny\n    {m}\n");
        assert_eq!(codes(&yaml), [code], "{m}");
    }
    let key_cases = [
        ("key: tenant == 'a'", "policy.expr_type"),
        ("key: input_tokens", "policy.expr_type"),
        ("key: user", "policy.expr_unknown_variable"),
    ];
    for (k, code) in key_cases {
        let yaml = format!(
            "rules:\n  - name: r\n    action: rate-limit\n    limit: 1\n    window: 1s\n    {k}\n"
        );
        assert_eq!(codes(&yaml), [code], "{k}");
    }
    let ps = problems("rules:\n  - name: r\n    action: deny\n    match: tenat == 'a'\n");
    assert!(
        ps[0]
            .3
            .contains("unknown variable `tenat`; the variables are tenant, key_id"),
        "{}",
        ps[0].3
    );
    // Data-dependent failures (a label a request may lack) are not load errors.
    for ok in [
        "labels.team == 'ml'",
        "has(labels.team) && labels.team == 'ml'",
        "headers['x-tier'] == 'gold' && weekday < 6 && hour >= 8",
        "labels.exists(k, k.startsWith('cost-'))",
        "model.matches('^gpt-4o') || model.lowerAscii().contains('claude')",
        "now > timestamp('2026-01-01T00:00:00Z') && input_tokens + max_output_tokens > 100000",
        "provider == 'openai' && route in ['chat', 'responses']",
    ] {
        let yaml = format!("rules:\n  - name: r\n    action: deny\n    match: \"{ok}\"\n");
        assert!(codes(&yaml).is_empty(), "{ok}: {:?}", problems(&yaml));
    }
}

#[test]
fn warnings_flag_suspicious_rules() {
    let set = PolicySet::parse(
        r#"rules:
  - name: maintenance
    action: deny
  - name: rpm
    action: rate-limit
    limit: 5
    window: 1m
    key: headers["x-user"]
  - name: input-cap
    action: usage-cap
    limit_tokens: 5
    unit: input_tokens
    period: day
    on_exceed: cut
"#,
    )
    .unwrap();
    let w: Vec<(&str, &str)> = set
        .warnings()
        .iter()
        .map(|p| (p.code, p.rule.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        w,
        [
            ("policy.warn.unreachable", "rpm"),
            ("policy.warn.unreachable", "input-cap"),
            ("policy.warn.not_rebuildable", "rpm"),
            ("policy.warn.cut_never_applies", "input-cap"),
        ]
    );
    // Allow rules before a deny-everything rule are an allow-list, not a mistake.
    let set = PolicySet::parse(
        "rules:\n  - name: ok\n    action: allow\n    match: tenant == 'a'\n  - name: rest\n    action: deny\n  - name: rpm\n    action: rate-limit\n    limit: 1\n    window: 1m\n",
    )
    .unwrap();
    assert!(set.warnings().is_empty());
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(
        &path,
        "rules:\n  - name: r\n    action: rate-limit\n    limit: 0\n    window: 1m\n",
    )
    .unwrap();
    let err = PolicySet::load(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "policy.bad_limit: {}:2: rule `r`: limit must be greater than 0",
            path.display()
        )),
        "{text}"
    );
    let missing = PolicySet::load(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(matches!(missing, PolicyError::Read { .. }));
    assert_eq!(missing.code(), "policy.read");
}
