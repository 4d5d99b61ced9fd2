//! The wire encoding of events: one JSON object per event (UTF-8, no framing of its
//! own). Owns encode/decode and the forward-compatibility rules; must not know about
//! logs, files or Kafka, which only carry the bytes.
//!
//! Rules (documented in docs/events.md): field names are the column names; unknown
//! fields are ignored; unknown values of closed vocabularies decode as `other`; an
//! unknown `event_type` is reported as [`DecodeError::UnknownEventType`] so a reader can
//! skip it.

use serde::Deserialize;

use crate::model::Event;

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

/// Decode one event from its JSON wire form.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
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
