//! The wire encoding of events: one JSON object per event (UTF-8, no framing of its
//! own). Owns encode/decode and the forward-compatibility rules; must not know about
//! logs, files or Kafka, which only carry the bytes.
//!
//! Rules (documented in docs/events.md): field names are the column names; unknown
//! fields are ignored; unknown values of closed vocabularies decode as `other`; an
//! unknown `event_type` is reported as [`DecodeError::UnknownEventType`] so a reader can
//! skip it.

use std::borrow::Cow;

mod canonical;

use serde::Deserialize;

use crate::model::{
    CorrectionEvent, CounterUnit, DecisionEvent, Event, EventHeader, EventId, EventType,
    FinishState, Outcome, Provider, Route, RuleKind, TokenCounts, UsageEvent, UsageSource,
};
use crate::time::Timestamp;

/// A failure to decode an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "event.decode: not a valid event: {0}. The record is not JSON of a tally event; check the producer"
    )]
    Invalid(#[source] serde_json::Error),
    #[error(
        "event.unknown_type: event_type `{0}` is not known to this build of tally; upgrade the reader to see it (it is skipped, not lost)"
    )]
    UnknownEventType(String),
}

impl DecodeError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Invalid(_) => "event.decode",
            DecodeError::UnknownEventType(_) => "event.unknown_type",
        }
    }
}

/// Encode an event as its JSON wire form.
pub fn encode(event: &Event) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and no
    // custom serializer returns an error.
    serde_json::to_vec(event).unwrap_or_default()
}

/// Encode into an existing buffer (appends).
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) {
    let _ = serde_json::to_writer(buf, event);
}

/// A string field of a [`WireEvent`]: borrowed from the payload unless it had escapes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

impl Str<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `labels` as read from the wire: sorted by key, the last of repeated keys kept (the
/// semantics of the event model's `BTreeMap`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Labels<'a>(pub(crate) Vec<(Str<'a>, Str<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Labels<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Labels<'a>, A::Error> {
                let mut out: Vec<(Str<'a>, Str<'a>)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<Str<'a>, Str<'a>>()? {
                    out.push((k, v));
                }
                Ok(Labels::from_pairs(out))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl<'a> Labels<'a> {
    /// The pairs in the order written, sorted by key with the last of repeated keys kept.
    pub(crate) fn from_pairs(mut pairs: Vec<(Str<'a>, Str<'a>)>) -> Labels<'a> {
        if !pairs.is_sorted_by(|a, b| a.0.0 < b.0.0) {
            // Stable: among equal keys the last one written stays last.
            pairs.sort_by(|a, b| a.0.0.cmp(&b.0.0));
            let mut dedup: Vec<(Str<'a>, Str<'a>)> = Vec::with_capacity(pairs.len());
            for kv in pairs {
                match dedup.last_mut() {
                    Some(last) if last.0 == kv.0 => *last = kv,
                    _ => dedup.push(kv),
                }
            }
            pairs = dedup;
        }
        Labels(pairs)
    }
}

