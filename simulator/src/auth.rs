//! API-key extraction and fingerprinting; it must not validate keys against anything
//! (any non-empty key is accepted) and must never store or log a key itself.

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The first non-empty key among `Authorization: Bearer`, `x-api-key`,
/// `x-goog-api-key` and the `key` query parameter.
pub(crate) fn extract_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(v) = header("authorization") {
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if token.is_some() {
            return token;
        }
    }
    header("x-api-key")
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| query_param(query, "key").filter(|s| !s.is_empty()))
}

/// A raw (not percent-decoded) query parameter.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// A short, stable, non-reversible fingerprint of a key: `sha256:` and the first 12 hex
/// digits of its SHA-256.
pub(crate) fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..6]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn key_sources() {
        assert_eq!(
            extract_key(&headers(&[("authorization", "Bearer sk-1")]), None),
            Some("sk-1")
        );
        assert_eq!(
            extract_key(&headers(&[("x-api-key", "ak")]), None),
            Some("ak")
        );
        assert_eq!(
            extract_key(&headers(&[("x-goog-api-key", "g")]), None),
            Some("g")
        );
        assert_eq!(
            extract_key(&HeaderMap::new(), Some("alt=sse&key=q")),
            Some("q")
        );
        assert_eq!(
            extract_key(&headers(&[("authorization", "Bearer ")]), Some("key=")),
            None
        );
        assert_eq!(extract_key(&HeaderMap::new(), None), None);
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        let f = fingerprint("sk-test");
        assert_eq!(f.len(), "sha256:".len() + 12);
        assert_eq!(f, fingerprint("sk-test"));
        assert_ne!(f, fingerprint("sk-test2"));
        assert!(!f.contains("sk-test"));
    }
}
