//! Every code example in `README.md` and `docs/*.md` is executed or validated here,
//! against the built `tally` binary, on loopback only.
//!
//! # Conventions (also in docs/README.md)
//!
//! A fenced block's info string is its language tag, then optional words:
//!
//! | language | what the harness does |
//! |---|---|
//! | `sh`, `bash` | runs it with `bash` (`set -euo pipefail`) in the document's sandbox; it must exit 0 (or `exit=N`) |
//! | `sql` | runs each statement with `tally sql` against the sandbox's seeded data; it must succeed and return at least one row (`empty-ok` allows none). `CREATE VIEW v AS q` (docs/schema.md) runs `q` and checks it returns as many rows as `v` |
//! | `python` | runs it with the Python that has the official SDKs (`scripts/setup-test-deps.sh`, as `tests/e2e_sdk.rs`) |
//! | `yaml` | a tally config → `tally config check`; a policy file (`rules:`) → `tally policy check`; a billing pricing file → `tally export --pricing`; a CSV mapping (`columns:`) → `tally reconcile --from-file` of a CSV with those columns. `kind=config\|policy\|pricing\|csv-mapping` says it when the content does not |
//! | `json` | parsed (the whole block, or every line) |
//! | `csv` | every row has the header's number of fields |
//! | `text` | an output sample or a diagram: counted, not run |
//! | anything else, or no tag | an error, unless annotated `no-run: <reason>` |
//!
//! Other words: a file name (` ```yaml pricing.yaml `) also writes the block to that
//! file in the sandbox before any block of the document runs, so later blocks can use it;
//! `no-run: <reason>` marks a block that cannot run here (a Kafka broker, a foreground
//! server, a library fragment) — it is still syntax-checked when it is YAML or JSON, the
//! reason is required, and the total stays under a small budget (`NO_RUN_BUDGET`).
//!
//! # The sandbox
//!
//! Each document gets a temporary working directory with `tally` on `PATH` (a symlink to
//! the binary under test). When the document has blocks to run, the harness starts
//! `tally up --dev` there (data directory `./tally-data`, the default, so `tally sql`
//! needs no flag) with a small policy file and retries on the OpenAI route, and sends a
//! mixed workload through it (see `docs_examples/seed.rs`): three wire formats, streaming
//! and not, client aborts, an upstream reset, failed retries, denials by an access rule,
//! a rate limit and a usage cap, shadow denials, an unknown key. It then waits until the
//! ledger has committed everything.
//!
//! Docs show the documented default addresses (proxy `127.0.0.1:8080`, admin `:8081`,
//! Postgres `:5433`, simulator `:9090`); the stack listens on ephemeral ports and the
//! harness rewrites those addresses in each block before running it, so a test never
//! depends on a fixed port. Provider admin APIs (`tally reconcile --pull`) are the
//! stack's simulator (`TALLY_RECONCILE_BASE_URL`, dummy `OPENAI_ADMIN_KEY` /
//! `ANTHROPIC_ADMIN_KEY`); provider keys of the environment are removed, and proxy
//! variables point at a closed port so nothing reaches the internet.
//!
//! Files a document's examples use but do not show (a saved provider report) come from
//! `FIXTURES`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "docs_examples/blocks.rs"]
mod blocks;
#[path = "docs_examples/sandbox.rs"]
mod sandbox;
#[path = "docs_examples/seed.rs"]
mod seed;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blocks::Block;
use sandbox::{Ran, Sandbox, run};

/// At most this many blocks in all the docs may be `no-run` (12 at the time of writing:
/// half of them docs/deployment.md's Docker and Kubernetes commands). Raise it only with
/// a reason in the block's annotation.
const NO_RUN_BUDGET: usize = 12;

/// Files some documents' examples read, copied into their sandbox: (document, name in the
/// sandbox, file in the repository).
const FIXTURES: &[(&str, &str, &str)] = &[(
    "docs/reconciliation.md",
    "usage_report.json",
    "reconcile/fixtures/anthropic_usage.json",
)];