/// One event as read from the wire, borrowing its strings from the payload: what the
/// ledger turns into Arrow rows without building an [`Event`] first. Produced only by
/// [`decode_wire`], which checks what [`decode`] checks (known `event_type`, required
/// fields present), so every field a type requires is `Some` here.
///
/// Fields of every event type are read (a field of another type than `event_type` is
/// ignored, as unknown fields are).
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize)]
pub struct WireEvent<'a> {
    #[serde(borrow)]
    pub(crate) event_type: Option<Str<'a>>,
    pub(crate) event_id: Option<EventId>,
    pub(crate) schema_version: Option<u32>,
    pub(crate) occurred_at: Option<Timestamp>,
    #[serde(borrow)]
    pub(crate) gateway_instance: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) request_id: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) tenant: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) api_key_id: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) labels: Option<Labels<'a>>,
    pub(crate) provider: Option<Provider>,
    pub(crate) route: Option<Route>,
    #[serde(borrow)]
    pub(crate) model_requested: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) model_served: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) upstream_request_id: Option<Str<'a>>,
    // decision
    pub(crate) outcome: Option<Outcome>,
    #[serde(borrow)]
    pub(crate) rule: Option<Str<'a>>,
    pub(crate) rule_kind: Option<RuleKind>,
    #[serde(borrow)]
    pub(crate) counter_key: Option<Str<'a>>,
    pub(crate) counter_value: Option<i64>,
    pub(crate) counter_limit: Option<i64>,
    pub(crate) counter_unit: Option<CounterUnit>,
    pub(crate) window_start: Option<Timestamp>,
    pub(crate) window_end: Option<Timestamp>,
    pub(crate) reset_at: Option<Timestamp>,
    pub(crate) reserved_tokens: Option<u64>,
    pub(crate) reserved_cost_micros: Option<i64>,
    /// decision and correction
    #[serde(borrow)]
    pub(crate) reason: Option<Str<'a>>,
    // usage
    #[serde(borrow)]
    pub(crate) upstream: Option<Str<'a>>,
    pub(crate) status_code: Option<u16>,
    pub(crate) streamed: Option<bool>,
    pub(crate) finish_state: Option<FinishState>,
    /// usage and correction (as are the other token figures, cost, price version and
    /// usage source)
    pub(crate) input_tokens: Option<u64>,
    pub(crate) cached_input_tokens: Option<u64>,
    pub(crate) cache_write_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) reasoning_tokens: Option<u64>,
    pub(crate) audio_input_tokens: Option<u64>,
    pub(crate) audio_output_tokens: Option<u64>,
    pub(crate) usage_source: Option<UsageSource>,
    pub(crate) cost_micros: Option<i64>,
    #[serde(borrow)]
    pub(crate) price_version: Option<Str<'a>>,
    pub(crate) latency_ms: Option<u64>,
    pub(crate) ttft_ms: Option<u64>,
    pub(crate) retry_attempt: Option<u32>,
    #[serde(borrow)]
    pub(crate) retry_of: Option<Str<'a>>,
    // correction
    pub(crate) corrects_event_id: Option<EventId>,
}

fn missing(field: &'static str) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::missing_field(field)
}

