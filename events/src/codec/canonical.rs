//! The canonical-form reader of the wire encoding: the JSON tally's own writers produce
//! (`serde_json` output: one object, no whitespace, no escapes, integers only) read in
//! one pass, without serde's per-field visitors and per-string UTF-8 checks (the
//! payload is checked once). Must return `None` for anything else, so that the serde
//! reader in `codec` decides it, and must never return a different event than that
//! reader would (a property test and the `event_decode` fuzz target compare the two).

use std::borrow::Cow;

use crate::codec::{Labels, Str, WireEvent};
use crate::model::{
    CounterUnit, EventId, FinishState, Outcome, Provider, Route, RuleKind, UsageSource,
};
use crate::time::Timestamp;

/// Read `s` if it is in canonical form; `None` otherwise (the caller falls back to serde).
pub(crate) fn read(s: &str) -> Option<WireEvent<'_>> {
    let mut r = Reader { s, i: 0, seen: 0 };
    let mut w = WireEvent::default();
    r.object(|r, key| r.field(&mut w, key))?;
    (r.i == s.len()).then_some(w)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is below `n` (`n` ≤ 128); exact for the lowest
/// such byte, while bytes above it may be flagged falsely.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
}

/// The bytes of `x` that end a plain string: `"`, `\` or a control character.
fn special(x: u64) -> u64 {
    below(x ^ (ONES * u64::from(b'"')), 1)
        | below(x ^ (ONES * u64::from(b'\\')), 1)
        | below(x, 0x20)
}

