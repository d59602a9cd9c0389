//! Fleet monitoring over MQTT, the part both ends share: the topics and JSON payloads
//! `oodmon-edge` publishes ([`payload`], PROTOCOL.md "Fleet monitoring over MQTT") and a
//! control room's view of a fleet built from the messages ([`view`]), and the broker
//! connection's settings (`client`, feature `client`: URL, TLS with a pinned CA,
//! credentials).

#[cfg(feature = "client")]
pub mod client;
pub mod payload;
pub mod view;

pub use payload::Message;
pub use payload::{
    topic_prefix, EventPayload, EvidencePayload, HeartbeatPayload, ScorePayload, StatePayload,
    Topic, PAYLOAD_VERSION,
};
pub use view::{FleetView, Vehicle};
