//! Shared drivers of the fuzz targets (`fuzz_targets/*.rs`): deterministic chunking of an
//! input, and the provider adapter driver the OpenAI, Anthropic and Gemini targets share.
//! Owns no parsing of its own: every byte goes through tally's public library APIs, and
//! the invariants asserted here are the ones those APIs document.

pub mod providers;

/// Splits `data` into consecutive chunks whose lengths (1 to 64 bytes) come from a small
/// xorshift generator seeded with `seed`; seed 0 gives one byte per chunk. The same seed
/// always gives the same chunking, so a crash reproduces from its input alone.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        let len = if seed == 0 {
            1
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64) as usize + 1
        };
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

/// Splits off the first `n` bytes as a header (zeros when the input is shorter).
pub fn header<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut head = [0; N];
    let n = data.len().min(N);
    head[..n].copy_from_slice(&data[..n]);
    (head, &data[n..])
}
