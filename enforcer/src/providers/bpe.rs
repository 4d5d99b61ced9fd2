//! Token counts under OpenAI's byte-pair encodings (`o200k_base`, `cl100k_base`): owns
//! the rank tables, built once per process over compact files embedded in the binary
//! (each token's bytes in rank order, written by `scripts/bpe-ranks.py` from tiktoken's
//! published files), and the merge loop, which follows tiktoken's step for step. Counts
//! only: must not encode or decode token ids, and special-token strings count as text.
//!
//! tiktoken-rs's `CoreBPE` would do the same counting, but it keeps three maps of owned
//! byte vectors and 128 copies of its regex: about 64 MiB of heap for the two encodings,
//! in a proxy whose memory target is 100 MB. These tables borrow the embedded bytes
//! (about 10 MiB of heap for both). Tests check every rank against tiktoken-rs and the
//! counts against its encoder.

use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;
use rustc_hash::FxBuildHasher;

type Rank = u32;

/// Every token of `o200k_base`, as `[len, bytes...]` in rank order.
static O200K_RANKS: &[u8] = include_bytes!("bpe/o200k_base.ranks");
/// Every token of `cl100k_base`, likewise.
static CL100K_RANKS: &[u8] = include_bytes!("bpe/cl100k_base.ranks");

/// tiktoken's pre-tokenization pattern for `cl100k_base`.
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// Pieces at least this long merge with a heap (O(n log n)) instead of rescanning
/// (O(n²), faster for the usual short pieces); tiktoken's threshold.
const LARGE_PIECE: usize = 100;

/// The encodings counted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    O200kBase,
    Cl100kBase,
}

/// One encoding's rank table and pre-tokenizer.
pub(crate) struct Bpe {
    ranks: HashMap<&'static [u8], Rank, FxBuildHasher>,
    pattern: Regex,
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpe")
            .field("tokens", &self.ranks.len())
            .finish_non_exhaustive()
    }
}

impl Bpe {
    /// Build `encoding`'s tables. Fails only if the embedded files or patterns are
    /// corrupt (a build defect, which the tests catch).
    pub(crate) fn new(encoding: Encoding) -> Result<Bpe, String> {
        match encoding {
            Encoding::O200kBase => Self::from_parts(O200K_RANKS, tiktoken_rs::O200K_BASE_PAT_STR),
            Encoding::Cl100kBase => Self::from_parts(CL100K_RANKS, CL100K_PATTERN),
        }
    }

    fn from_parts(file: &'static [u8], pattern: &str) -> Result<Bpe, String> {
        let mut ranks = HashMap::with_capacity_and_hasher(tokens(file).count(), FxBuildHasher);
        let mut used = 0;
        for (rank, token) in tokens(file).enumerate() {
            used += token.len() + 1;
            let rank = Rank::try_from(rank).map_err(|_| "too many tokens".to_string())?;
            ranks.insert(token, rank);
        }
        if used != file.len() {
            return Err(format!(
                "rank file corrupt at byte {used} of {} (after {} tokens)",
                file.len(),
                ranks.len()
            ));
        }
        let pattern = Regex::new(pattern).map_err(|e| format!("bad pattern: {e}"))?;
        Ok(Bpe { ranks, pattern })
    }

    /// The number of tokens `text` encodes to (as tiktoken's `encode_ordinary`).
    pub(crate) fn count(&self, text: &str) -> u64 {
        let mut count = 0u64;
        let mut end = 0;
        for m in self.pattern.find_iter(text) {
            let Ok(m) = m else {
                // The pattern's backtracking limit: the rest is approximated.
                return count + super::estimate::approx_tokens(&text[end..]);
            };
            end = m.end();
            let piece = m.as_str().as_bytes();
            count += if self.ranks.contains_key(piece) {
                1
            } else if piece.len() < LARGE_PIECE {
                self.merge_small(piece)
            } else {
                self.merge_large(piece)
            };
        }
        count
    }

    fn rank(&self, bytes: &[u8]) -> Rank {
        self.ranks.get(bytes).copied().unwrap_or(Rank::MAX)
    }

    /// tiktoken's `_byte_pair_merge`: repeatedly merge the adjacent pair of lowest rank,
    /// rescanning the parts each time. Returns the number of parts left.
    fn merge_small(&self, piece: &[u8]) -> u64 {
        if piece.len() < 2 {
            return piece.len() as u64;
        }
        // (start, rank of the pair starting here)
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank < min.0 {
                min = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        let rank_at = |parts: &[(usize, Rank)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                Rank::MAX
            }
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, i);
                }
            }
        }
        (parts.len() - 1) as u64
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merges in the same order, found
    /// with a heap of candidate merges (stale ones skipped). Returns the number of tokens.
    fn merge_large(&self, piece: &[u8]) -> u64 {
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        let mut state = Vec::with_capacity(piece.len());
        state.push(State {
            prev: usize::MAX,
            end: 1,
            next_end: 2,
            next_rank: Rank::MAX,
        });
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank != Rank::MAX {
                heap.push(Merge { start: i, rank });
                state[i].next_rank = rank;
            }
            state.push(State {
                prev: i,
                end: i + 2,
                next_end: i + 3,
                next_rank: Rank::MAX,
            });
        }
        let potential =
            |state: &mut Vec<State>, heap: &mut BinaryHeap<Merge>, start: usize, end: usize| {
                state[start].next_end = end;
                state[start].next_rank = Rank::MAX;
                if end <= piece.len() {
                    let rank = self.rank(&piece[start..end]);
                    if rank != Rank::MAX {
                        heap.push(Merge { start, rank });
                        state[start].next_rank = rank;
                    }
                }
            };
        while let Some(left) = heap.pop() {
            if left.rank == Rank::MAX {
                break;
            }
            if left.rank != state[left.start].next_rank {
                continue; // invalidated by an earlier merge
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let (mut count, mut i) = (0u64, 0);
        while i < state.len() {
            count += 1;
            i = state[i].end;
        }
        count
    }
}