/// Documents with a test of their own; any other `docs/*.md` runs in `other_docs`.
const LISTED: &[&str] = &[
    "README.md",
    "docs/README.md",
    "docs/billing-exports.md",
    "docs/comparison.md",
    "docs/concepts.md",
    "docs/configuration.md",
    "docs/events.md",
    "docs/operations.md",
    "docs/policies.md",
    "docs/reconciliation.md",
    "docs/schema.md",
    "docs/simulator.md",
    "docs/sql-cookbook.md",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn all_docs() -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let mut md: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    md.sort();
    docs.extend(md);
    docs
}

fn read_blocks(doc: &str) -> Vec<Block> {
    let text =
        std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("reading {doc}: {e}"));
    blocks::parse(doc, &text)
}

/// How a block is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Shell,
    Sql,
    Python,
    Yaml(YamlKind),
    Json,
    Csv,
    Text,
    NoRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum YamlKind {
    Config,
    Policy,
    Pricing,
    CsvMapping,
}

/// `tally` subcommands that read the sandbox's data directory.
const DATA_COMMANDS: &[&str] = &[
    "sql",
    "why",
    "usage",
    "top",
    "log",
    "ledger",
    "reconcile",
    "export",
];

/// Whether a block needs the running, seeded stack: SQL and Python always; a shell block
/// when it talks to a documented default address or runs a `tally` command on the
/// default data directory (one with its own `--data-dir` does not count).
fn needs_stack(b: &Block, kind: &Kind) -> bool {
    match kind {
        Kind::Sql | Kind::Python => true,
        Kind::Shell => {
            let addresses = ["8080", "8081", "5433", "9090"].iter().any(|p| {
                b.body.contains(&format!("127.0.0.1:{p}"))
                    || b.body.contains(&format!("localhost:{p}"))
                    || b.body.contains(&format!("port={p}"))
            });
            let data = b.body.lines().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words
                    .windows(2)
                    .any(|w| w[0].ends_with("tally") && DATA_COMMANDS.contains(&w[1]))
                    && !line.contains("--data-dir")
            });
            addresses || data
        }
        _ => false,
    }
}

/// Top-level keys of a tally config, from `tally config default`.
fn config_keys() -> BTreeSet<String> {
    let out = Command::new(sandbox::TALLY)
        .args(["config", "default"])
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("tally config default");
    assert!(out.status.success(), "tally config default failed");
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&out.stdout).expect("tally config default prints YAML");
    v.as_mapping()
        .expect("a mapping")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

fn yaml_kind(b: &Block, config_keys: &BTreeSet<String>) -> Result<YamlKind, String> {
    if let Some(k) = &b.ann.kind {
        return match k.as_str() {
            "config" => Ok(YamlKind::Config),
            "policy" => Ok(YamlKind::Policy),
            "pricing" => Ok(YamlKind::Pricing),
            "csv-mapping" => Ok(YamlKind::CsvMapping),
            other => Err(format!(
                "unknown kind={other}: use config, policy, pricing or csv-mapping"
            )),
        };
    }
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&b.body).map_err(|e| format!("not YAML: {e}"))?;
    let keys: BTreeSet<String> = match &v {
        serde_yaml_ng::Value::Sequence(_) => return Ok(YamlKind::Policy),
        serde_yaml_ng::Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => return Err("a YAML block must be a mapping or a list".into()),
    };
    let pricing: BTreeSet<String> = ["default", "tenants", "stripe", "cloudevents"]
        .map(String::from)
        .into();
    if keys.contains("rules") || keys.contains("emit_allow_decisions") {
        Ok(YamlKind::Policy)
    } else if keys.contains("columns") {
        Ok(YamlKind::CsvMapping)
    } else if !keys.is_empty() && keys.is_subset(config_keys) {
        Ok(YamlKind::Config)
    } else if !keys.is_empty() && keys.is_subset(&pricing) {
        Ok(YamlKind::Pricing)
    } else {
        Err(format!(
            "cannot tell what this YAML is (top-level keys {keys:?}): annotate kind=config|policy|pricing|csv-mapping, or no-run: <reason>"
        ))
    }
}

