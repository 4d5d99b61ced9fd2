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
    let mut w = WireEvent::default();
    read_into(s, &mut w).then_some(w)
}

/// [`read`] into `w` (whatever it held is replaced; left unspecified when `false`).
pub(crate) fn read_into<'a>(s: &'a str, w: &mut WireEvent<'a>) -> bool {
    // The labels' room is reused by the next event's labels (one allocation less per
    // event when a decoder reads into the same slot over and over).
    let spare_labels = w.labels.take().map(|l| l.0).unwrap_or_default();
    *w = WireEvent::default();
    let mut r = Reader {
        s,
        i: 0,
        seen: 0,
        spare_labels,
    };
    r.event(w).is_some() && r.i == s.len()
}

/// Field indexes (as numbered in [`Reader::read_field`]) in the order tally's writer
/// emits them for each event type, optional fields included (a writer skips those that
/// are absent). Only a guess of the next key that saves finding and dispatching it: a
/// key off the guess is read the general way, so no payload depends on this order (a
/// test checks it against the writer's).
const HEADER: [u8; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
const USAGE_ORDER: [u8; 32] = concat(
    HEADER,
    [
        27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    ],
);
const DECISION_ORDER: [u8; 27] =
    concat(HEADER, [14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]);
const CORRECTION_ORDER: [u8; 24] = concat(HEADER, [45, 26, 31, 32, 33, 34, 35, 39, 40, 38]);

const fn concat<const A: usize, const B: usize, const C: usize>(a: [u8; A], b: [u8; B]) -> [u8; C] {
    let mut out = [0u8; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// The writer's field order for an event of type `t` (usage when unknown: the most
/// common).
fn order_of(t: Option<&Str<'_>>) -> &'static [u8] {
    match t.map(|t| t.as_str()) {
        Some("decision") => &DECISION_ORDER,
        Some("correction") => &CORRECTION_ORDER,
        _ => &USAGE_ORDER,
    }
}

/// The field names of [`Reader::read_field`]'s indexes, for the tests.
#[cfg(test)]
pub(crate) fn writer_order(t: &str) -> Vec<&'static str> {
    order_of(Some(&Str(Cow::Borrowed(t))))
        .iter()
        .map(|&n| NAMES[usize::from(n)])
        .collect()
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

/// Whether `s` starts with `p` (7 to 24 bytes: a key with its quotes and colon),
/// compared eight bytes at a time (the last eight overlapping) rather than by a call.
fn starts_with(s: &[u8], p: &[u8]) -> bool {
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(src) = b.get(at..at + 8) {
            w.copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    }
    let n = p.len();
    if s.len() < n.max(8) || n < 8 {
        return s.starts_with(p);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(s, at) != word(p, at) {
            return false;
        }
        at += 8;
    }
    word(s, n - 8) == word(p, n - 8)
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
    /// Room for the labels (emptied before use).
    spare_labels: Vec<(Str<'a>, Str<'a>)>,
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

    /// The event object: each member's key found by the writer's order when it is the
    /// next one there (or one after it), else read and looked up.
    fn event(&mut self, w: &mut WireEvent<'a>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut order: &[u8] = &USAGE_ORDER;
        let mut next = 0;
        loop {
            let field = match self.expected(order, &mut next) {
                Some(n) => Some(n),
                None => {
                    let key = self.string()?;
                    self.eat(b':')?;
                    index_of(key)
                }
            };
            match field {
                Some(n) => {
                    self.read_field(w, n)?;
                    if n == 0 {
                        order = order_of(w.event_type.as_ref());
                    }
                }
                None => self.skip()?,
            }
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// If the key at the cursor (`"name":`) is `order[*next]` or a later one there: skip
    /// it, move `next` past it and return its field index.
    fn expected(&mut self, order: &[u8], next: &mut usize) -> Option<u8> {
        let rest = self.s.as_bytes().get(self.i..)?;
        for (k, &n) in order.iter().enumerate().skip(*next) {
            let key = KEYS[usize::from(n)].as_bytes();
            if starts_with(rest, key) {
                self.i += key.len();
                *next = k + 1;
                return Some(n);
            }
        }
        None
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
        // Only `null` starts with `n` among the values read here.
        if self.peek() == Some(b'n') {
            self.literal("null").then_some(None)
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
            let mut pairs = std::mem::take(&mut r.spare_labels);
            pairs.clear();
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
}

/// The fields: index (a bit in `seen`, a place in the writer's order), name on the wire,
/// how the value is read.
macro_rules! fields {
    ($($n:literal $field:ident: $read:ident($($arg:expr)?),)+) => {
        /// Field names by index.
        #[cfg(test)]
        const NAMES: [&str; 46] = [$(stringify!($field),)+];
        /// Keys by index as the writer puts them: `"name":`.
        const KEYS: [&str; 46] = [$(concat!("\"", stringify!($field), "\":"),)+];

        /// The index of the field named `key`. A key is found by its tag (its length,
        /// first and last byte: unique among the field names) and then compared once,
        /// rather than against every name in turn.
        fn index_of(key: &str) -> Option<u8> {
            #[allow(non_upper_case_globals)]
            mod tags {
                use super::tag;
                $(pub(super) const $field: u32 = tag(stringify!($field).as_bytes());)+
            }
            match tag(key.as_bytes()) {
                $(tags::$field if key == stringify!($field) => Some($n),)+
                _ => None,
            }
        }

        impl<'a> Reader<'a> {
            /// Read the value of field `n` into `w`; `None` if it was read before.
            fn read_field(&mut self, w: &mut WireEvent<'a>, n: u8) -> Option<()> {
                match n {
                    $($n => {
                        self.first($n)?;
                        w.$field = self.$read($($arg)?)?;
                    })+
                    _ => return None,
                }
                Some(())
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{
        CorrectionEvent, DecisionEvent, Event, EventHeader, TokenCounts, UsageEvent,
    };

    /// Every field of the header set.
    fn header() -> EventHeader {
        let mut h = EventHeader::new("gw", "req", "tenant");
        h.api_key_id = Some("key".into());
        h.labels = BTreeMap::from([("team".into(), "a".into())]);
        h.provider = Some(Provider::Openai);
        h.route = Some(Route::Chat);
        h.model_requested = Some("m".into());
        h.model_served = Some("m".into());
        h.upstream_request_id = Some("up".into());
        h
    }

    /// One event of each type with every optional field set.
    fn full_events() -> Vec<Event> {
        let mut d = DecisionEvent::new(
            header(),
            Outcome::Deny,
            "rule",
            RuleKind::UsageCap,
            "r".into(),
        );
        d.counter_key = Some("k".into());
        d.counter_value = Some(3);
        d.counter_limit = Some(2);
        d.counter_unit = Some(CounterUnit::Tokens);
        d.window_start = Some(Timestamp::from_micros(1));
        d.window_end = Some(Timestamp::from_micros(2));
        d.reset_at = Some(Timestamp::from_micros(3));
        d.reserved_tokens = Some(4);
        d.reserved_cost_micros = Some(5);
        let u = UsageEvent {
            header: header(),
            upstream: Some("main".into()),
            status_code: Some(200),
            streamed: true,
            finish_state: FinishState::Completed,
            tokens: TokenCounts::default(),
            usage_source: UsageSource::ProviderReported,
            cost_micros: 1,
            price_version: Some("v".into()),
            latency_ms: 1,
            ttft_ms: Some(1),
            retry_attempt: 1,
            retry_of: Some("req-0".into()),
        };
        let c = CorrectionEvent {
            header: header(),
            corrects_event_id: crate::model::EventId::new(),
            reason: "r".into(),
            input_tokens: Some(1),
            cached_input_tokens: Some(1),
            cache_write_tokens: Some(1),
            output_tokens: Some(1),
            reasoning_tokens: Some(1),
            cost_micros: Some(1),
            price_version: Some("v".into()),
            usage_source: Some(UsageSource::ProviderReported),
        };
        vec![Event::Decision(d), Event::Usage(u), Event::Correction(c)]
    }

    #[test]
    fn the_guessed_order_is_the_writers() {
        for e in full_events() {
            let json = crate::codec::encode(&e);
            let text = String::from_utf8_lossy(&json);
            let keys: Vec<&str> = {
                let mut r = Reader {
                    s: &text,
                    i: 0,
                    seen: 0,
                    spare_labels: Vec::new(),
                };
                let mut keys = Vec::new();
                let read = r.object(|r, key| {
                    keys.push(key);
                    match r.peek()? {
                        b'{' => r.object(|r, _| r.string().map(drop)),
                        _ => r.skip(),
                    }
                });
                assert!(read.is_some(), "{text}");
                keys
            };
            assert_eq!(keys, writer_order(e.event_type().as_str()), "{text}");
            // And the reader takes the fast path for each key: the same event as serde.
            let fast = read(&text);
            let slow: Option<WireEvent<'_>> = serde_json::from_str(&text).ok();
            assert!(fast.is_some());
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn keys_off_the_order_are_read_the_general_way() {
        // Reordered, an unknown key in between, and a field of another type.
        let text = r#"{"tenant":"t","event_type":"usage","x":1,"outcome":"deny","event_id":"01a22ad4-afb6-71d2-b7a9-0d39505a88e8"}"#;
        let fast = read(text);
        let slow: Option<WireEvent<'_>> = serde_json::from_str(text).ok();
        assert!(fast.is_some());
        assert_eq!(fast, slow);
        // A key repeated after the guess moved past it is still refused.
        let twice = r#"{"event_type":"usage","tenant":"t","event_type":"usage"}"#;
        assert!(read(twice).is_none());
    }
}
