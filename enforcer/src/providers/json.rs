//! Small JSON helpers shared by the provider adapters: lenient field readers over
//! `serde_json::Value` and a byte-span scanner used to rewrite a request body in place.
//! Must not know any provider's schema, and must not panic on malformed input (the scanner
//! returns `None` instead).

use serde_json::Value;

/// The first of `keys` present (and not null) in `v`; for proto-JSON APIs (Gemini) that
/// accept both `lowerCamel` and `snake_case` names.
pub(crate) fn get_any<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null()))
}

/// A non-negative integer, leniently: integers, integral floats and numeric strings
/// (proto-JSON encodes int64 as strings). Anything else reads as `None`.
pub(crate) fn as_count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// `v[key]` as a count, 0 when absent or not a count.
pub(crate) fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(as_count).unwrap_or(0)
}

/// The first of `keys` in `v` as a count, 0 when absent.
pub(crate) fn count_any(v: &Value, keys: &[&str]) -> u64 {
    get_any(v, keys).and_then(as_count).unwrap_or(0)
}

/// `v[key]` as a string.
pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// One member of a JSON object, located in the source bytes.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) key: String,
    pub(crate) value_start: usize,
    pub(crate) value_end: usize,
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `text[i]` is `"`; returns the index just past the closing quote.
fn skip_string(text: &[u8], i: usize) -> Option<usize> {
    if text.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = i + 1;
    loop {
        match text.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Returns the index just past the value starting at `i`.
fn skip_value(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => skip_string(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match text.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(b) = text.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the object whose `{` is at `text[open]`, in source order, and the index
/// of its closing `}`. Meant for text already validated as JSON; `None` if it is not.
pub(crate) fn object_members(text: &[u8], open: usize) -> Option<(Vec<Member>, usize)> {
    if text.get(open) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = skip_ws(text, open + 1);
    if text.get(i) == Some(&b'}') {
        return Some((members, i));
    }
    loop {
        i = skip_ws(text, i);
        let key_start = i;
        i = skip_string(text, i)?;
        let key: String = serde_json::from_slice(text.get(key_start..i)?).ok()?;
        i = skip_ws(text, i);
        if text.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(text, i + 1);
        let value_start = i;
        i = skip_value(text, i)?;
        members.push(Member {
            key,
            value_start,
            value_end: i,
        });
        i = skip_ws(text, i);
        match text.get(i)? {
            b',' => i += 1,
            b'}' => return Some((members, i)),
            _ => return None,
        }
    }
}

/// Index of the first non-whitespace byte.
pub(crate) fn first_token(text: &[u8]) -> usize {
    skip_ws(text, 0)
}

/// `text` with `text[start..end]` replaced by `with`.
pub(crate) fn splice(text: &[u8], start: usize, end: usize, with: &[u8]) -> Option<Vec<u8>> {
    let (head, rest) = (text.get(..start)?, text.get(end..)?);
    let mut out = Vec::with_capacity(text.len() + with.len());
    out.extend_from_slice(head);
    out.extend_from_slice(with);
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn members_with_nesting_and_escapes() {
        let text = br#" {"a" : {"x":[1,{"y":"}"}]}, "b\"c":"q\\", "d":-1.5e3,"e":null}"#;
        let (m, close) = object_members(text, first_token(text)).unwrap();
        let keys: Vec<_> = m.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a", "b\"c", "d", "e"]);
        assert_eq!(
            &text[m[0].value_start..m[0].value_end],
            br#"{"x":[1,{"y":"}"}]}"#
        );
        assert_eq!(&text[m[1].value_start..m[1].value_end], br#""q\\""#);
        assert_eq!(&text[m[2].value_start..m[2].value_end], b"-1.5e3");
        assert_eq!(text[close], b'}');
    }

    #[test]
    fn malformed_is_none() {
        assert!(object_members(b"{\"a\":", 0).is_none());
        assert!(object_members(b"{\"a\" 1}", 0).is_none());
        assert!(object_members(b"[1]", 0).is_none());
        assert!(object_members(b"{\"a\":\"unterminated", 0).is_none());
    }

    #[test]
    fn lenient_counts() {
        let v: Value =
            serde_json::json!({"a": 3, "b": "12", "c": 2.0, "d": -1, "e": 1.5, "f": null});
        assert_eq!(count(&v, "a"), 3);
        assert_eq!(count(&v, "b"), 12);
        assert_eq!(count(&v, "c"), 2);
        assert_eq!(v.get("d").and_then(as_count), None);
        assert_eq!(v.get("e").and_then(as_count), None);
        assert_eq!(count_any(&v, &["f", "a"]), 3);
    }
}
