//! Walking provider JSON with the path of every value at hand, so a parse error names
//! the file (or URL) and the JSON path (`$.data[2].results[0].input_tokens`). Must not
//! know any provider's field names.

use serde_json::{Map, Value};
use tally_events::Timestamp;

use crate::error::ReconcileError;
use crate::import::decimal;

/// Where a value is: the file or URL, and its JSON path.
#[derive(Clone, Debug)]
pub(crate) struct At<'a> {
    pub(crate) file: &'a str,
    pub(crate) path: String,
}

impl<'a> At<'a> {
    pub(crate) fn root(file: &'a str, prefix: &str) -> Self {
        Self {
            file,
            path: if prefix.is_empty() {
                "$".to_owned()
            } else {
                prefix.to_owned()
            },
        }
    }

    pub(crate) fn key(&self, k: &str) -> At<'a> {
        At {
            file: self.file,
            path: format!("{}.{k}", self.path),
        }
    }

    pub(crate) fn index(&self, i: usize) -> At<'a> {
        At {
            file: self.file,
            path: format!("{}[{i}]", self.path),
        }
    }

    pub(crate) fn err(&self, detail: impl Into<String>) -> ReconcileError {
        ReconcileError::parse(format!("{}: {}", self.file, self.path), detail)
    }
}

/// The JSON documents in `bytes`: one value, several concatenated or one per line
/// (pages saved one after another), or one array of pages. Each comes with the path
/// prefix its errors should carry.
pub(crate) fn documents(bytes: &[u8], file: &str) -> Result<Vec<(String, Value)>, ReconcileError> {
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    for (n, v) in stream.enumerate() {
        let v = v.map_err(|e| {
            ReconcileError::parse(
                format!("{file}: line {}, column {}", e.line(), e.column()),
                format!("not valid JSON: {e}"),
            )
        })?;
        out.push((n, v));
    }
    let single = out.len() == 1;
    let mut docs = Vec::new();
    for (n, v) in out {
        let prefix = if single {
            "$".to_owned()
        } else {
            format!("document {}: $", n + 1)
        };
        match v {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    docs.push((format!("{prefix}[{i}]"), item));
                }
            }
            other => docs.push((prefix, other)),
        }
    }
    if docs.is_empty() {
        return Err(ReconcileError::parse(file, "the file holds no JSON"));
    }
    Ok(docs)
}

pub(crate) fn object<'v>(
    v: &'v Value,
    at: &At<'_>,
) -> Result<&'v Map<String, Value>, ReconcileError> {
    v.as_object()
        .ok_or_else(|| at.err(format!("expected an object, found {}", kind(v))))
}

pub(crate) fn array<'v>(
    m: &'v Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<&'v Vec<Value>, ReconcileError> {
    match m.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(at
            .key(key)
            .err(format!("expected an array, found {}", kind(v)))),
        None => Err(at.err(format!("`{key}` is missing"))),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A non-negative integer count; absent or null is 0.
pub(crate) fn count(m: &Map<String, Value>, key: &str, at: &At<'_>) -> Result<u64, ReconcileError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            at.key(key)
                .err(format!("expected a non-negative whole number, found {n}"))
        }),
        Some(v) => Err(at
            .key(key)
            .err(format!("expected a number, found {}", kind(v)))),
    }
}

/// A count that must be present (e.g. `num_model_requests`).
pub(crate) fn required_count(
    m: &Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<u64, ReconcileError> {
    if m.get(key).is_none_or(Value::is_null) {
        return Err(at.err(format!("`{key}` is missing")));
    }
    count(m, key, at)
}

/// An optional string; null or absent is `None`.
pub(crate) fn opt_str(
    m: &Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<Option<String>, ReconcileError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(at
            .key(key)
            .err(format!("expected a string, found {}", kind(v)))),
    }
}

pub(crate) fn opt_bool(
    m: &Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<Option<bool>, ReconcileError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(at
            .key(key)
            .err(format!("expected true, false or null, found {}", kind(v)))),
    }
}

/// Unix seconds (a whole number) as a timestamp.
pub(crate) fn unix_seconds(
    m: &Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<Timestamp, ReconcileError> {
    let v = m
        .get(key)
        .ok_or_else(|| at.err(format!("`{key}` is missing")))?;
    v.as_i64()
        .and_then(|s| s.checked_mul(1_000_000))
        .map(Timestamp::from_micros)
        .ok_or_else(|| {
            at.key(key)
                .err(format!("expected Unix seconds (a whole number), found {v}"))
        })
}

/// An RFC 3339 timestamp string.
pub(crate) fn rfc3339(
    m: &Map<String, Value>,
    key: &str,
    at: &At<'_>,
) -> Result<Timestamp, ReconcileError> {
    match m.get(key) {
        Some(Value::String(s)) => Timestamp::parse(s).map_err(|e| {
            at.key(key)
                .err(format!("`{s}` is not an RFC 3339 timestamp: {e}"))
        }),
        Some(v) => Err(at.key(key).err(format!(
            "expected an RFC 3339 timestamp string, found {}",
            kind(v)
        ))),
        None => Err(at.err(format!("`{key}` is missing"))),
    }
}

/// A decimal amount (a JSON number or a decimal string) × 10^shift, exactly (see
/// [`decimal::scaled`]).
pub(crate) fn amount(v: Option<&Value>, shift: i32, at: &At<'_>) -> Result<i64, ReconcileError> {
    let text = match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(at.err(format!("expected an amount, found {}", kind(v)))),
        None => return Err(at.err("the amount is missing")),
    };
    decimal::scaled(&text, shift).map_err(|e| at.err(e))
}

/// `bucket_end` must be after `bucket_start`.
pub(crate) fn check_bucket(
    start: Timestamp,
    end: Timestamp,
    at: &At<'_>,
) -> Result<(), ReconcileError> {
    if end <= start {
        return Err(at.err(format!(
            "the bucket ends ({end}) before it starts ({start})"
        )));
    }
    Ok(())
}