fn classify(b: &Block, config_keys: &BTreeSet<String>) -> Result<Kind, String> {
    if !b.ann.unknown.is_empty() {
        return Err(format!(
            "unknown words in the info string: {:?}",
            b.ann.unknown
        ));
    }
    if let Some(reason) = &b.ann.no_run {
        if reason.len() < 10 {
            return Err("`no-run` needs a reason: ```lang no-run: <why it cannot run here>".into());
        }
        return Ok(Kind::NoRun);
    }
    Ok(match b.lang.as_str() {
        "sh" | "bash" => Kind::Shell,
        "sql" => Kind::Sql,
        "python" | "py" => Kind::Python,
        "yaml" | "yml" => Kind::Yaml(yaml_kind(b, config_keys)?),
        "json" => Kind::Json,
        "csv" => Kind::Csv,
        "text" => Kind::Text,
        "" => {
            return Err(
                "a block without a language tag: tag it (`text` for diagrams and output)".into(),
            );
        }
        other => {
            return Err(format!(
                "the harness cannot run `{other}` blocks: use a supported tag, or annotate `no-run: <reason>`"
            ));
        }
    })
}

/// One document's run.
struct DocRun {
    sandbox: Sandbox,
    config_keys: BTreeSet<String>,
    failures: Vec<String>,
    counter: usize,
}

impl DocRun {
    fn fail(&mut self, b: &Block, msg: impl AsRef<str>) {
        self.failures.push(format!("{b}\n{}\n", msg.as_ref()));
    }

    fn scratch_file(&mut self, ext: &str, content: &str) -> PathBuf {
        self.counter += 1;
        let p = self
            .sandbox
            .harness_dir()
            .join(format!("block-{}.{ext}", self.counter));
        std::fs::write(&p, content).expect("write scratch file");
        p
    }

    fn localize(&self, text: &str) -> String {
        match &self.sandbox.stack {
            Some(s) => s.localize(text),
            None => text.to_owned(),
        }
    }

    fn run_in_sandbox(&self, cmd: &mut Command, timeout: Duration) -> Ran {
        run(cmd, timeout, &self.sandbox.harness_dir())
    }

