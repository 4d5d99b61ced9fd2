//! Credentials of the query APIs: resolves a bearer token to a [`Principal`] by its
//! sha256 hash (`queries.admin_tokens`, `queries.tenant_tokens`). Must not store or log
//! token secrets, and must not know about HTTP beyond the `Authorization` header's text.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::{QueryConfig, parse_token_hash};
use crate::error::QueryError;
use crate::scope::Principal;

/// Token hash → principal.
#[derive(Clone, Default)]
pub struct Authenticator {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.by_hash.len())
            .finish()
    }
}

impl Authenticator {
    /// From the configuration; malformed hashes are skipped (config validation reports
    /// them). A hash listed as admin stays admin even if also listed for a tenant.
    pub fn new(config: &QueryConfig) -> Self {
        let mut by_hash = HashMap::new();
        for (hash, tenant) in &config.tenant_tokens {
            if let Some(h) = parse_token_hash(hash) {
                by_hash.insert(h, Principal::Tenant(tenant.clone()));
            }
        }
        for hash in &config.admin_tokens {
            if let Some(h) = parse_token_hash(hash) {
                by_hash.insert(h, Principal::Admin);
            }
        }
        Self { by_hash }
    }

    /// The principal of a token secret, if it is known.
    pub fn resolve(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }

    /// The principal of an `Authorization: Bearer <token>` header value.
    pub fn authorize(&self, header: Option<&str>) -> Result<Principal, QueryError> {
        let Some(value) = header else {
            return Err(QueryError::Unauthorized("no credentials".to_owned()));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                QueryError::Unauthorized(
                    "the Authorization header is not `Bearer <token>`".to_owned(),
                )
            })?;
        self.resolve(token)
            .ok_or_else(|| QueryError::Unauthorized("unknown token".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hash_token;

    #[test]
    fn tokens_resolve_by_hash() {
        let mut c = QueryConfig::default();
        c.admin_tokens.push(hash_token("root"));
        c.tenant_tokens.insert(hash_token("t-acme"), "acme".into());
        let a = Authenticator::new(&c);
        assert_eq!(
            a.authorize(Some("Bearer root")).ok(),
            Some(Principal::Admin)
        );
        assert_eq!(
            a.authorize(Some("Bearer t-acme")).ok(),
            Some(Principal::Tenant("acme".into()))
        );
        assert_eq!(
            a.authorize(Some("Bearer nope")).err().map(|e| e.code()),
            Some("query.unauthorized")
        );
        assert!(a.authorize(None).is_err());
        assert!(a.authorize(Some("Basic cm9vdA==")).is_err());
    }
}
