//! The cookbook in docs/policies.md cannot rot: every recipe file in
//! tests/policy_cookbook/ loads without warnings, appears verbatim in the docs, every
//! YAML block of the docs is a valid policy, and each recipe does what it says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tally_enforcer::policy::{PolicyEngine, PolicySet, RequestAttrs, StreamVerdict, Verdict};
use tally_events::{EventHeader, Outcome, Timestamp, TokenCounts};

fn cookbook_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_cookbook")
}

fn recipes() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(cookbook_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn doc_yaml_blocks() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policies.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            // ```yaml, or ```yaml FILE (the docs harness writes the block to FILE)
            (None, l) if l == "```yaml" || l.starts_with("```yaml ") => {
                current = Some(String::new())
            }
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_recipe_loads_cleanly_and_is_in_the_docs() {
    let recipes = recipes();
    assert_eq!(
        recipes.len(),
        6,
        "{:?}",
        recipes.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let blocks = doc_yaml_blocks();
    for (name, text) in &recipes {
        let set =
            PolicySet::load(&cookbook_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(set.warnings().is_empty(), "{name}: {:?}", set.warnings());
        assert!(
            blocks.iter().any(|b| b == text),
            "{name} is not in docs/policies.md verbatim"
        );
    }
}

#[test]
fn every_yaml_block_in_the_docs_is_a_valid_policy() {
    let blocks = doc_yaml_blocks();
    assert!(blocks.len() >= 7);
    for b in blocks {
        if let Err(e) = PolicySet::parse(&b) {
            panic!("docs/policies.md block does not load: {e}\n{b}");
        }
    }
}

fn engine(name: &str) -> PolicyEngine {
    PolicyEngine::new(PolicySet::load(&cookbook_dir().join(name)).unwrap())
}

fn now() -> Timestamp {
    Timestamp::parse("2026-11-25T10:00:00Z").unwrap()
}

fn req(tenant: &str, key: &str, model: &str) -> RequestAttrs {
    RequestAttrs {
        tenant: tenant.into(),
        key_id: Some(key.into()),
        model: Some(model.into()),
        estimated_input_tokens: 1_000,
        max_output_tokens: 1_000,
        estimated_cost_micros: Some(20_000),
        ..RequestAttrs::default()
    }
}

fn verdict(e: &PolicyEngine, r: &RequestAttrs) -> Result<(), String> {
    let h = EventHeader::new("gw", "req", &r.tenant);
    match e.evaluate(r, &h, now()).verdict {
        Verdict::Allow(res) => {
            e.settle(
                &res,
                &TokenCounts {
                    input_tokens: 1_000,
                    output_tokens: 1_000,
                    ..TokenCounts::default()
                },
                20_000,
                now(),
            );
            Ok(())
        }
        Verdict::Deny { rule, .. } => Err(rule),
    }
}

#[test]
fn recipes_do_what_they_say() {
    let e = engine("block-a-key.yaml");
    assert_eq!(
        verdict(&e, &req("acme", "k-7f3a", "gpt-4o")),
        Err("block-leaked-key".into())
    );
    assert_eq!(verdict(&e, &req("acme", "k-1", "gpt-4o")), Ok(()));

    let e = engine("model-allow-list.yaml");
    assert_eq!(verdict(&e, &req("acme", "k", "gpt-4o-mini")), Ok(()));
    assert_eq!(
        verdict(&e, &req("acme", "k", "gpt-4o")),
        Err("acme-other-models".into())
    );
    assert_eq!(verdict(&e, &req("globex", "k", "gpt-4o")), Ok(()));

    let e = engine("per-key-rpm.yaml");
    for _ in 0..60 {
        assert_eq!(verdict(&e, &req("acme", "k1", "m")), Ok(()));
    }
    assert_eq!(
        verdict(&e, &req("acme", "k1", "m")),
        Err("per-key-rpm".into())
    );
    assert_eq!(verdict(&e, &req("acme", "k2", "m")), Ok(()));

    let e = engine("team-daily-tokens.yaml");
    let mut ml = req("acme", "k1", "m");
    ml.labels = BTreeMap::from([("team".to_owned(), "ml".to_owned())]);
    for _ in 0..1_000 {
        assert_eq!(verdict(&e, &ml), Ok(()));
    }
    assert_eq!(verdict(&e, &ml), Err("team-daily-tokens".into()));
    assert_eq!(
        verdict(&e, &req("acme", "k1", "m")),
        Ok(()),
        "no team label: not limited"
    );

    let e = engine("tenant-monthly-dollars.yaml");
    for _ in 0..5_000 {
        assert_eq!(verdict(&e, &req("acme", "k1", "m")), Ok(()));
    }
    let denied = e.evaluate(
        &req("acme", "k1", "m"),
        &EventHeader::new("gw", "r", "acme"),
        now(),
    );
    assert!(
        denied.decisions[0]
            .reason
            .ends_with("resets 2026-12-01T00:00:00Z — ask billing@example.com to raise the budget"),
        "{}",
        denied.decisions[0].reason
    );
    // A stream of another tenant is cut once its own spend passes the budget.
    let h = EventHeader::new("gw", "r", "globex");
    let Verdict::Allow(res) = e.evaluate(&req("globex", "k", "m"), &h, now()).verdict else {
        panic!("globex has budget")
    };
    assert!(res.needs_stream_checks());
    assert!(matches!(
        e.check_stream(&res, 500, 50_000_000, &h, now()),
        StreamVerdict::Continue
    ));
    assert!(matches!(
        e.check_stream(&res, 900, 100_000_001, &h, now()),
        StreamVerdict::Cut { .. }
    ));

    let e = engine("shadow-new-limit.yaml");
    for _ in 0..50 {
        assert_eq!(verdict(&e, &req("acme", "k1", "m")), Ok(()));
    }
    let ev = e.evaluate(
        &req("acme", "k1", "m"),
        &EventHeader::new("gw", "r", "acme"),
        now(),
    );
    assert!(matches!(ev.verdict, Verdict::Allow(_)));
    assert_eq!(ev.decisions[0].outcome, Outcome::ShadowDeny);
}
