//! `tally config`: the configuration reference (docs/configuration.md) generated from the
//! JSON Schema of the config types — their `///` docs are the descriptions, their
//! `Default` impls the defaults — a check of a config file, and the default config as
//! YAML. Owns the rendering of the reference and the problems a check reports; must not
//! hold settings, defaults or descriptions itself: those live with each section's types.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Map, Value};

use crate::config::{TallyConfig, merge};

/// `tally config …`
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Print the Markdown reference of every setting: section, key, type, default,
    /// environment variable and description (this is docs/configuration.md).
    Reference,
    /// Check a config file: unknown keys, values of the wrong type or out of range,
    /// references between sections. Exit status 1 if anything is wrong.
    Check {
        /// The YAML file to check (environment variables are not applied).
        file: PathBuf,
    },
    /// Print the default configuration as YAML.
    Default,
}

/// Run a `tally config` subcommand.
pub(crate) fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Reference => {
            print!("{}", reference()?);
            Ok(())
        }
        ConfigCommand::Default => {
            print!("{}", serde_yaml_ng::to_string(&TallyConfig::default())?);
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let problems = check(&file);
            if problems.is_empty() {
                println!("ok: {} is a valid tally configuration", file.display());
                return Ok(());
            }
            for p in &problems {
                eprintln!("{}: {p}", p.code());
            }
            bail!(
                "config.check: {} has {} problem(s), listed above; the settings are described in docs/configuration.md (`tally config reference`)",
                file.display(),
                problems.len()
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// check

/// One thing wrong with a config file. Each has a stable code ([`Problem::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The file cannot be read.
    Read { file: PathBuf, detail: String },
    /// The file is not YAML, or not a mapping at the top.
    Parse { file: PathBuf, detail: String },
    /// A key that is not a setting (typically a typo).
    UnknownKey {
        path: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    /// A value of the wrong type, or not one of the allowed values.
    InvalidValue { section: String, detail: String },
    /// A value the section's own validation refuses (ranges, references, hashes).
    Rejected { detail: String },
}

impl Problem {
    /// The stable code of this problem.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Problem::Read { .. } => "config.read",
            Problem::Parse { .. } => "config.parse",
            Problem::UnknownKey { .. } => "config.unknown_key",
            Problem::InvalidValue { .. } => "config.invalid_value",
            Problem::Rejected { .. } => "config.rejected",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Read { file, detail } => {
                write!(f, "cannot read {}: {detail}", file.display())
            }
            Problem::Parse { file, detail } => write!(
                f,
                "{} is not a YAML mapping of settings: {detail}",
                file.display()
            ),
            Problem::UnknownKey {
                path,
                suggestion,
                known,
            } => {
                write!(f, "`{path}` is not a setting")?;
                if let Some(s) = suggestion {
                    write!(f, "; did you mean `{s}`?")?;
                }
                if !known.is_empty() {
                    write!(f, " (settings here: {})", known.join(", "))?;
                }
                Ok(())
            }
            Problem::InvalidValue { section, detail } => {
                write!(f, "`{section}`: {detail}")
            }
            Problem::Rejected { detail } => write!(f, "{detail}"),
        }
    }
}

