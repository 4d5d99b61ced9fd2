//! The input side: which text of a request counts as prompt and how many tokens (and
//! cached tokens) it makes; it must not shape responses or decide faults.

use std::borrow::Cow;

use serde_json::Value;

use crate::cache::{PromptCache, hash_ids};
use crate::tokens::Encoding;

/// Keys whose string values (recursively) are prompt text.
const TEXT_KEYS: &[&str] = &[
    "text",
    "content",
    "arguments",
    "output",
    "parts",
    "thinking",
    "refusal",
    "tool_calls",
    "function",
    "functionCall",
    "functionResponse",
];
/// Keys whose object values are structured data sent to the model; counted as their
/// compact JSON.
const JSON_KEYS: &[&str] = &["input", "args", "response"];

/// The text pieces of a request, in prompt order.
#[derive(Debug, Default)]
pub(crate) struct Pieces<'a> {
    pub(crate) items: Vec<Cow<'a, str>>,
    /// Number of leading pieces covered by an explicit cache breakpoint (Anthropic
    /// `cache_control`): the cacheable prefix is `items[..mark]`.
    pub(crate) cache_mark: Option<usize>,
}

impl<'a> Pieces<'a> {
    /// Adds every prompt string found in `v` (a string, an array of parts or
    /// messages, or an object with text-bearing keys).
    pub(crate) fn collect(&mut self, v: &'a Value) {
        match v {
            Value::String(s) if !s.is_empty() => self.items.push(Cow::Borrowed(s)),
            Value::Array(a) => a.iter().for_each(|x| self.collect(x)),
            Value::Object(o) => {
                for (k, x) in o {
                    if TEXT_KEYS.contains(&k.as_str()) {
                        self.collect(x);
                    } else if JSON_KEYS.contains(&k.as_str()) && x.is_object() {
                        self.push_json(x);
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds the compact JSON of `v` as one piece (used for tool definitions).
    pub(crate) fn push_json(&mut self, v: &Value) {
        if let Ok(s) = serde_json::to_string(v) {
            self.items.push(Cow::Owned(s));
        }
    }

    /// Marks everything collected so far as the cacheable prefix.
    pub(crate) fn mark_cache(&mut self) {
        self.cache_mark = Some(self.items.len());
    }
}

/// Token ids of all pieces, concatenated.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) ids: Vec<u32>,
    /// Token offset just after each piece.
    pub(crate) ends: Vec<usize>,
}

impl Encoded {
    pub(crate) fn new(enc: Encoding, pieces: &Pieces<'_>) -> Self {
        let mut out = Encoded {
            ids: Vec::new(),
            ends: Vec::with_capacity(pieces.items.len()),
        };
        for p in &pieces.items {
            out.ids.extend(enc.encode(p));
            out.ends.push(out.ids.len());
        }
        out
    }

    pub(crate) fn total(&self) -> u64 {
        self.ids.len() as u64
    }
}

/// Input usage of one request, in uniform terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InputUsage {
    /// All prompt tokens, cached and cache-written ones included.
    pub(crate) total: u64,
    /// Tokens read from the prompt cache.
    pub(crate) cached: u64,
    /// Tokens written to the prompt cache (Anthropic only).
    pub(crate) cache_write: u64,
}

impl InputUsage {
    /// Tokens neither read from nor written to the cache (Anthropic's `input_tokens`).
    pub(crate) fn uncached(&self) -> u64 {
        self.total
            .saturating_sub(self.cached)
            .saturating_sub(self.cache_write)
    }
}

/// OpenAI semantics: automatic prefix caching for prompts of 1024+ tokens.
pub(crate) fn openai_input(
    enc: Encoding,
    cache: &PromptCache,
    model: &str,
    pieces: &Pieces<'_>,
) -> InputUsage {
    let e = Encoded::new(enc, pieces);
    InputUsage {
        total: e.total(),
        cached: cache.openai(model, &e.ids),
        cache_write: 0,
    }
}

/// Anthropic semantics: only a prefix ending at a `cache_control` breakpoint is cached;
/// the first time it is written, later it is read.
pub(crate) fn anthropic_input(
    enc: Encoding,
    cache: &PromptCache,
    model: &str,
    pieces: &Pieces<'_>,
) -> InputUsage {
    let e = Encoded::new(enc, pieces);
    let mut usage = InputUsage {
        total: e.total(),
        ..InputUsage::default()
    };
    if let Some(mark) = pieces.cache_mark.filter(|m| *m > 0) {
        let end = e.ends.get(mark - 1).copied().unwrap_or(e.ids.len());
        let prefix = e.ids.get(..end).unwrap_or(&e.ids);
        let (read, write) =
            cache.explicit(hash_ids(model, prefix.iter().copied()), prefix.len() as u64);
        usage.cached = read;
        usage.cache_write = write;
    }
    usage
}

/// Plain count, no caching.
pub(crate) fn plain_input(enc: Encoding, pieces: &Pieces<'_>) -> u64 {
    pieces.items.iter().map(|p| enc.count(p)).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_nested_text() {
        let v = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "model", "parts": [{"text": "hi"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]}
        ]);
        let mut p = Pieces::default();
        p.collect(&v);
        let texts: Vec<&str> = p.items.iter().map(|c| c.as_ref()).collect();
        assert_eq!(texts, ["be brief", "hello", "{\"a\":1}", "hi", "{\"a\":1}"]);
    }

    #[test]
    fn anthropic_prefix_caching() {
        let cache = PromptCache::new(100);
        let long = "word ".repeat(1500);
        let v = json!(long);
        let mut p = Pieces::default();
        p.collect(&v);
        p.mark_cache();
        let q = json!("question");
        p.collect(&q);
        let first = anthropic_input(Encoding::Cl100kBase, &cache, "m", &p);
        let second = anthropic_input(Encoding::Cl100kBase, &cache, "m", &p);
        let prefix = Encoding::Cl100kBase.count(&long);
        assert_eq!(first.cache_write, prefix);
        assert_eq!(first.cached, 0);
        assert_eq!(second.cached, prefix);
        assert_eq!(second.cache_write, 0);
        assert_eq!(second.uncached(), 1);
        assert_eq!(first.total, prefix + 1);
    }
}