    fn shell(&mut self, b: &Block) {
        let script = format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}",
            self.localize(&b.body)
        );
        let path = self.scratch_file("sh", &script);
        let mut cmd = self.sandbox.command("bash");
        cmd.arg(&path);
        let ran = self.run_in_sandbox(&mut cmd, Duration::from_secs(60));
        verbose(b, &ran);
        let want = b.ann.exit.unwrap_or(0);
        if ran.code() != Some(want) {
            self.fail(b, format!("expected exit {want}\n{}", ran.describe()));
        }
    }

    fn python(&mut self, b: &Block) {
        let python = sdk_python();
        if !python.exists() {
            self.fail(
                b,
                format!(
                    "{} missing: run `bash scripts/setup-test-deps.sh` (scripts/test.sh does)",
                    python.display()
                ),
            );
            return;
        }
        let path = self.scratch_file("py", &self.localize(&b.body));
        let mut cmd = self.sandbox.command(&python);
        cmd.arg(&path);
        let ran = self.run_in_sandbox(&mut cmd, Duration::from_secs(60));
        verbose(b, &ran);
        if ran.code() != Some(0) {
            self.fail(b, ran.describe());
        }
    }

    fn sql_rows(&self, sql: &str) -> Result<usize, String> {
        let ran = self.sandbox.tally(&["sql", "--format", "json", sql]);
        if std::env::var_os("TALLY_DOCS_VERBOSE").is_some() {
            println!("=== tally sql {sql}\n{}", ran.describe());
        }
        if ran.code() != Some(0) {
            return Err(format!("tally sql failed:\n{sql}\n{}", ran.describe()));
        }
        Ok(ran.stdout.lines().filter(|l| !l.trim().is_empty()).count())
    }

    fn sql(&mut self, b: &Block) {
        for stmt in split_statements(&b.body) {
            let result = match create_view(&stmt) {
                Some((view, query)) => self.check_view(&view, &query),
                None => match self.sql_rows(&stmt) {
                    Ok(0) if !b.ann.empty_ok => Err(format!(
                        "returned no rows on the seeded data (annotate `empty-ok` if that is expected):\n{stmt}"
                    )),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                self.fail(b, e);
            }
        }
    }

    /// A view's documented definition returns what the view returns (as many rows).
    fn check_view(&self, view: &str, query: &str) -> Result<(), String> {
        let by_definition = self.sql_rows(query)?;
        let ran = self.sandbox.tally(&[
            "sql",
            "--format",
            "csv",
            &format!("SELECT count(*) AS n FROM {view}"),
        ]);
        let n: usize = ran
            .stdout
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("counting {view}:\n{}", ran.describe()))?;
        if n != by_definition || n == 0 {
            return Err(format!(
                "the documented definition of {view} returns {by_definition} row(s), the view {n} (both must be equal and > 0 on the seeded data)"
            ));
        }
        Ok(())
    }

    fn yaml(&mut self, b: &Block, kind: YamlKind) {
        let path = self.scratch_file("yaml", &b.body);
        let p = path.to_str().expect("utf-8 path");
        let ran = match kind {
            YamlKind::Config => self.sandbox.tally(&["config", "check", p]),
            YamlKind::Policy => self.sandbox.tally(&["policy", "check", p]),
            YamlKind::Pricing => {
                let data = self.sandbox.harness_dir().join("pricing-data");
                self.sandbox.tally(&[
                    "export",
                    "--data-dir",
                    data.to_str().expect("utf-8"),
                    "--period",
                    "2026-10",
                    "--format",
                    "csv",
                    "--pricing",
                    p,
                ])
            }
            YamlKind::CsvMapping => match self.csv_for_mapping(&b.body) {
                Ok(csv) => {
                    let data = self.sandbox.harness_dir().join("mapping-data");
                    let provider = mapping_provider(&b.body);
                    let ran = self.sandbox.tally(&[
                        "reconcile",
                        "--data-dir",
                        data.to_str().expect("utf-8"),
                        "--provider",
                        &provider,
                        "--period",
                        "2026-10",
                        "--from-file",
                        csv.to_str().expect("utf-8"),
                        "--mapping",
                        p,
                        "--no-store",
                    ]);
                    // Exit 3 = the import worked and the match found differences (the
                    // mapping's data dir has no gateway traffic).
                    let imported = ran.stderr.contains("costs 1 new");
                    if matches!(ran.code(), Some(0 | 3)) && imported {
                        return;
                    }
                    self.fail(
                        b,
                        format!(
                            "importing a one-line CSV with this mapping did not give one cost row:\n{}",
                            ran.describe()
                        ),
                    );
                    return;
                }
                Err(e) => {
                    self.fail(b, e);
                    return;
                }
            },
        };
        if ran.code() != Some(0) {
            self.fail(b, format!("{kind:?} check failed:\n{}", ran.describe()));
        }
    }

    /// A one-line invoice CSV with the columns a mapping names.
    fn csv_for_mapping(&mut self, mapping: &str) -> Result<PathBuf, String> {
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(mapping).map_err(|e| format!("not YAML: {e}"))?;
        let cols = v
            .get("columns")
            .and_then(|c| c.as_mapping())
            .ok_or("no `columns` mapping")?;
        let date_format = v
            .get("date_format")
            .and_then(|d| d.as_str())
            .unwrap_or("%Y-%m-%d");
        let date = |day: &str| {
            date_format
                .replace("%Y", "2026")
                .replace("%m", "10")
                .replace("%d", day)
                .replace("%H", "00")
                .replace("%M", "00")
                .replace("%S", "00")
        };
        let token_kind = v
            .get("token_kinds")
            .and_then(|k| k.as_mapping())
            .and_then(|m| m.keys().next())
            .and_then(|k| k.as_str())
            .unwrap_or("input")
            .to_owned();
        let delimiter = v
            .get("delimiter")
            .and_then(|d| d.as_str())
            .unwrap_or(",")
            .to_owned();
        let (mut header, mut row) = (Vec::new(), Vec::new());
        for (k, col) in cols {
            let (Some(k), Some(col)) = (k.as_str(), col.as_str()) else {
                return Err("columns: every entry maps a field to a header text".into());
            };
            let value = match k {
                "start" => date("01"),
                "end" => date("02"),
                "amount" => "1234".to_owned(),
                "currency" => "usd".to_owned(),
                "model" => "gpt-4o".to_owned(),
                "project" => "proj_docs".to_owned(),
                "description" => "docs example".to_owned(),
                "token_kind" => token_kind.clone(),
                "tokens" => "1000".to_owned(),
                "requests" => "3".to_owned(),
                "cost_type" => "tokens".to_owned(),
                other => return Err(format!("columns: unknown field `{other}`")),
            };
            header.push(quote_csv(col));
            row.push(quote_csv(&value));
        }
        let csv = format!("{}\n{}\n", header.join(&delimiter), row.join(&delimiter));
        Ok(self.scratch_file("csv", &csv))
    }

    fn json(&mut self, b: &Block) {
        if serde_json::from_str::<serde_json::Value>(&b.body).is_ok() {
            return;
        }
        for (i, line) in b.body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
                self.fail(b, format!("line {} is not JSON: {e}", i + 1));
            }
        }
    }

    fn csv(&mut self, b: &Block) {
        let mut lines = b.body.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else {
            self.fail(b, "an empty CSV block");
            return;
        };
        let width = csv_fields(header);
        for (i, line) in lines.enumerate() {
            let n = csv_fields(line);
            if n != width {
                self.fail(
                    b,
                    format!("row {} has {n} fields, the header {width}", i + 1),
                );
            }
        }
    }
}

