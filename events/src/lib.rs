//! tally's event model: the contract between the enforcer, the event log, the ledger and
//! the query layer. Owns the event types, their wire encoding, their Arrow schemas and the
//! event log (trait + local segment log). Depends on nothing else of tally's.

pub mod arrow;
pub mod codec;
pub mod log;
pub mod model;
pub mod time;

pub use codec::{DecodeError, Decoded, WireDecoder, WireEvent, decode, decode_wire, encode};
pub use model::{
    CorrectionEvent, CounterUnit, DecisionEvent, Event, EventHeader, EventId, EventType,
    FinishState, Outcome, Provider, Route, RuleKind, SCHEMA_VERSION, TokenCounts, UsageEvent,
    UsageSource,
};
pub use time::Timestamp;