/// Every problem of a config file; empty when it is valid.
pub(crate) fn check(file: &Path) -> Vec<Problem> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return vec![Problem::Read {
                file: file.to_path_buf(),
                detail: e.to_string(),
            }];
        }
    };
    let given: Value = match serde_yaml_ng::from_str(&text) {
        Ok(Value::Null) => Value::Object(Map::new()),
        Ok(v @ Value::Object(_)) => v,
        Ok(other) => {
            return vec![Problem::Parse {
                file: file.to_path_buf(),
                detail: format!("the top level is {}", kind(&other)),
            }];
        }
        Err(e) => {
            return vec![Problem::Parse {
                file: file.to_path_buf(),
                detail: e.to_string(),
            }];
        }
    };
    let schema = match Schema::of_config() {
        Ok(s) => s,
        Err(e) => {
            return vec![Problem::Rejected {
                detail: format!("internal: the config schema is unavailable: {e}"),
            }];
        }
    };
    let mut problems = Vec::new();
    unknown_keys(&schema, &schema.root, &given, "", &mut problems);
    if !problems.is_empty() {
        return problems;
    }
    // Deserialize one top-level key at a time over the defaults, so a type error names
    // the section it is in (serde's own message does not carry the path).
    let Ok(defaults) = serde_json::to_value(TallyConfig::default()) else {
        return problems;
    };
    if let Value::Object(sections) = &given {
        for (key, value) in sections {
            let mut one = defaults.clone();
            let mut over = Map::new();
            over.insert(key.clone(), value.clone());
            merge(&mut one, Value::Object(over));
            if let Err(e) = serde_json::from_value::<TallyConfig>(one) {
                problems.push(Problem::InvalidValue {
                    section: key.clone(),
                    detail: e.to_string(),
                });
            }
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    let mut all = defaults;
    merge(&mut all, given);
    let cfg: TallyConfig = match serde_json::from_value(all) {
        Ok(c) => c,
        Err(e) => {
            return vec![Problem::InvalidValue {
                section: "(file)".into(),
                detail: e.to_string(),
            }];
        }
    };
    let rejected = |detail: String| Problem::Rejected { detail };
    problems.extend(cfg.proxy.validate().into_iter().map(rejected));
    if let Some(Err(e)) = cfg.admin.tls.as_ref().map(|t| t.acceptor()) {
        problems.push(rejected(format!("admin.tls: {e}")));
    }
    problems.extend(cfg.queries.problems().into_iter().map(rejected));
    if let Err(e) = cfg.ledger.validate() {
        problems.push(rejected(format!("ledger: {e}")));
    }
    if let Err(e) = cfg.simulator.validate() {
        problems.push(rejected(e.to_string()));
    }
    if let Some(kafka) = &cfg.kafka
        && let Err(e) = kafka.validate()
    {
        problems.push(rejected(e.to_string()));
    }
    problems
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Report keys of `given` that the schema does not know, recursively.
fn unknown_keys(
    schema: &Schema,
    node: &Value,
    given: &Value,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    let node = schema.non_null(node);
    match given {
        Value::Object(entries) => {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                let closed = node.get("additionalProperties") == Some(&Value::Bool(false));
                for (key, value) in entries {
                    let here = join(path, key);
                    match props.get(key) {
                        Some(sub) => unknown_keys(schema, sub, value, &here, problems),
                        None if closed => problems.push(Problem::UnknownKey {
                            suggestion: closest(key, props.keys()),
                            known: props.keys().cloned().collect(),
                            path: here,
                        }),
                        None => {}
                    }
                }
            } else if let Some(values) = node
                .get("additionalProperties")
                .filter(|v| v.is_object())
                .map(|v| schema.resolve(v))
            {
                for (key, value) in entries {
                    unknown_keys(schema, values, value, &join(path, key), problems);
                }
            } else if let Some(alts) = alternatives(node) {
                // An enum with data (`credentials: {api_key_env: VAR}`): the one variant
                // object whose key matches is checked; serde reports the rest.
                for alt in alts {
                    let alt = schema.resolve(alt);
                    let matches = alt
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| entries.keys().all(|k| p.contains_key(k)));
                    if matches {
                        unknown_keys(schema, alt, given, path, problems);
                        return;
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.get("items") {
                let item = schema.resolve(item);
                for (i, value) in items.iter().enumerate() {
                    unknown_keys(schema, item, value, &format!("{path}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The known key nearest to a typo, if one is near enough.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<String> {
    known
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let best = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(best);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// schema access

/// The JSON Schema of [`TallyConfig`], with `$ref` resolution.
struct Schema {
    root: Value,
    defs: Map<String, Value>,
}

impl Schema {
    fn of_config() -> Result<Self> {
        let root = serde_json::to_value(schemars::schema_for!(TallyConfig))?;
        let defs = root
            .get("$defs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Self { root, defs })
    }

    /// Follow `$ref`s to the schema they name.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(name) = node
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.defs.get(name) {
                Some(def) => node = def,
                None => break,
            }
        }
        node
    }

    /// The schema without its `null` alternative (an `Option`), resolved.
    fn non_null<'a>(&'a self, node: &'a Value) -> &'a Value {
        let node = self.resolve(node);
        if let Some(alts) = node.get("anyOf").and_then(Value::as_array) {
            let real: Vec<&Value> = alts.iter().filter(|a| !is_null_type(a)).collect();
            if let [one] = real.as_slice() {
                return self.resolve(one);
            }
        }
        node
    }
}

fn is_null_type(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

fn alternatives(node: &Value) -> Option<&Vec<Value>> {
    node.get("oneOf")
        .or_else(|| node.get("anyOf"))
        .and_then(Value::as_array)
}

fn is_optional(node: &Value) -> bool {
    match node.get("type") {
        Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
        _ => alternatives(node).is_some_and(|alts| alts.iter().any(is_null_type)),
    }
}

// ---------------------------------------------------------------------------------------
// reference

/// One setting in the reference.
struct Row {
    key: String,
    ty: String,
    default: String,
    env: String,
    description: String,
}

/// A table of settings under one heading.
struct Section {
    path: String,
    description: String,
    rows: Vec<Row>,
}

/// The Markdown reference of every setting.
pub(crate) fn reference() -> Result<String> {
    let schema = Schema::of_config()?;
    let defaults = serde_json::to_value(TallyConfig::default())?;
    let mut sections = Vec::new();
    let top = Section {
        path: String::new(),
        description: String::new(),
        rows: Vec::new(),
    };
    sections.push(top);
    walk_struct(
        &schema,
        &schema.root,
        Some(&defaults),
        "",
        Some("TALLY"),
        0,
        &mut sections,
    );

    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Generated by `tally config reference` from the config types; do not edit.\n     \
         tests/config_reference.rs fails when this file drifts; regenerate with\n     \
         TALLY_REGENERATE_DOCS=1 cargo test --test config_reference -->\n\n\
         tally reads one YAML file (`--config FILE`, default `./tally.yaml` if it exists).\n\
         Every setting has a default, so an empty file is a valid configuration; unknown\n\
         keys are refused. Layering, lowest first: defaults, the file, `TALLY_*`\n\
         environment variables, command-line flags.\n\n\
         An environment variable names the setting's path in upper case with `__` between\n\
         levels: `TALLY_LOG__FSYNC=always` sets `log.fsync`. Values are read as YAML\n\
         scalars, so numbers and booleans keep their type, and a list or map can be given\n\
         in YAML flow syntax (`TALLY_QUERIES__ADMIN_TOKENS='[\"sha256:…\"]'`). Settings\n\
         inside list items have no variable of their own: set the whole list.\n\n\
         Check a file with `tally config check FILE`; print the defaults with\n\
         `tally config default`.\n\n",
    );
    out.push_str("## Sections\n\n");
    for s in &sections {
        if s.rows.is_empty() {
            continue;
        }
        let depth = s.path.matches(['.', '[']).count();
        let title = if s.path.is_empty() {
            "top level".to_owned()
        } else {
            format!("`{}`", s.path)
        };
        out.push_str(&format!(
            "{}- [{title}](#{})\n",
            "  ".repeat(depth),
            anchor(&s.path)
        ));
    }
    for s in &sections {
        if s.rows.is_empty() {
            continue;
        }
        if s.path.is_empty() {
            out.push_str("\n## top level\n\n");
        } else {
            out.push_str(&format!("\n## `{}`\n\n", s.path));
        }
        if !s.description.is_empty() {
            out.push_str(&s.description);
            out.push_str("\n\n");
        }
        out.push_str("| key | type | default | environment variable | description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for r in &s.rows {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                r.key,
                cell(&r.ty),
                cell(&r.default),
                cell(&r.env),
                cell(&r.description)
            ));
        }
    }
    Ok(out)
}

/// A GitHub-style heading anchor for a section path.
fn anchor(path: &str) -> String {
    if path.is_empty() {
        return "top-level".to_owned();
    }
    path.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// Table-cell safe text: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn description(node: &Value) -> String {
    node.get("description")
        .and_then(Value::as_str)
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Add the rows of a struct schema to the section at `sections[index]`, and a section
/// for each nested struct, map of structs or list of structs.
fn walk_struct(
    schema: &Schema,
    node: &Value,
    defaults: Option<&Value>,
    path: &str,
    env: Option<&str>,
    index: usize,
    sections: &mut Vec<Section>,
) {
    let node = schema.non_null(node);
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Plain settings first, then nested sections, each alphabetically.
    let mut keys: Vec<&String> = props.keys().collect();
    keys.sort_by_key(|k| (nested_kind(schema, &props[k.as_str()]).is_some(), *k));
    for key in keys {
        let prop = &props[key.as_str()];
        let here = join(path, key);
        let env_here = env.map(|e| {
            format!(
                "{e}_{}{}",
                if e == "TALLY" { "" } else { "_" },
                key.to_ascii_uppercase()
            )
        });
        let default_here = defaults.and_then(|d| d.get(key.as_str()));
        let target = schema.non_null(prop);
        let mut text = description(prop);
        if text.is_empty() {
            text = description(target);
        }
        if text.is_empty() {
            text = "(no description: add a `///` doc comment to this field)".into();
        }
        match nested_kind(schema, prop) {
            Some(Nested::Struct) => {
                sections.push(Section {
                    path: here.clone(),
                    description: struct_description(
                        prop,
                        target,
                        is_optional(schema.resolve(prop)),
                    ),
                    rows: Vec::new(),
                });
                let at = sections.len() - 1;
                let d = default_here.filter(|d| !d.is_null());
                walk_struct(schema, target, d, &here, env_here.as_deref(), at, sections);
            }
            Some(Nested::Map(item)) => {
                sections[index].rows.push(Row {
                    key: key.clone(),
                    ty: format!(
                        "map of name → [`{here}.<name>`](#{})",
                        anchor(&format!("{here}.<name>"))
                    ),
                    default: render_default(default_here, prop, &required, key),
                    env: env_here
                        .as_ref()
                        .map(|e| format!("`{e}__<NAME>__…`"))
                        .unwrap_or_else(|| "—".into()),
                    description: text,
                });
                let sub = format!("{here}.<name>");
                sections.push(Section {
                    path: sub.clone(),
                    description: description(item),
                    rows: Vec::new(),
                });
                let at = sections.len() - 1;
                let sub_env = env_here.map(|e| format!("{e}__<NAME>"));
                walk_struct(schema, item, None, &sub, sub_env.as_deref(), at, sections);
            }
            Some(Nested::List(item)) => {
                sections[index].rows.push(Row {
                    key: key.clone(),
                    ty: format!("list of [`{here}[]`](#{})", anchor(&format!("{here}[]"))),
                    default: render_default(default_here, prop, &required, key),
                    env: env_here
                        .as_ref()
                        .map(|e| format!("`{e}` (YAML flow list)"))
                        .unwrap_or_else(|| "—".into()),
                    description: text,
                });
                let sub = format!("{here}[]");
                sections.push(Section {
                    path: sub.clone(),
                    description: description(item),
                    rows: Vec::new(),
                });
                let at = sections.len() - 1;
                walk_struct(schema, item, None, &sub, None, at, sections);
            }
            None => {
                sections[index].rows.push(Row {
                    key: key.clone(),
                    ty: type_name(schema, prop),
                    default: render_default(default_here, prop, &required, key),
                    env: env_here
                        .map(|e| format!("`{e}`"))
                        .unwrap_or_else(|| "—".into()),
                    description: text,
                });
            }
        }
    }
}

fn struct_description(prop: &Value, target: &Value, optional: bool) -> String {
    let mut text = description(prop);
    if text.is_empty() {
        text = description(target);
    }
    if optional {
        text.push_str(
            " The section is off unless present; the defaults below apply to keys it leaves out.",
        );
    }
    text.trim().to_owned()
}

enum Nested<'a> {
    Struct,
    Map(&'a Value),
    List(&'a Value),
}

/// Whether a property is a struct, a map of structs or a list of structs.
fn nested_kind<'a>(schema: &'a Schema, prop: &'a Value) -> Option<Nested<'a>> {
    let target = schema.non_null(prop);
    if target.get("properties").is_some() {
        return Some(Nested::Struct);
    }
    if let Some(values) = target.get("additionalProperties").filter(|v| v.is_object()) {
        let values = schema.non_null(values);
        if values.get("properties").is_some() {
            return Some(Nested::Map(values));
        }
    }
    if let Some(items) = target.get("items") {
        let items = schema.non_null(items);
        if items.get("properties").is_some() {
            return Some(Nested::List(items));
        }
    }
    None
}

/// A short human name of a schema's type.
fn type_name(schema: &Schema, node: &Value) -> String {
    let optional = is_optional(schema.resolve(node));
    let node = schema.non_null(node);
    let base = type_name_inner(schema, node, 0);
    if optional {
        format!("{base} (optional)")
    } else {
        base
    }
}

fn type_name_inner(schema: &Schema, node: &Value, depth: usize) -> String {
    let node = schema.non_null(node);
    if depth > 4 {
        return "value".into();
    }
    if let Some(c) = node.get("const") {
        return format!("`{}`", plain(c));
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        return format!("one of {}", names.join(", "));
    }
    if let Some(alts) = alternatives(node) {
        let names: Vec<String> = alts
            .iter()
            .filter(|a| !is_null_type(a))
            .map(|a| type_name_inner(schema, a, depth + 1))
            .collect();
        let all_consts = names.iter().all(|n| n.starts_with('`'));
        return if all_consts {
            format!("one of {}", names.join(", "))
        } else {
            names.join(" or ")
        };
    }
    let ty = match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("value")
            .to_owned(),
        _ => "value".to_owned(),
    };
    match ty.as_str() {
        "object" => {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                let fields: Vec<String> = props
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", type_name_inner(schema, v, depth + 1)))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            } else if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object())
            {
                format!(
                    "map of string → {}",
                    type_name_inner(schema, values, depth + 1)
                )
            } else {
                "map".into()
            }
        }
        "array" => match node.get("items") {
            Some(items) => format!("list of {}", type_name_inner(schema, items, depth + 1)),
            None => "list".into(),
        },
        "integer" => {
            let unsigned = node
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| m >= 0.0);
            if unsigned {
                "integer ≥ 0".into()
            } else {
                "integer".into()
            }
        }
        other => other.to_owned(),
    }
}

/// A JSON value as plain text (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_default(default: Option<&Value>, prop: &Value, required: &[&str], key: &str) -> String {
    let value = default.or_else(|| prop.get("default"));
    match value {
        None if required.contains(&key) => "required".into(),
        None | Some(Value::Null) => "—".into(),
        Some(Value::Object(m)) if m.values().any(Value::is_object) => {
            let names: Vec<String> = m.keys().map(|k| format!("`{k}`")).collect();
            format!("{} (see `tally config default`)", names.join(", "))
        }
        Some(v) => format!(
            "`{}`",
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        ),
    }
}