/// A candidate merge; the heap pops the lowest rank first, then the leftmost.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Merge {
    start: usize,
    rank: Rank,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The tokens of a rank file in order (stops at a truncated entry).
fn tokens(file: &'static [u8]) -> impl Iterator<Item = &'static [u8]> {
    let mut rest = file;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let len = usize::from(len);
        if len == 0 || tail.len() < len {
            return None;
        }
        let (token, tail) = tail.split_at(len);
        rest = tail;
        Some(token)
    })
}

/// The embedded tokens of `encoding` in rank order (for the tests).
#[cfg(test)]
pub(crate) fn embedded_tokens(encoding: Encoding) -> Vec<&'static [u8]> {
    match encoding {
        Encoding::O200kBase => tokens(O200K_RANKS).collect(),
        Encoding::Cl100kBase => tokens(CL100K_RANKS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use tiktoken_rs::CoreBPE;

    use super::{Bpe, Encoding, LARGE_PIECE};

    static REF_O200K: LazyLock<CoreBPE> =
        LazyLock::new(|| tiktoken_rs::o200k_base().expect("tiktoken-rs o200k_base"));
    static REF_CL100K: LazyLock<CoreBPE> =
        LazyLock::new(|| tiktoken_rs::cl100k_base().expect("tiktoken-rs cl100k_base"));
    static O200K: LazyLock<Bpe> = LazyLock::new(|| Bpe::new(Encoding::O200kBase).expect("o200k"));
    static CL100K: LazyLock<Bpe> =
        LazyLock::new(|| Bpe::new(Encoding::Cl100kBase).expect("cl100k"));

    fn both() -> [(&'static Bpe, &'static CoreBPE, Encoding); 2] {
        [
            (&O200K, &REF_O200K, Encoding::O200kBase),
            (&CL100K, &REF_CL100K, Encoding::Cl100kBase),
        ]
    }

    #[test]
    fn every_embedded_rank_is_tiktokens_token() {
        for (_, reference, encoding) in both() {
            let tokens = super::embedded_tokens(encoding);
            assert!(
                tokens.len() > 100_000,
                "{encoding:?}: {} tokens",
                tokens.len()
            );
            for (rank, token) in tokens.iter().enumerate() {
                let expected = reference
                    .decode_bytes(&[rank as u32])
                    .unwrap_or_else(|e| panic!("{encoding:?} rank {rank}: {e:?}"));
                assert_eq!(*token, &expected[..], "{encoding:?} rank {rank}");
            }
        }
    }

    const CORPUS: &[&str] = &[
        "",
        "hello world",
        "Hello, World! It's a test; they're here, we'll see, I'd've DONE it.",
        "The quick brown fox jumps over the lazy dog 1234567890 times.\n\n  indented\tline\r\n",
        "fn main() {\n    println!(\"{}\", 42_000u64.pow(2));\n}\n",
        "日本語のテキストと中文文本，还有한국어 텍스트。",
        "emoji 👩‍👩‍👧‍👦 🇫🇷 ✨ and combining e\u{301} marks",
        "    \n\n\n   trailing spaces   ",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "<|endoftext|> special tokens count as text <|fim_prefix|>",
    ];

    #[test]
    fn counts_equal_tiktokens_on_a_varied_corpus() {
        // Long pieces without spaces take the heap path.
        let long_word: String = (0..3_000)
            .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
            .collect();
        let long_punct = "!?#".repeat(400);
        let long_base64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw==".repeat(50);
        let mut texts: Vec<&str> = CORPUS.to_vec();
        texts.extend([
            long_word.as_str(),
            long_punct.as_str(),
            long_base64.as_str(),
        ]);
        assert!(long_word.len() > LARGE_PIECE);
        for (bpe, reference, encoding) in both() {
            for text in &texts {
                let expected = reference.encode_ordinary(text).len() as u64;
                assert_eq!(bpe.count(text), expected, "{encoding:?}: {text:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn counts_equal_tiktokens_on_arbitrary_text(text in "\\PC{0,300}") {
            for (bpe, reference, encoding) in both() {
                let expected = reference.encode_ordinary(&text).len() as u64;
                prop_assert_eq!(bpe.count(&text), expected, "{:?}", encoding);
            }
        }

        #[test]
        fn counts_equal_tiktokens_on_long_runs(
            parts in proptest::collection::vec("[a-z0-9]{1,40}|[ .,!\\n]{1,3}|[\u{4e00}-\u{4e20}]{1,20}", 1..60),
        ) {
            let text: String = parts.concat();
            for (bpe, reference, encoding) in both() {
                let expected = reference.encode_ordinary(&text).len() as u64;
                prop_assert_eq!(bpe.count(&text), expected, "{:?}", encoding);
            }
        }
    }
}
