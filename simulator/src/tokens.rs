//! Token counting with tiktoken: which encoding a model uses and the cached BPE
//! instances; it must not know about requests, providers' wire formats or caching.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

/// A tiktoken encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `cl100k_base`: GPT-4, GPT-3.5, embeddings; also used for Claude and Gemini models
    /// as a documented approximation.
    Cl100kBase,
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-4.5, GPT-5 and the o-series.
    O200kBase,
}

static CL100K: LazyLock<&'static CoreBPE> = LazyLock::new(tiktoken_rs::cl100k_base_singleton);
static O200K: LazyLock<&'static CoreBPE> = LazyLock::new(tiktoken_rs::o200k_base_singleton);

impl Encoding {
    pub(crate) fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::Cl100kBase => *CL100K,
            Encoding::O200kBase => *O200K,
        }
    }

    /// Token ids of `text`, special-token strings treated as ordinary text.
    pub(crate) fn encode(self, text: &str) -> Vec<u32> {
        self.bpe().encode_ordinary(text)
    }

    /// Number of tokens of `text`.
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.encode(text).len() as u64
    }
}

/// Loads both BPE tables (a few hundred ms once per process) so the first request
/// does not pay for it.
pub(crate) fn warm_up() {
    let _ = Encoding::Cl100kBase.bpe();
    let _ = Encoding::O200kBase.bpe();
}

/// The encoding the simulator uses for `model`: `o200k_base` for gpt-4o, gpt-4.1,
/// gpt-4.5, gpt-5, chatgpt-4o and the o-series (o1, o3, o4…), `cl100k_base` otherwise
/// (including all Claude and Gemini models, as an approximation). A fine-tuned
/// `ft:<base>:…` name uses its base model's encoding.
pub fn encoding_for_model(model: &str) -> Encoding {
    let model = model.strip_prefix("ft:").unwrap_or(model);
    let model = model.rsplit('/').next().unwrap_or(model);
    let o_series =
        model.len() >= 2 && model.as_bytes()[0] == b'o' && model.as_bytes()[1].is_ascii_digit();
    if o_series
        || model.starts_with("gpt-4o")
        || model.starts_with("gpt-4.1")
        || model.starts_with("gpt-4.5")
        || model.starts_with("gpt-5")
        || model.starts_with("chatgpt-4o")
        || model.starts_with("gpt-oss")
    {
        Encoding::O200kBase
    } else {
        Encoding::Cl100kBase
    }
}

/// Number of tokens of `text` for `model`, exactly as the simulator counts them.
///
/// The simulator's input tokens for a request are the sum of this over the request's
/// text pieces; its output tokens are this over the generated text.
pub fn count_tokens(model: &str, text: &str) -> u64 {
    encoding_for_model(model).count(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_model() {
        for m in [
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-4.1-nano",
            "gpt-5",
            "o1",
            "o3-mini",
            "o4-mini",
            "ft:gpt-4o-mini:acme::abc",
        ] {
            assert_eq!(encoding_for_model(m), Encoding::O200kBase, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "claude-sonnet-4-5",
            "gemini-2.5-flash",
            "omni-moderation",
        ] {
            assert_eq!(encoding_for_model(m), Encoding::Cl100kBase, "{m}");
        }
    }

    #[test]
    fn counts_known_strings() {
        assert_eq!(count_tokens("gpt-4o", ""), 0);
        assert_eq!(count_tokens("gpt-4", "hello world"), 2);
        assert_eq!(count_tokens("gpt-4o", "hello world"), 2);
        // Special-token text is ordinary text, never a panic.
        assert!(count_tokens("gpt-4o", "<|endoftext|>") > 1);
    }
}
