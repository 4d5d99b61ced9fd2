//! Deterministic output: the seeded RNG, request hashing and generated text split into
//! chunks of known token counts; it must not know wire formats or do any I/O.
//!
//! Text is built from pieces (lower-case words with a leading space, `.` and `,`) that
//! are verified at start-up to be exactly one token in the target encoding. Since
//! tiktoken's pre-tokenizer splits before every space-prefixed word, token counts add up
//! across pieces and across chunks: the token count of any chunk is its number of
//! pieces, and the whole text counts exactly as the sum of its chunks.

use std::ops::Range;
use std::sync::LazyLock;

use crate::tokens::Encoding;

/// 64-bit FNV-1a over bytes, continued from `state` (start with [`FNV_OFFSET`]).
pub(crate) fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// FNV-1a offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// SplitMix64 finalizer: a good 64-bit mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic RNG (SplitMix64).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi` (returns `lo` when `hi <= lo`).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "this", "are", "or", "from", "at", "which", "but", "have", "an", "they", "you",
    "were", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so", "no",
    "will", "more", "about", "can", "what", "out", "other", "into", "time", "only", "some",
    "could", "new", "these", "two", "may", "first", "then", "do", "any", "like", "now", "over",
    "such", "our", "even", "most", "made", "after", "also", "did", "many", "before", "must",
    "through", "back", "years", "where", "much", "your", "way", "well", "down", "should",
    "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very",
    "make", "world", "still", "own", "see", "work", "long", "get", "here", "between", "both",
    "life", "being", "under", "never", "day", "same", "another", "know", "while", "last", "might",
    "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used",
    "take", "three", "data", "model", "token", "request", "system", "value", "number", "result",
    "order", "point", "water", "light", "river", "city", "house",
];

/// Word pieces that are one token in an encoding, each with and without the leading
/// space (index 0: first word of the text, no space).
struct Vocab {
    spaced: Vec<String>,
    bare: Vec<&'static str>,
}

fn build_vocab(enc: Encoding) -> Vocab {
    let mut spaced = Vec::new();
    let mut bare = Vec::new();
    for w in WORDS {
        let s = format!(" {w}");
        if enc.count(&s) == 1 && enc.count(w) == 1 {
            spaced.push(s);
            bare.push(*w);
        }
    }
    Vocab { spaced, bare }
}

static VOCAB_CL100K: LazyLock<Vocab> = LazyLock::new(|| build_vocab(Encoding::Cl100kBase));
static VOCAB_O200K: LazyLock<Vocab> = LazyLock::new(|| build_vocab(Encoding::O200kBase));

fn vocab(enc: Encoding) -> &'static Vocab {
    match enc {
        Encoding::Cl100kBase => &VOCAB_CL100K,
        Encoding::O200kBase => &VOCAB_O200K,
    }
}

pub(crate) fn warm_up() {
    let _ = vocab(Encoding::Cl100kBase);
    let _ = vocab(Encoding::O200kBase);
}

/// Generated text and its chunking; every chunk's token count is exact.
#[derive(Clone, Debug, Default)]
pub(crate) struct Text {
    pub(crate) text: String,
    /// Byte range of each chunk in `text` and its token count.
    pub(crate) chunks: Vec<(Range<usize>, u64)>,
    pub(crate) tokens: u64,
}

impl Text {
    pub(crate) fn chunk_texts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.chunks
            .iter()
            .map(|(r, n)| (self.text.get(r.clone()).unwrap_or(""), *n))
    }
}

/// Exactly `tokens` tokens of text in `enc`, split into chunks of `chunk_tokens`.
pub(crate) fn text(enc: Encoding, rng: &mut Rng, tokens: u64, chunk_tokens: u32) -> Text {
    let v = vocab(enc);
    let chunk_tokens = u64::from(chunk_tokens.max(1));
    let mut out = Text {
        text: String::with_capacity(tokens as usize * 6),
        chunks: Vec::with_capacity((tokens / chunk_tokens + 1) as usize),
        tokens,
    };
    if v.bare.is_empty() {
        // Cannot happen with the built-in word list; degrade to one token per ".".
        for _ in 0..tokens {
            out.text.push('.');
        }
        out.chunks.push((0..out.text.len(), tokens));
        return out;
    }
    let mut chunk_start = 0;
    let mut in_chunk = 0;
    let mut words_in_sentence = 0u64;
    let mut sentence_len = rng.range(5, 14);
    // Two punctuation pieces in a row would merge into one pre-token; never emit them.
    let mut last_punct = false;
    for i in 0..tokens {
        if i == 0 {
            let w = v.bare[rng.range(0, v.bare.len() as u64 - 1) as usize];
            out.text.push_str(w);
            words_in_sentence = 1;
            last_punct = false;
        } else if !last_punct && (words_in_sentence >= sentence_len || i + 1 == tokens) {
            out.text.push('.');
            words_in_sentence = 0;
            sentence_len = rng.range(5, 14);
            last_punct = true;
        } else if !last_punct && words_in_sentence > 2 && i + 2 < tokens && rng.range(0, 15) == 0 {
            out.text.push(',');
            last_punct = true;
        } else {
            let w = &v.spaced[rng.range(0, v.spaced.len() as u64 - 1) as usize];
            out.text.push_str(w);
            words_in_sentence += 1;
            last_punct = false;
        }
        in_chunk += 1;
        if in_chunk == chunk_tokens {
            out.chunks.push((chunk_start..out.text.len(), in_chunk));
            chunk_start = out.text.len();
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        out.chunks.push((chunk_start..out.text.len(), in_chunk));
    }
    out
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Natural end.
    Stop,
    /// The output-token limit was reached.
    Length,
}

/// What a request generates: hidden or visible reasoning plus the visible answer.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    pub(crate) answer: Text,
    /// Reasoning tokens (hidden for OpenAI/Gemini; the `thinking` text for Claude).
    pub(crate) reasoning_tokens: u64,
    /// Visible reasoning text, when the provider streams it (Claude thinking).
    pub(crate) reasoning: Option<Text>,
    pub(crate) finish: Finish,
}