/// `TALLY_DOCS_VERBOSE=1`: print what every block printed.
fn verbose(b: &Block, ran: &Ran) {
    if std::env::var_os("TALLY_DOCS_VERBOSE").is_some() {
        println!("=== {b}\n{}", ran.describe());
    }
}

fn quote_csv(s: &str) -> String {
    if s.contains([',', '"', ';', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Fields of one CSV line (quotes respected).
fn csv_fields(line: &str) -> usize {
    let (mut n, mut quoted) = (1, false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => n += 1,
            _ => {}
        }
    }
    n
}

fn mapping_provider(mapping: &str) -> String {
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(mapping)
        .ok()
        .and_then(|v| v.get("provider")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "openai".to_owned())
}

/// Statements of an SQL block, split at `;` outside quotes and comments.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut chars) = (None::<char>, sql.chars().peekable());
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, '-') if chars.peek() == Some(&'-') => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            (None, ';') => {
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `CREATE VIEW name AS query` → (name, query).
fn create_view(stmt: &str) -> Option<(String, String)> {
    let rest = stmt.strip_prefix("CREATE VIEW ")?;
    let (name, query) = rest.split_once(" AS")?;
    Some((name.trim().to_owned(), query.trim().to_owned()))
}

fn sdk_python() -> PathBuf {
    if let Ok(p) = std::env::var("TALLY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/tally/venv/bin/python")
}

/// Check and run every block of one document; panics with every failure.
fn run_doc(doc: &str) {
    let blocks = read_blocks(doc);
    let config_keys = config_keys();
    let mut run = DocRun {
        sandbox: Sandbox::new(),
        config_keys,
        failures: Vec::new(),
        counter: 0,
    };
    let mut plan = Vec::new();
    for b in &blocks {
        match classify(b, &run.config_keys) {
            Ok(k) => plan.push((b, k)),
            Err(e) => run.fail(b, e),
        }
    }
    for (d, name, file) in FIXTURES {
        if *d == doc {
            std::fs::copy(root().join(file), run.sandbox.dir().join(name))
                .unwrap_or_else(|e| panic!("fixture {file}: {e}"));
        }
    }
    for (b, _) in &plan {
        if let Some(name) = &b.ann.file {
            std::fs::write(run.sandbox.dir().join(name), &b.body).expect("write named block");
        }
    }
    if plan.iter().any(|(b, k)| needs_stack(b, k)) {
        let policies = run.sandbox.harness_dir().join("policies.yaml");
        std::fs::write(&policies, seed::POLICIES).expect("write policies");
        run.sandbox
            .start_stack(&seed::stack_config(policies.to_str().expect("utf-8")));
        let (proxy, admin) = {
            let s = run.sandbox.stack.as_ref().expect("stack");
            (s.proxy.clone(), s.admin.clone())
        };
        seed::seed(&proxy, &admin);
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (b, kind) in &plan {
        *counts.entry(format!("{kind:?}")).or_default() += 1;
        match kind {
            Kind::Shell => run.shell(b),
            Kind::Sql => run.sql(b),
            Kind::Python => run.python(b),
            Kind::Yaml(k) => run.yaml(b, k.to_owned()),
            Kind::Json => run.json(b),
            Kind::Csv => run.csv(b),
            Kind::Text => {}
            Kind::NoRun => {
                // Still syntax-checked where the language allows.
                match b.lang.as_str() {
                    "yaml" | "yml" => {
                        if let Err(e) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&b.body) {
                            run.fail(b, format!("not YAML: {e}"));
                        }
                    }
                    "json" => run.json(b),
                    _ => {}
                }
            }
        }
    }
    println!("{doc}: {} block(s) {counts:?}", blocks.len());
    let mut failures = std::mem::take(&mut run.failures);
    if let (false, Some(s)) = (failures.is_empty(), &run.sandbox.stack) {
        failures.push(format!("--- tally up log (tail) ---\n{}\n", s.log()));
    }
    assert!(
        failures.is_empty(),
        "{} failing docs example(s) in {doc}:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! doc_tests {
    ($($name:ident => $doc:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_doc($doc);
            }
        )*
    };
}

doc_tests! {
    readme => "README.md",
    docs_readme => "docs/README.md",
    billing_exports => "docs/billing-exports.md",
    comparison => "docs/comparison.md",
    concepts => "docs/concepts.md",
    configuration => "docs/configuration.md",
    events => "docs/events.md",
    operations => "docs/operations.md",
    policies => "docs/policies.md",
    reconciliation => "docs/reconciliation.md",
    schema => "docs/schema.md",
    simulator => "docs/simulator.md",
    sql_cookbook => "docs/sql-cookbook.md",
}

/// Documents added after this file was written run too (each in its own thread).
#[test]
fn other_docs() {
    let runs: Vec<_> = all_docs()
        .into_iter()
        .filter(|doc| !LISTED.contains(&doc.as_str()))
        .map(|doc| (doc.clone(), std::thread::spawn(move || run_doc(&doc))))
        .collect();
    let failed: Vec<String> = runs
        .into_iter()
        .filter_map(|(doc, h)| h.join().is_err().then_some(doc))
        .collect();
    assert!(
        failed.is_empty(),
        "docs examples failed in {failed:?} (details above)"
    );
}

/// The `no-run` blocks, each with its reason; few of them.
#[test]
fn no_run_blocks_are_few_and_justified() {
    let mut no_run = Vec::new();
    for doc in all_docs() {
        for b in read_blocks(&doc) {
            if let Some(reason) = &b.ann.no_run {
                no_run.push(format!("{}:{} ({}): {reason}", b.doc, b.line, b.lang));
            }
        }
    }
    println!("no-run blocks:\n  {}", no_run.join("\n  "));
    assert!(
        no_run.len() <= NO_RUN_BUDGET,
        "{} no-run blocks, budget {NO_RUN_BUDGET}: make some runnable\n{}",
        no_run.len(),
        no_run.join("\n")
    );
    // Every listed document exists.
    for doc in LISTED {
        assert!(
            Path::new(&root().join(doc)).exists(),
            "{doc} is listed but missing"
        );
    }
}

#[test]
fn statement_splitting() {
    assert_eq!(
        split_statements("SELECT ';' AS x; -- a; comment\nSELECT 2;"),
        vec!["SELECT ';' AS x", "SELECT 2"]
    );
    assert_eq!(
        create_view("CREATE VIEW v AS\nSELECT 1"),
        Some(("v".to_owned(), "SELECT 1".to_owned()))
    );
}