/// A field name's tag: its length, first and last byte (0 for the empty name).
const fn tag(name: &[u8]) -> u32 {
    match name {
        [] => 0,
        [first, .., last] => ((name.len() as u32) << 16) | ((*first as u32) << 8) | *last as u32,
        [only] => (1 << 16) | ((*only as u32) << 8) | *only as u32,
    }
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
    /// Known fields read so far (serde refuses a repeated field; so does this reader, by
    /// handing the payload to serde).
    seen: u64,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &str) -> bool {
        let found = self.s.as_bytes()[self.i..].starts_with(word.as_bytes());
        if found {
            self.i += word.len();
        }
        found
    }

    /// `{"key":value,...}`: each key handed to `member`, which reads its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let bytes = self.s.as_bytes();
        let start = self.i;
        // Eight bytes at a time up to the first quote, backslash or control character
        // (the lowest flagged byte of a word is exact), then byte by byte.
        while let Some(word) = bytes.get(self.i..self.i + 8) {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            let flagged = special(u64::from_le_bytes(le));
            if flagged != 0 {
                self.i += (flagged.trailing_zeros() / 8) as usize;
                break;
            }
            self.i += 8;
        }
        loop {
            match *bytes.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let out = self.s.get(start..self.i)?;
        self.i += 1;
        Some(out)
    }

    /// A non-negative integer as JSON writes it (no leading zeros, no fraction or
    /// exponent, no overflow).
    fn uint(&mut self) -> Option<u64> {
        let bytes = self.s.as_bytes();
        let start = self.i;
        let mut v = 0u64;
        while let Some(&c) = bytes.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && bytes[start] == b'0') {
            return None;
        }
        if matches!(bytes.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }

    fn int(&mut self) -> Option<i64> {
        if self.eat(b'-').is_some() {
            i64::try_from(-i128::from(self.uint()?)).ok()
        } else {
            i64::try_from(self.uint()?).ok()
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal("true") {
            Some(true)
        } else if self.literal("false") {
            Some(false)
        } else {
            None
        }
    }

    /// `null`, or a value read by `f`.
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.literal("null") {
            Some(None)
        } else {
            f(self).map(Some)
        }
    }

    fn str(&mut self) -> Option<Option<Str<'a>>> {
        self.opt(|r| r.string().map(|s| Str(Cow::Borrowed(s))))
    }

    fn ts(&mut self) -> Option<Option<Timestamp>> {
        self.opt(|r| Timestamp::parse(r.string()?).ok())
    }

    fn id(&mut self) -> Option<Option<EventId>> {
        self.opt(|r| uuid::Uuid::parse_str(r.string()?).ok().map(EventId::from))
    }

    fn u64(&mut self) -> Option<Option<u64>> {
        self.opt(Self::uint)
    }

    fn u32(&mut self) -> Option<Option<u32>> {
        self.opt(|r| u32::try_from(r.uint()?).ok())
    }

    fn u16(&mut self) -> Option<Option<u16>> {
        self.opt(|r| u16::try_from(r.uint()?).ok())
    }

    fn i64(&mut self) -> Option<Option<i64>> {
        self.opt(Self::int)
    }

    fn bool(&mut self) -> Option<Option<bool>> {
        self.opt(Self::boolean)
    }

    fn vocab<T>(&mut self, parse: fn(&str) -> T) -> Option<Option<T>> {
        self.opt(|r| r.string().map(parse))
    }

    /// `{"k":"v",...}`: the labels, with serde's ordering and repeated-key rule.
    fn labels(&mut self) -> Option<Option<Labels<'a>>> {
        self.opt(|r| {
            let mut pairs = Vec::new();
            r.object(|r, k| {
                pairs.push((Str(Cow::Borrowed(k)), Str(Cow::Borrowed(r.string()?))));
                Some(())
            })?;
            Some(Labels::from_pairs(pairs))
        })
    }

    /// A value of a field this build does not know: skipped when it is a string, an
    /// integer, a boolean or null (anything else goes to serde).
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.int().map(drop),
            _ if self.literal("null") => Some(()),
            _ => self.boolean().map(drop),
        }
    }

    /// Mark field `n` as read; `None` if it was read before.
    fn first(&mut self, n: u32) -> Option<()> {
        let bit = 1u64 << n;
        if self.seen & bit != 0 {
            return None;
        }
        self.seen |= bit;
        Some(())
    }

    /// Read the value of `key` into its field of `w` (a field's bit in `seen`, its name
    /// on the wire, how its value is read).
    fn field(&mut self, w: &mut WireEvent<'a>, key: &str) -> Option<()> {
        // A key is found by its tag (its length, first and last byte: unique among the
        // field names) and then compared once, rather than against every name in turn.
        macro_rules! fields {
            ($($n:literal $field:ident: $read:ident($($arg:expr)?),)+) => {
                #[allow(non_upper_case_globals)]
                mod tags {
                    use super::tag;
                    $(pub(super) const $field: u32 = tag(stringify!($field).as_bytes());)+
                }
                match tag(key.as_bytes()) {
                    $(tags::$field if key == stringify!($field) => {
                        self.first($n)?;
                        w.$field = self.$read($($arg)?)?;
                    })+
                    _ => self.skip()?,
                }
            };
        }
        fields! {
            0 event_type: str(),
            1 event_id: id(),
            2 schema_version: u32(),
            3 occurred_at: ts(),
            4 gateway_instance: str(),
            5 request_id: str(),
            6 tenant: str(),
            7 api_key_id: str(),
            8 labels: labels(),
            9 provider: vocab(Provider::parse),
            10 route: vocab(Route::parse),
            11 model_requested: str(),
            12 model_served: str(),
            13 upstream_request_id: str(),
            14 outcome: vocab(Outcome::parse),
            15 rule: str(),
            16 rule_kind: vocab(RuleKind::parse),
            17 counter_key: str(),
            18 counter_value: i64(),
            19 counter_limit: i64(),
            20 counter_unit: vocab(CounterUnit::parse),
            21 window_start: ts(),
            22 window_end: ts(),
            23 reset_at: ts(),
            24 reserved_tokens: u64(),
            25 reserved_cost_micros: i64(),
            26 reason: str(),
            27 upstream: str(),
            28 status_code: u16(),
            29 streamed: bool(),
            30 finish_state: vocab(FinishState::parse),
            31 input_tokens: u64(),
            32 cached_input_tokens: u64(),
            33 cache_write_tokens: u64(),
            34 output_tokens: u64(),
            35 reasoning_tokens: u64(),
            36 audio_input_tokens: u64(),
            37 audio_output_tokens: u64(),
            38 usage_source: vocab(UsageSource::parse),
            39 cost_micros: i64(),
            40 price_version: str(),
            41 latency_ms: u64(),
            42 ttft_ms: u64(),
            43 retry_attempt: u32(),
            44 retry_of: str(),
            45 corrects_event_id: id(),
        }
        Some(())
    }
}
