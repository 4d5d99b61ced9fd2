//! Query-string parsing for the report endpoints (repeated and `name[]` array
//! parameters, percent-decoding) and the page cursors; it must not aggregate anything.

use super::ReportError;
use crate::openai::base64_encode;

/// Decoded query parameters in order. Array forms `name[]` and `name[3]` are stored
/// under `name`.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s`. A literal `+` stays `+` (so `+00:00` offsets survive unencoded).
fn percent_decode(s: &str) -> Result<String, ReportError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_val);
            let lo = b.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    return Err(ReportError::invalid(
                        "query",
                        "malformed percent-encoding in the query string",
                    ));
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ReportError::invalid("query", "the query string is not UTF-8"))
}

impl Params {
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ReportError> {
        let mut pairs = Vec::new();
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let mut k = percent_decode(k)?;
            if let Some(open) = k.find('[')
                && k.ends_with(']')
            {
                k.truncate(open);
            }
            pairs.push((k, percent_decode(v)?));
        }
        Ok(Self { pairs })
    }

    /// The last value of `name`, if present and non-empty.
    pub(crate) fn one(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (repeated or array form), comma lists split.
    pub(crate) fn many(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ReportError> {
        self.one(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ReportError::invalid(name, format!("{v:?} is not an integer")))
            })
            .transpose()
    }

    pub(crate) fn limit(&self) -> Result<Option<u32>, ReportError> {
        self.one("limit")
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    ReportError::invalid("limit", format!("{v:?} is not a positive integer"))
                })
            })
            .transpose()
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ReportError> {
        self.one(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ReportError::invalid(
                    name,
                    format!("{v:?} is not true or false"),
                )),
            })
            .transpose()
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// OpenAI cursor: base64 of the next bucket's start as 8 big-endian bytes.
pub(crate) fn openai_cursor(start: i64) -> String {
    base64_encode(&start.to_be_bytes())
}

pub(crate) fn parse_openai_cursor(s: &str) -> Result<i64, ReportError> {
    base64_decode(s)
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| ReportError::invalid("page", format!("{s:?} is not a page cursor")))
}

/// Anthropic cursor: `page_` and the base64 of the next bucket's RFC 3339 start.
pub(crate) fn anthropic_cursor(start: i64) -> String {
    format!("page_{}", base64_encode(super::rfc3339(start).as_bytes()))
}

pub(crate) fn parse_anthropic_cursor(s: &str) -> Result<i64, ReportError> {
    s.strip_prefix("page_")
        .and_then(base64_decode)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| super::config::parse_moment(&t))
        .map(|us| us.div_euclid(1_000_000))
        .ok_or_else(|| ReportError::invalid("page", format!("{s:?} is not a page cursor")))
}

/// An RFC 3339 parameter as Unix seconds (fractions dropped).
pub(crate) fn moment_param(name: &str, v: &str) -> Result<i64, ReportError> {
    super::config::parse_moment(v)
        .map(|us| us.div_euclid(1_000_000))
        .ok_or_else(|| ReportError::invalid(name, format!("{v:?} is not an RFC 3339 timestamp")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn arrays_repeats_and_decoding() {
        let p = Params::parse(Some(
            "group_by[]=model&group_by=api_key_id,project_id&group_by%5B%5D=batch&starting_at=2025-08-01T00%3A00%3A00%2B00%3A00&x=1&limit=",
        ))
        .unwrap();
        assert_eq!(
            p.many("group_by"),
            ["model", "api_key_id", "project_id", "batch"]
        );
        assert_eq!(p.one("starting_at"), Some("2025-08-01T00:00:00+00:00"));
        assert_eq!(p.one("limit"), None);
        assert_eq!(p.int("x").unwrap(), Some(1));
        assert!(Params::parse(Some("a=%zz")).is_err());
        assert!(Params::parse(Some("a=b")).unwrap().int("a").is_err());
    }

    #[test]
    fn cursors_round_trip() {
        for t in [0, 1_730_419_200, 86_400 * 20_000] {
            assert_eq!(parse_openai_cursor(&openai_cursor(t)).unwrap(), t);
            let a = anthropic_cursor(t);
            assert!(a.starts_with("page_"));
            assert_eq!(parse_anthropic_cursor(&a).unwrap(), t);
        }
        // The documented example cursor decodes to its bucket.
        assert_eq!(
            parse_anthropic_cursor("page_MjAyNS0wNS0xNFQwMDowMDowMFo=").unwrap(),
            1_747_180_800
        );
        assert!(parse_openai_cursor("nope!").is_err());
        assert!(parse_anthropic_cursor("MjAy").is_err());
    }
}
