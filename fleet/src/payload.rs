//! Topics and payloads, version 1 (PROTOCOL.md, "Fleet monitoring over MQTT"): JSON objects
//! with `"v": 1`; unknown fields are ignored so that fields can be added within a version.

use serde::{Deserialize, Serialize};

/// The `v` field of every payload this build writes and reads.
pub const PAYLOAD_VERSION: u32 = 1;

/// `oodmon/<fleet>/<vehicle>`.
pub fn topic_prefix(fleet: &str, vehicle: &str) -> String {
    format!("oodmon/{fleet}/{vehicle}")
}

/// Whether `level` can be a fleet or vehicle topic level: not empty, no `/`, `+`, `#` or
/// control characters.
pub fn valid_level(level: &str) -> bool {
    !level.is_empty() && !level.contains(['/', '+', '#']) && !level.chars().any(char::is_control)
}

/// What a topic under `oodmon/` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Event { fleet: String, vehicle: String },
    State { fleet: String, vehicle: String },
    Heartbeat { fleet: String, vehicle: String },
    Score { fleet: String, vehicle: String },
    Evidence { fleet: String, vehicle: String },
}

impl Topic {
    /// Parses `oodmon/FLEET/VEHICLE/{event,state,heartbeat}`; anything else is `None`.
    pub fn parse(topic: &str) -> Option<Self> {
        let mut parts = topic.split('/');
        let (root, fleet, vehicle, kind) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if root != "oodmon"
            || parts.next().is_some()
            || !valid_level(fleet)
            || !valid_level(vehicle)
        {
            return None;
        }
        let (fleet, vehicle) = (fleet.to_string(), vehicle.to_string());
        match kind {
            "event" => Some(Topic::Event { fleet, vehicle }),
            "state" => Some(Topic::State { fleet, vehicle }),
            "heartbeat" => Some(Topic::Heartbeat { fleet, vehicle }),
            "score" => Some(Topic::Score { fleet, vehicle }),
            "evidence" => Some(Topic::Evidence { fleet, vehicle }),
            _ => None,
        }
    }
}

/// `.../event` (QoS 1): one journalled state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    pub v: u32,
    pub fleet: String,
    pub vehicle: String,
    /// Random id of the edge process that published it.
    pub boot: String,
    /// The journal's sequence number (+1 per event across restarts): the receiver's
    /// deduplication key, per vehicle.
    pub sequence: u64,
    /// When the state changed (milliseconds since the Unix epoch), not when it was sent.
    pub time_ms: u64,
    pub state: String,
    pub reason: String,
    pub score: Option<f64>,
    pub frame: Option<u64>,
}

/// `.../state` (QoS 1, retained): the vehicle's current state, or offline (its last will,
/// reason `connection_lost`, or a clean stop, reason `stopped`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatePayload {
    pub v: u32,
    pub fleet: String,
    pub vehicle: String,
    pub boot: String,
    pub online: bool,
    /// The last journalled state and reason (`null` before the first event; the reason is
    /// the offline cause when `online` is false).
    pub state: Option<String>,
    pub reason: Option<String>,
    /// Sequence and time of that event.
    pub sequence: Option<u64>,
    pub since_ms: Option<u64>,
}

/// `.../heartbeat` (QoS 0): the edge is alive, with the state it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    pub v: u32,
    pub fleet: String,
    pub vehicle: String,
    pub boot: String,
    pub time_ms: u64,
    pub state: Option<String>,
    /// Events journalled but not yet acknowledged by the broker.
    pub backlog: u64,
}

/// `.../score` (QoS 0, optional, at most `score_hz` a second): the latest frame's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorePayload {
    pub v: u32,
    pub fleet: String,
    pub vehicle: String,
    pub boot: String,
    /// When the frame was judged (ms since the Unix epoch, the vehicle's clock).
    pub time_ms: u64,
    pub frame: u64,
    pub score: f64,
    pub threshold: f64,
    pub ood: bool,
}

/// `.../evidence` (QoS 1, retained): an alarm's evidence is on the vehicle's disk, with a
/// thumbnail of the frame the alarm was decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePayload {
    pub v: u32,
    pub fleet: String,
    pub vehicle: String,
    pub boot: String,
    /// The event's journal sequence and time.
    pub sequence: u64,
    pub time_ms: u64,
    pub state: String,
    pub reason: String,
    /// The evidence directory on the vehicle (under its evidence directory).
    pub dir: String,
    /// Frames kept, and the frame of the thumbnail.
    pub frames: u64,
    pub frame: Option<u64>,
    /// A JPEG at most 160 pixels wide, base64 (standard alphabet, padded).
    pub thumbnail_jpeg: String,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not `oodmon/FLEET/VEHICLE/{event,state,heartbeat}`.
    Topic,
    /// Not JSON of the topic's payload.
    Payload(String),
    /// Another payload version.
    Version(u32),
    /// The payload names another fleet or vehicle than its topic.
    Mismatch,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Topic => write!(f, "not an oodmon fleet topic"),
            Refused::Payload(e) => write!(f, "malformed payload: {e}"),
            Refused::Version(v) => write!(f, "payload version {v}, not {PAYLOAD_VERSION}"),
            Refused::Mismatch => write!(f, "payload names another fleet or vehicle than its topic"),
        }
    }
}