impl Output {
    /// Answer plus reasoning tokens.
    pub(crate) fn total_tokens(&self) -> u64 {
        self.answer.tokens + self.reasoning_tokens
    }
}

/// Inputs to [`plan_output`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputSpec {
    pub(crate) encoding: Encoding,
    /// Request limit on output tokens (reasoning included), if any.
    pub(crate) max_tokens: Option<u64>,
    /// `x-sim-output-tokens`: exact visible output length, overriding everything.
    pub(crate) forced: Option<u64>,
    /// Upper bound for reasoning tokens; 0 for models that do not reason.
    pub(crate) reasoning_max: u64,
    /// Emit reasoning as visible text.
    pub(crate) visible_reasoning: bool,
    pub(crate) chunk_tokens: u32,
}

/// Decides the output lengths and generates the text. Visible length is a
/// deterministic 20..=200 tokens; reasoning (if any) takes a deterministic
/// `reasoning_max/8..=reasoning_max`. When `max_tokens` is smaller than their sum,
/// reasoning is capped at half the limit and the answer takes the rest, with
/// [`Finish::Length`].
pub(crate) fn plan_output(rng: &mut Rng, spec: OutputSpec) -> Output {
    let natural = rng.range(20, 200);
    let mut reasoning = if spec.reasoning_max > 0 {
        rng.range((spec.reasoning_max / 8).max(1), spec.reasoning_max)
    } else {
        0
    };
    let (answer_tokens, finish) = match (spec.forced, spec.max_tokens) {
        (Some(n), _) => (n, Finish::Stop),
        (None, Some(max)) if reasoning + natural > max => {
            reasoning = reasoning.min(max / 2);
            (max - reasoning, Finish::Length)
        }
        _ => (natural, Finish::Stop),
    };
    let reasoning_text = (spec.visible_reasoning && reasoning > 0)
        .then(|| text(spec.encoding, rng, reasoning, spec.chunk_tokens));
    Output {
        answer: text(spec.encoding, rng, answer_tokens, spec.chunk_tokens),
        reasoning_tokens: reasoning,
        reasoning: reasoning_text,
        finish,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn vocab_is_large() {
        assert!(vocab(Encoding::Cl100kBase).bare.len() > 100);
        assert!(vocab(Encoding::O200kBase).bare.len() > 100);
    }

    #[test]
    fn chunks_count_exactly_and_add_up() {
        for enc in [Encoding::Cl100kBase, Encoding::O200kBase] {
            for seed in 0..40u64 {
                let mut rng = Rng::new(seed);
                let n = rng.range(1, 300);
                let t = text(enc, &mut rng, n, (seed % 5 + 1) as u32);
                assert_eq!(enc.count(&t.text), n, "seed {seed}: {:?}", t.text);
                let mut sum = 0;
                let mut joined = String::new();
                for (chunk, tokens) in t.chunk_texts() {
                    assert_eq!(enc.count(chunk), tokens, "{chunk:?}");
                    sum += tokens;
                    joined.push_str(chunk);
                }
                assert_eq!(sum, n);
                assert_eq!(joined, t.text);
            }
        }
    }

    #[test]
    fn plan_respects_limits() {
        let spec = OutputSpec {
            encoding: Encoding::O200kBase,
            max_tokens: Some(10),
            forced: None,
            reasoning_max: 512,
            visible_reasoning: false,
            chunk_tokens: 3,
        };
        let out = plan_output(&mut Rng::new(7), spec);
        assert_eq!(out.total_tokens(), 10);
        assert_eq!(out.finish, Finish::Length);
        assert!(out.reasoning_tokens <= 5);
        let forced = plan_output(
            &mut Rng::new(7),
            OutputSpec {
                forced: Some(33),
                reasoning_max: 0,
                ..spec
            },
        );
        assert_eq!(forced.answer.tokens, 33);
        assert_eq!(forced.reasoning_tokens, 0);
        let free = plan_output(
            &mut Rng::new(9),
            OutputSpec {
                max_tokens: None,
                reasoning_max: 0,
                ..spec
            },
        );
        assert!((20..=200).contains(&free.answer.tokens));
        assert_eq!(free.finish, Finish::Stop);
    }

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let x = r.unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
