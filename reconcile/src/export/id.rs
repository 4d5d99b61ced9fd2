//! Deterministic identifiers of line items and billing events: a SHA-256 over
//! length-prefixed parts, so the same inputs always give the same id and a re-run never
//! double-bills. Must not know what the parts mean.

use sha2::{Digest, Sha256};

/// `tly_` and the first 16 bytes of SHA-256 over the length-prefixed parts, in hex
/// (36 characters: within Stripe's 100-character identifier limit).
pub(crate) fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"tally-export/1");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("tly_{}", hex::encode(&h.finalize()[..16]))
}

/// SHA-256 of `bytes` in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_delimited() {
        assert_ne!(stable_id(&["a", "bc"]), stable_id(&["ab", "c"]));
        assert_eq!(stable_id(&["x"]), stable_id(&["x"]));
        assert_eq!(stable_id(&["x"]).len(), 36);
    }
}
