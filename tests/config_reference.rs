//! `tally config`: docs/configuration.md is exactly what `tally config reference` prints
//! (`TALLY_REGENERATE_DOCS=1` rewrites it), every setting of the default config is in the
//! reference with a description, and `tally config check` accepts valid files and refuses
//! typos, bad values and bad references with exit status 1 and a stable code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

fn tally(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env("TALLY_LOG_FILTER", "warn")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn reference() -> String {
    let out = tally(&["config", "reference"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn configuration_doc_matches_the_config_types() {
    let expected = reference();
    if std::env::var_os("TALLY_REGENERATE_DOCS").is_some() {
        std::fs::write(DOC, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/configuration.md is out of date with the config types; regenerate it with \
         `TALLY_REGENERATE_DOCS=1 cargo test --test config_reference` and commit the result"
    );
}

/// `section.key` of every row of the reference, and the rows that are maps or lists
/// (whose entries are documented in their own section).
fn documented_keys(md: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut containers = BTreeSet::new();
    let mut section = String::new();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().trim_matches('`').to_owned();
            if section == "top level" {
                section.clear();
            } else {
                // An optional section (`kafka: null` by default) is covered by its heading.
                containers.insert(section.clone());
            }
            continue;
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].trim_end_matches('`');
        let full = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        let ty = cells.get(1).copied().unwrap_or_default();
        if ty.starts_with("map of") || ty.starts_with("list of") {
            containers.insert(full.clone());
        }
        keys.insert(full);
    }
    (keys, containers)
}

fn leaf_paths(value: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_yaml_ng::Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(v, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_default_setting_is_in_the_reference_with_a_description() {
    let md = reference();
    assert!(
        !md.contains("(no description"),
        "a setting has no `///` doc comment: {}",
        md.lines()
            .find(|l| l.contains("(no description"))
            .unwrap_or_default()
    );
    let (keys, containers) = documented_keys(&md);
    let out = tally(&["config", "default"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let defaults: serde_yaml_ng::Value = serde_yaml_ng::from_str(&stdout(&out)).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&defaults, "", &mut paths);
    assert!(paths.len() > 50, "{paths:?}");
    for p in &paths {
        let covered = keys.contains(p)
            || containers
                .iter()
                .any(|c| p.starts_with(&format!("{c}.")) || p == c);
        assert!(
            covered,
            "`{p}` is in the default config but not in the reference"
        );
    }
    // Environment variable names follow the loader's convention.
    for env in [
        "`TALLY_LOG__FSYNC`",
        "`TALLY_DATA_DIR`",
        "`TALLY_PROXY__EVENT_QUEUE__CAPACITY`",
        "`TALLY_KAFKA__SPOOL__MAX_BYTES`",
        "`TALLY_LEDGER__TABLES_URI`",
    ] {
        assert!(md.contains(env), "{env} missing from the reference");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn check(file: &Path) -> Output {
    tally(&["config", "check", file.to_str().unwrap()])
}

#[test]
fn check_accepts_the_defaults_and_a_typical_file() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = stdout(&tally(&["config", "default"]));
    let out = check(&write(dir.path(), "defaults.yaml", &defaults));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check(&write(dir.path(), "empty.yaml", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    let typical = "data_dir: /srv/tally\nlog: { fsync: always }\nkafka: { brokers: 'k1:9092,k2:9092' }\n\
                   proxy:\n  listen: 0.0.0.0:8080\n  upstreams:\n    openai: { base_url: https://api.openai.com, provider: openai, credentials: { api_key_env: OPENAI_API_KEY } }\n";
    let out = check(&write(dir.path(), "typical.yaml", typical));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok:"), "{}", stdout(&out));
}

#[test]
fn check_refuses_unknown_keys_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "typo.yaml",
        "log:\n  fsynk: always\nproxy:\n  upstreams:\n    openai: { base_url: https://x, provider: openai, credentails: passthrough }\n",
    );
    let out = check(&f);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.unknown_key: `log.fsynk` is not a setting; did you mean `fsync`?"),
        "{err}"
    );
    assert!(
        err.contains(
            "`proxy.upstreams.openai.credentails` is not a setting; did you mean `credentials`?"
        ),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn check_refuses_bad_values_and_bad_references() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(&write(dir.path(), "bad.yaml", "log:\n  fsync: sometimes\n"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.invalid_value: `log`:") && err.contains("sometimes"),
        "{err}"
    );

    let out = check(&write(
        dir.path(),
        "port.yaml",
        "admin:\n  listen: localhost-8081\n",
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`admin`"), "{}", stderr(&out));

    let refs = "proxy:\n  routes:\n    openai: { upstream: nowhere }\n  keys:\n    - { id: k, tenant: t, hash: plaintext }\nledger:\n  dedupe_horizon_hours: 1\nkafka:\n  brokers: ''\n";
    let out = check(&write(dir.path(), "refs.yaml", refs));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        "config.rejected: proxy.routes.openai: upstream `nowhere`",
        "proxy.keys[0] (k): hash must be",
        "dedupe_horizon_hours",
        "kafka.brokers is empty",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }

    let out = check(&dir.path().join("missing.yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.read"), "{}", stderr(&out));

    let out = check(&write(dir.path(), "list.yaml", "- a\n- b\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.parse"), "{}", stderr(&out));
}