/// A message, parsed and checked against its topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(EventPayload),
    State(StatePayload),
    Heartbeat(HeartbeatPayload),
    Score(ScorePayload),
    Evidence(EvidencePayload),
}

impl Message {
    /// Parses a message from its topic and payload bytes.
    pub fn parse(topic: &str, payload: &[u8]) -> Result<Self, Refused> {
        let t = Topic::parse(topic).ok_or(Refused::Topic)?;
        let bad = |e: serde_json::Error| Refused::Payload(e.to_string());
        let (fleet, vehicle) = match &t {
            Topic::Event { fleet, vehicle }
            | Topic::State { fleet, vehicle }
            | Topic::Heartbeat { fleet, vehicle }
            | Topic::Score { fleet, vehicle }
            | Topic::Evidence { fleet, vehicle } => (fleet, vehicle),
        };
        let (msg, v, names) = match &t {
            Topic::Event { .. } => {
                let p: EventPayload = serde_json::from_slice(payload).map_err(bad)?;
                let (v, names) = (p.v, (p.fleet.clone(), p.vehicle.clone()));
                (Message::Event(p), v, names)
            }
            Topic::State { .. } => {
                let p: StatePayload = serde_json::from_slice(payload).map_err(bad)?;
                let (v, names) = (p.v, (p.fleet.clone(), p.vehicle.clone()));
                (Message::State(p), v, names)
            }
            Topic::Heartbeat { .. } => {
                let p: HeartbeatPayload = serde_json::from_slice(payload).map_err(bad)?;
                let (v, names) = (p.v, (p.fleet.clone(), p.vehicle.clone()));
                (Message::Heartbeat(p), v, names)
            }
            Topic::Score { .. } => {
                let p: ScorePayload = serde_json::from_slice(payload).map_err(bad)?;
                let (v, names) = (p.v, (p.fleet.clone(), p.vehicle.clone()));
                (Message::Score(p), v, names)
            }
            Topic::Evidence { .. } => {
                let p: EvidencePayload = serde_json::from_slice(payload).map_err(bad)?;
                let (v, names) = (p.v, (p.fleet.clone(), p.vehicle.clone()));
                (Message::Evidence(p), v, names)
            }
        };
        if v != PAYLOAD_VERSION {
            return Err(Refused::Version(v));
        }
        if names.0 != *fleet || names.1 != *vehicle {
            return Err(Refused::Mismatch);
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_others_are_refused() {
        assert_eq!(
            Topic::parse("oodmon/yard/agv-7/event"),
            Some(Topic::Event {
                fleet: "yard".into(),
                vehicle: "agv-7".into()
            })
        );
        for bad in [
            "oodmon/yard/agv-7",
            "oodmon/yard/agv-7/score/x",
            "other/yard/agv-7/event",
            "oodmon//agv-7/state",
            "oodmon/yard/agv-7/evidences",
            "oodmon/yard/agv-7/scores",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_versioned_and_mismatched_payloads_are_refused() {
        let event = EventPayload {
            v: PAYLOAD_VERSION,
            fleet: "yard".into(),
            vehicle: "a".into(),
            boot: "b".into(),
            sequence: 3,
            time_ms: 1,
            state: "OOD".into(),
            reason: "ood_frames".into(),
            score: Some(1.5),
            frame: None,
        };
        let json = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            Message::parse("oodmon/yard/a/event", &json),
            Ok(Message::Event(event.clone()))
        );
        // an added field is ignored within version 1
        let mut extra: serde_json::Value = serde_json::from_slice(&json).unwrap();
        extra["new_field"] = 7.into();
        assert!(Message::parse("oodmon/yard/a/event", extra.to_string().as_bytes()).is_ok());
        assert_eq!(
            Message::parse("oodmon/yard/b/event", &json),
            Err(Refused::Mismatch)
        );
        assert!(matches!(
            Message::parse("oodmon/yard/a/event", b"{\"v\":1"),
            Err(Refused::Payload(_))
        ));
        assert!(matches!(
            Message::parse("oodmon/yard/a/state", &json),
            Err(Refused::Payload(_))
        ));
        let v2 = serde_json::to_vec(&EventPayload { v: 2, ..event }).unwrap();
        assert_eq!(
            Message::parse("oodmon/yard/a/event", &v2),
            Err(Refused::Version(2))
        );
    }
}