fn owned(s: &Option<Str<'_>>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

fn req(s: &Option<Str<'_>>) -> String {
    s.as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

impl<'a> WireEvent<'a> {
    /// Read one event and check that its type's required fields are present (an error
    /// here makes [`decode_wire`] fall back to the full serde model, which decides).
    fn read(bytes: &'a [u8]) -> Result<(WireEvent<'a>, EventType), serde_json::Error> {
        let mut w = WireEvent::default();
        let t = w.read_into(bytes)?;
        Ok((w, t))
    }

    /// [`WireEvent::read`] into `self` (whatever it held is replaced), so that a caller
    /// decoding many events reuses one in place rather than moving each one out.
    fn read_into(&mut self, bytes: &'a [u8]) -> Result<EventType, serde_json::Error> {
        // The canonical form (what tally writes) in one pass; anything else through
        // serde, which also words the errors.
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if !canonical::read_into(text, self) {
                    *self = serde_json::from_str(text)?;
                }
            }
            Err(_) => *self = serde_json::from_slice(bytes)?,
        }
        let w = &*self;
        let event_type = match &w.event_type {
            Some(t) => EventType::parse(t.as_str()),
            None => return Err(missing("event_type")),
        };
        let header = [
            ("event_id", w.event_id.is_some()),
            ("schema_version", w.schema_version.is_some()),
            ("occurred_at", w.occurred_at.is_some()),
            ("gateway_instance", w.gateway_instance.is_some()),
            ("request_id", w.request_id.is_some()),
            ("tenant", w.tenant.is_some()),
        ];
        let specific: &[(&'static str, bool)] = match event_type {
            EventType::Decision => &[
                ("outcome", w.outcome.is_some()),
                ("rule", w.rule.is_some()),
                ("rule_kind", w.rule_kind.is_some()),
                ("reason", w.reason.is_some()),
            ],
            EventType::Usage => &[
                ("streamed", w.streamed.is_some()),
                ("finish_state", w.finish_state.is_some()),
                ("usage_source", w.usage_source.is_some()),
                ("cost_micros", w.cost_micros.is_some()),
                ("latency_ms", w.latency_ms.is_some()),
            ],
            EventType::Correction => &[
                ("corrects_event_id", w.corrects_event_id.is_some()),
                ("reason", w.reason.is_some()),
            ],
            EventType::Other => &[],
        };
        if event_type != EventType::Other
            && let Some((field, _)) = header.iter().chain(specific).find(|(_, ok)| !ok)
        {
            return Err(missing(field));
        }
        Ok(event_type)
    }

    /// The event's type (never [`EventType::Other`]).
    pub fn event_type(&self) -> EventType {
        self.event_type
            .as_ref()
            .map_or(EventType::Other, |t| EventType::parse(t.as_str()))
    }

    /// The event id.
    pub fn event_id(&self) -> EventId {
        self.event_id
            .unwrap_or_else(|| EventId::from(uuid::Uuid::nil()))
    }

    /// When the event happened.
    pub fn occurred_at(&self) -> Timestamp {
        self.occurred_at.unwrap_or_default()
    }

    fn header(&self) -> EventHeader {
        EventHeader {
            event_id: self.event_id(),
            schema_version: self.schema_version.unwrap_or_default(),
            occurred_at: self.occurred_at(),
            gateway_instance: req(&self.gateway_instance),
            request_id: req(&self.request_id),
            tenant: req(&self.tenant),
            api_key_id: owned(&self.api_key_id),
            labels: self
                .labels
                .as_ref()
                .map(|l| {
                    l.0.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            provider: self.provider,
            route: self.route,
            model_requested: owned(&self.model_requested),
            model_served: owned(&self.model_served),
            upstream_request_id: owned(&self.upstream_request_id),
        }
    }

    /// The wire view of an owned event (borrowing its strings).
    pub fn from_event(e: &'a Event) -> WireEvent<'a> {
        fn s(v: &str) -> Str<'_> {
            Str(Cow::Borrowed(v))
        }
        fn o(v: &Option<String>) -> Option<Str<'_>> {
            v.as_deref().map(s)
        }
        let h = e.header();
        let mut w = WireEvent {
            event_type: Some(s(e.event_type().as_str())),
            event_id: Some(h.event_id),
            schema_version: Some(h.schema_version),
            occurred_at: Some(h.occurred_at),
            gateway_instance: Some(s(&h.gateway_instance)),
            request_id: Some(s(&h.request_id)),
            tenant: Some(s(&h.tenant)),
            api_key_id: o(&h.api_key_id),
            labels: Some(Labels(h.labels.iter().map(|(k, v)| (s(k), s(v))).collect())),
            provider: h.provider,
            route: h.route,
            model_requested: o(&h.model_requested),
            model_served: o(&h.model_served),
            upstream_request_id: o(&h.upstream_request_id),
            ..WireEvent::default()
        };
        match e {
            Event::Decision(d) => {
                w.outcome = Some(d.outcome);
                w.rule = Some(s(&d.rule));
                w.rule_kind = Some(d.rule_kind);
                w.counter_key = o(&d.counter_key);
                w.counter_value = d.counter_value;
                w.counter_limit = d.counter_limit;
                w.counter_unit = d.counter_unit;
                w.window_start = d.window_start;
                w.window_end = d.window_end;
                w.reset_at = d.reset_at;
                w.reserved_tokens = d.reserved_tokens;
                w.reserved_cost_micros = d.reserved_cost_micros;
                w.reason = Some(s(&d.reason));
            }
            Event::Usage(u) => {
                w.upstream = o(&u.upstream);
                w.status_code = u.status_code;
                w.streamed = Some(u.streamed);
                w.finish_state = Some(u.finish_state);
                w.input_tokens = Some(u.tokens.input_tokens);
                w.cached_input_tokens = Some(u.tokens.cached_input_tokens);
                w.cache_write_tokens = Some(u.tokens.cache_write_tokens);
                w.output_tokens = Some(u.tokens.output_tokens);
                w.reasoning_tokens = Some(u.tokens.reasoning_tokens);
                w.audio_input_tokens = Some(u.tokens.audio_input_tokens);
                w.audio_output_tokens = Some(u.tokens.audio_output_tokens);
                w.usage_source = Some(u.usage_source);
                w.cost_micros = Some(u.cost_micros);
                w.price_version = o(&u.price_version);
                w.latency_ms = Some(u.latency_ms);
                w.ttft_ms = u.ttft_ms;
                w.retry_attempt = Some(u.retry_attempt);
                w.retry_of = o(&u.retry_of);
            }
            Event::Correction(c) => {
                w.corrects_event_id = Some(c.corrects_event_id);
                w.reason = Some(s(&c.reason));
                w.input_tokens = c.input_tokens;
                w.cached_input_tokens = c.cached_input_tokens;
                w.cache_write_tokens = c.cache_write_tokens;
                w.output_tokens = c.output_tokens;
                w.reasoning_tokens = c.reasoning_tokens;
                w.cost_micros = c.cost_micros;
                w.price_version = o(&c.price_version);
                w.usage_source = c.usage_source;
            }
        }
        w
    }

    /// The owned event.
    pub fn to_event(&self) -> Event {
        let header = self.header();
        match self.event_type() {
            EventType::Decision => Event::Decision(DecisionEvent {
                header,
                outcome: self.outcome.unwrap_or(Outcome::Other),
                rule: req(&self.rule),
                rule_kind: self.rule_kind.unwrap_or(RuleKind::Other),
                counter_key: owned(&self.counter_key),
                counter_value: self.counter_value,
                counter_limit: self.counter_limit,
                counter_unit: self.counter_unit,
                window_start: self.window_start,
                window_end: self.window_end,
                reset_at: self.reset_at,
                reserved_tokens: self.reserved_tokens,
                reserved_cost_micros: self.reserved_cost_micros,
                reason: req(&self.reason),
            }),
            EventType::Correction => Event::Correction(CorrectionEvent {
                header,
                corrects_event_id: self
                    .corrects_event_id
                    .unwrap_or_else(|| EventId::from(uuid::Uuid::nil())),
                reason: req(&self.reason),
                input_tokens: self.input_tokens,
                cached_input_tokens: self.cached_input_tokens,
                cache_write_tokens: self.cache_write_tokens,
                output_tokens: self.output_tokens,
                reasoning_tokens: self.reasoning_tokens,
                cost_micros: self.cost_micros,
                price_version: owned(&self.price_version),
                usage_source: self.usage_source,
            }),
            EventType::Usage | EventType::Other => Event::Usage(UsageEvent {
                header,
                upstream: owned(&self.upstream),
                status_code: self.status_code,
                streamed: self.streamed.unwrap_or_default(),
                finish_state: self.finish_state.unwrap_or(FinishState::Other),
                tokens: TokenCounts {
                    input_tokens: self.input_tokens.unwrap_or_default(),
                    cached_input_tokens: self.cached_input_tokens.unwrap_or_default(),
                    cache_write_tokens: self.cache_write_tokens.unwrap_or_default(),
                    output_tokens: self.output_tokens.unwrap_or_default(),
                    reasoning_tokens: self.reasoning_tokens.unwrap_or_default(),
                    audio_input_tokens: self.audio_input_tokens.unwrap_or_default(),
                    audio_output_tokens: self.audio_output_tokens.unwrap_or_default(),
                },
                usage_source: self.usage_source.unwrap_or(UsageSource::Other),
                cost_micros: self.cost_micros.unwrap_or_default(),
                price_version: owned(&self.price_version),
                latency_ms: self.latency_ms.unwrap_or_default(),
                ttft_ms: self.ttft_ms,
                retry_attempt: self.retry_attempt.unwrap_or_default(),
                retry_of: owned(&self.retry_of),
            }),
        }
    }
}

/// A decoded event: read straight from the wire ([`WireEvent`], borrowing the payload),
/// or, for the rare payload the fast reader does not take (e.g. a field of another
/// event type with an unexpected value), the full model.
#[derive(Clone, Debug)]
// The wire form is what nearly every event decodes to and lives briefly on the stack;
// boxing it would cost an allocation per event on the ledger's hot path.
#[allow(clippy::large_enum_variant)]
pub enum Decoded<'a> {
    Wire(WireEvent<'a>),
    Model(Event),
}

impl Decoded<'_> {
    /// The event's type (never [`EventType::Other`]).
    pub fn event_type(&self) -> EventType {
        match self {
            Decoded::Wire(w) => w.event_type(),
            Decoded::Model(e) => e.event_type(),
        }
    }

    /// The event id.
    pub fn event_id(&self) -> EventId {
        match self {
            Decoded::Wire(w) => w.event_id(),
            Decoded::Model(e) => e.header().event_id,
        }
    }

    /// When the event happened.
    pub fn occurred_at(&self) -> Timestamp {
        match self {
            Decoded::Wire(w) => w.occurred_at(),
            Decoded::Model(e) => e.header().occurred_at,
        }
    }

    /// The owned event.
    pub fn into_event(self) -> Event {
        match self {
            Decoded::Wire(w) => w.to_event(),
            Decoded::Model(e) => e,
        }
    }
}

/// Decodes events one after another into one reused slot: [`decode_wire`] without
/// moving each decoded event (over a kilobyte of fields) out of the reader, for a caller
/// that handles each event before decoding the next (the ledger's conversion).
#[derive(Debug)]
pub struct WireDecoder<'a> {
    slot: Decoded<'a>,
}

