//! Gateway API keys: finding the key in a request (OpenAI, Anthropic and Gemini styles,
//! or `x-tally-key`), and resolving it to tenant, key id and labels through SHA-256
//! hashes. Owns the only code that touches key secrets; must never log, store or emit a
//! secret (only ids and hashes).

use std::collections::{BTreeMap, HashMap};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use tally_events::Provider;

use crate::config::KeyConfig;

/// Who a gateway key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
}

/// Where the gateway key was found; decides which headers are gateway-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLocation {
    /// `x-tally-key`: the provider credentials headers are the client's own.
    TallyHeader,
    /// `Authorization: Bearer`.
    Bearer,
    /// `x-api-key`.
    XApiKey,
    /// `x-goog-api-key`.
    GoogApiKey,
    /// `?key=` query parameter.
    QueryKey,
}

/// The configured keys, by hash.
#[derive(Clone, Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], KeyInfo>,
    dev_keys: bool,
}

/// `sha256:<hex>` of a secret, the form stored in config.
pub fn hash_secret(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Parse `sha256:<64 hex>` into bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

impl KeyStore {
    /// Build from config; entries with malformed hashes are skipped (config validation
    /// reports them).
    pub fn new(keys: &[KeyConfig], dev_keys: bool) -> Self {
        let by_hash = keys
            .iter()
            .filter_map(|k| {
                Some((
                    parse_hash(&k.hash)?,
                    KeyInfo {
                        key_id: k.id.clone(),
                        tenant: k.tenant.clone(),
                        labels: k.labels.clone(),
                    },
                ))
            })
            .collect();
        Self { by_hash, dev_keys }
    }

    /// Resolve a secret. Constant-time comparison is unnecessary: lookups are by hash.
    pub fn resolve(&self, secret: &str) -> Option<KeyInfo> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some(info) = self.by_hash.get(&digest) {
            return Some(info.clone());
        }
        if self.dev_keys {
            return dev_key(secret, &digest);
        }
        None
    }
}

fn dev_key(secret: &str, digest: &[u8; 32]) -> Option<KeyInfo> {
    let rest = secret.strip_prefix("dev-")?;
    let (tenant, suffix) = rest.rsplit_once('-')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !ok(tenant) || !ok(suffix) {
        return None;
    }
    Some(KeyInfo {
        key_id: format!("dev-{tenant}-{}", hex::encode(&digest[..4])),
        tenant: tenant.to_owned(),
        labels: BTreeMap::new(),
    })
}

/// Find the gateway key in a request, in the style of `provider`.
pub fn find_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    provider: Option<Provider>,
) -> Option<(String, KeyLocation)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(k) = header("x-tally-key").filter(|k| !k.is_empty()) {
        return Some((k.to_owned(), KeyLocation::TallyHeader));
    }
    let bearer = || {
        header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_owned(), KeyLocation::Bearer))
    };
    let x_api_key = || {
        header("x-api-key")
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_owned(), KeyLocation::XApiKey))
    };
    let goog = || {
        header("x-goog-api-key")
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_owned(), KeyLocation::GoogApiKey))
            .or_else(|| {
                query?
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("key="))
                    .filter(|k| !k.is_empty())
                    .map(|k| (k.to_owned(), KeyLocation::QueryKey))
            })
    };
    match provider {
        Some(Provider::Anthropic) => x_api_key().or_else(bearer),
        Some(Provider::Gemini) => goog().or_else(bearer),
        _ => bearer().or_else(x_api_key).or_else(goog),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn store() -> KeyStore {
        KeyStore::new(
            &[KeyConfig {
                id: "key-a".into(),
                tenant: "acme".into(),
                hash: hash_secret("sk-tally-secret"),
                labels: BTreeMap::from([("team".into(), "search".into())]),
            }],
            false,
        )
    }

    #[test]
    fn configured_keys_resolve_by_hash_only() {
        let s = store();
        let info = s.resolve("sk-tally-secret");
        assert_eq!(
            info.map(|i| (i.key_id, i.tenant)),
            Some(("key-a".into(), "acme".into()))
        );
        assert_eq!(s.resolve("sk-tally-secreT"), None);
        assert_eq!(s.resolve("dev-acme-1"), None, "dev keys are off");
    }

    #[test]
    fn dev_keys_name_their_tenant() {
        let s = KeyStore::new(&[], true);
        let info = s.resolve("dev-team_a-42");
        assert_eq!(info.as_ref().map(|i| i.tenant.as_str()), Some("team_a"));
        assert!(
            info.is_some_and(|i| !i.key_id.contains("42")),
            "key id must not contain the secret"
        );
        assert_eq!(s.resolve("dev--x"), None);
        assert_eq!(s.resolve("dev-acme"), None);
        assert_eq!(s.resolve("prod-acme-1"), None);
    }

    #[test]
    fn keys_are_found_in_each_providers_style() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(
            find_key(&h, None, Some(Provider::Openai)).map(|k| k.0),
            Some("abc".into())
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("ant"));
        assert_eq!(
            find_key(&h, None, Some(Provider::Anthropic)).map(|k| k.1),
            Some(KeyLocation::XApiKey)
        );
        let h = HeaderMap::new();
        assert_eq!(
            find_key(&h, Some("alt=sse&key=gem"), Some(Provider::Gemini)),
            Some(("gem".into(), KeyLocation::QueryKey))
        );
        let mut h = HeaderMap::new();
        h.insert("x-tally-key", HeaderValue::from_static("gw"));
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer provider-key"),
        );
        assert_eq!(
            find_key(&h, None, Some(Provider::Openai)).map(|k| k.1),
            Some(KeyLocation::TallyHeader)
        );
        assert_eq!(find_key(&HeaderMap::new(), None, None), None);
    }

    #[test]
    fn hashes_parse_strictly() {
        assert!(parse_hash(&hash_secret("x")).is_some());
        assert!(parse_hash("sha256:zz").is_none());
        assert!(parse_hash("md5:00").is_none());
    }
}
