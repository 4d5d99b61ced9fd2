//! Prompt-cache simulation: a bounded set of prompt-prefix hashes; it must not count
//! tokens itself or know any wire format.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;

use crate::generate::{FNV_OFFSET, fnv1a};

/// Minimum prompt length (tokens) that can be cached, as OpenAI and Anthropic document.
pub(crate) const MIN_CACHEABLE: u64 = 1024;
/// OpenAI reports cache hits in 128-token increments above the minimum.
pub(crate) const OPENAI_INCREMENT: u64 = 128;

/// Remembered prefix hashes, oldest evicted first.
#[derive(Debug)]
pub(crate) struct PromptCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Inner {
    fn insert(&mut self, h: u64, capacity: usize) {
        if self.set.insert(h) {
            self.order.push_back(h);
            while self.order.len() > capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Rolling hash of token ids, namespaced by a key (the served model).
pub(crate) fn hash_ids(namespace: &str, ids: impl IntoIterator<Item = u32>) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, namespace.as_bytes());
    for id in ids {
        h = fnv1a(h, &id.to_le_bytes());
    }
    h
}

impl PromptCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// OpenAI-style automatic prefix caching: returns the cached token count for a
    /// prompt (the longest previously seen prefix of `1024 + 128·k` tokens) and
    /// remembers this prompt's prefixes.
    pub(crate) fn openai(&self, namespace: &str, ids: &[u32]) -> u64 {
        let len = ids.len() as u64;
        if len < MIN_CACHEABLE {
            return 0;
        }
        let mut checkpoints =
            Vec::with_capacity(((len - MIN_CACHEABLE) / OPENAI_INCREMENT + 1) as usize);
        let mut h = fnv1a(FNV_OFFSET, namespace.as_bytes());
        for (i, id) in ids.iter().enumerate() {
            h = fnv1a(h, &id.to_le_bytes());
            let n = i as u64 + 1;
            if n >= MIN_CACHEABLE && (n - MIN_CACHEABLE).is_multiple_of(OPENAI_INCREMENT) {
                checkpoints.push((n, h));
            }
        }
        let mut inner = self.inner.lock();
        let cached = checkpoints
            .iter()
            .rev()
            .find(|(_, h)| inner.set.contains(h))
            .map_or(0, |(n, _)| *n);
        for (_, h) in checkpoints {
            inner.insert(h, self.capacity);
        }
        cached
    }

    /// Explicit (Anthropic-style) caching of one prefix: `(read, write)` tokens. A
    /// prefix shorter than the minimum is neither read nor written.
    pub(crate) fn explicit(&self, prefix_hash: u64, prefix_tokens: u64) -> (u64, u64) {
        if prefix_tokens < MIN_CACHEABLE {
            return (0, 0);
        }
        let mut inner = self.inner.lock();
        if inner.set.contains(&prefix_hash) {
            (prefix_tokens, 0)
        } else {
            inner.insert(prefix_hash, self.capacity);
            (0, prefix_tokens)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn openai_prefix_increments() {
        let c = PromptCache::new(1000);
        let ids: Vec<u32> = (0..1500).collect();
        assert_eq!(c.openai("m", &ids), 0);
        assert_eq!(c.openai("m", &ids), 1408); // 1024 + 3·128
        assert_eq!(c.openai("other", &ids), 0);
        let mut longer = ids.clone();
        longer.extend(0..2000);
        assert_eq!(c.openai("m", &longer), 1408);
        assert_eq!(c.openai("m", &ids[..1000]), 0);
    }

    #[test]
    fn explicit_write_then_read() {
        let c = PromptCache::new(1000);
        assert_eq!(c.explicit(42, 2000), (0, 2000));
        assert_eq!(c.explicit(42, 2000), (2000, 0));
        assert_eq!(c.explicit(43, 10), (0, 0));
    }

    #[test]
    fn bounded() {
        let c = PromptCache::new(2);
        c.explicit(1, 2000);
        c.explicit(2, 2000);
        c.explicit(3, 2000);
        assert_eq!(c.explicit(1, 2000), (0, 2000));
    }
}