impl Default for WireDecoder<'_> {
    fn default() -> Self {
        Self {
            slot: Decoded::Wire(WireEvent::default()),
        }
    }
}

impl<'a> WireDecoder<'a> {
    /// Decode `bytes`: the same event and errors as [`decode_wire`].
    pub fn decode(&mut self, bytes: &'a [u8]) -> Result<&Decoded<'a>, DecodeError> {
        if matches!(self.slot, Decoded::Model(_)) {
            self.slot = Decoded::Wire(WireEvent::default());
        }
        // `Err(None)`: the full model decides (and words the error).
        let read = match &mut self.slot {
            Decoded::Wire(w) => match w.read_into(bytes) {
                Ok(EventType::Other) => Err(Some(DecodeError::UnknownEventType(
                    w.event_type
                        .as_ref()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                ))),
                Ok(_) => Ok(()),
                Err(_) => Err(None),
            },
            // Not reached (the slot holds the wire form from above); the model decides.
            Decoded::Model(_) => Err(None),
        };
        match read {
            Ok(()) => {}
            Err(Some(e)) => return Err(e),
            Err(None) => self.slot = Decoded::Model(decode_model(bytes)?),
        }
        Ok(&self.slot)
    }
}

/// The canonical-form reader alone: `Some` only for a payload in the form tally's
/// writers produce, with the result serde's reader gives it. [`decode_wire`] tries it
/// first; this is public for the tests and fuzz targets that compare the two readers.
#[doc(hidden)]
pub fn read_canonical(bytes: &[u8]) -> Option<WireEvent<'_>> {
    canonical::read(std::str::from_utf8(bytes).ok()?)
}

/// Decode one event without copying its strings where possible: the same rules and
/// errors as [`decode`] (which is this plus [`Decoded::into_event`]).
pub fn decode_wire(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    match WireEvent::read(bytes) {
        Ok((w, t)) if t != EventType::Other => Ok(Decoded::Wire(w)),
        Ok((w, _)) => Err(DecodeError::UnknownEventType(
            w.event_type.map(|t| t.0.into_owned()).unwrap_or_default(),
        )),
        // The full model decides (and words the error).
        Err(_) => decode_model(bytes).map(Decoded::Model),
    }
}

/// Decode one event from its JSON wire form.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_wire(bytes).map(Decoded::into_event)
}

fn decode_model(bytes: &[u8]) -> Result<Event, DecodeError> {
    match serde_json::from_slice::<Event>(bytes) {
        Ok(e) => Ok(e),
        Err(err) => {
            #[derive(Deserialize)]
            struct Probe {
                event_type: String,
            }
            match serde_json::from_slice::<Probe>(bytes) {
                Ok(p) if !["decision", "usage", "correction"].contains(&p.event_type.as_str()) => {
                    Err(DecodeError::UnknownEventType(p.event_type))
                }
                _ => Err(DecodeError::Invalid(err)),
            }
        }
    }
}
