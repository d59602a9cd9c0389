//! A control room's view of a fleet, built from the messages as they arrive: one row per
//! vehicle with its state, reason, heartbeat age, alarms in the last hour and whether it is
//! offline. Events are deduplicated by sequence per vehicle (PROTOCOL.md: delivery is at
//! least once), gaps are counted, malformed messages refused and counted.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use crate::payload::{EventPayload, Message, Refused};

/// How long alarm entries count in [`Vehicle::alarms_last_hour`].
const HOUR_MS: u64 = 3_600_000;

/// One vehicle's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vehicle {
    pub fleet: String,
    pub vehicle: String,
    pub state: Option<String>,
    pub reason: Option<String>,
    /// When the current state began (the vehicle's clock, ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// False after the last will or a clean stop, until the vehicle is back.
    pub online: bool,
    /// Why it is offline (`connection_lost`, `stopped`).
    pub offline_reason: Option<String>,
    /// When the last heartbeat arrived (the monitor's clock).
    pub heartbeat_at_ms: Option<u64>,
    /// Events journalled on the vehicle and not yet acknowledged by the broker.
    pub backlog: u64,
    /// Highest event sequence seen: the deduplication key.
    pub sequence: Option<u64>,
    pub boot: Option<String>,
    /// Times (the vehicle's clock) of entries into OOD or FAULT, the last hour's.
    alarm_times: VecDeque<u64>,
    /// Events dropped as repeats (at or below the highest sequence).
    pub repeats: u64,
    /// Events missed: sequence jumps.
    pub missed: u64,
    /// The latest scores (`.../score`), oldest first, at most [`SCORES_KEPT`].
    pub scores: VecDeque<f64>,
    pub threshold: Option<f64>,
    /// The latest alarm evidence: its event sequence, directory and thumbnail (base64 JPEG).
    pub evidence: Option<(u64, String, String)>,
}

/// Scores kept per vehicle for a sparkline.
pub const SCORES_KEPT: usize = 60;

impl Vehicle {
    /// Entries into OOD or FAULT in the hour before `now_ms`.
    pub fn alarms_last_hour(&self, now_ms: u64) -> usize {
        self.alarm_times
            .iter()
            .filter(|&&t| t + HOUR_MS > now_ms)
            .count()
    }

    /// Milliseconds since the last heartbeat arrived.
    pub fn heartbeat_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.heartbeat_at_ms.map(|t| now_ms.saturating_sub(t))
    }
}

/// What one message did to the view.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A new event (first arrival), to show and log.
    Event(EventPayload),
    /// An event already seen: dropped.
    Repeat,
    State,
    Heartbeat,
    Score,
    Evidence,
    Refused(Refused),
}

/// Every vehicle of the fleets the monitor subscribed to.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    vehicles: BTreeMap<(String, String), Vehicle>,
    /// Messages refused (malformed, another version, a topic that is not ours).
    pub refused: u64,
    pub last_refusal: Option<String>,
}

impl FleetView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one message received at `now_ms` (the monitor's wall clock).
    pub fn apply(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Applied {
        match Message::parse(topic, payload) {
            Ok(m) => self.apply_message(m, now_ms),
            Err(r) => {
                self.refused += 1;
                self.last_refusal = Some(format!("{topic}: {r}"));
                Applied::Refused(r)
            }
        }
    }

    /// Applies a message already parsed (with [`Message::parse`]).
    pub fn apply_message(&mut self, msg: Message, now_ms: u64) -> Applied {
        match msg {
            Message::Event(e) => {
                let v = self.vehicle(&e.fleet, &e.vehicle);
                if v.sequence.is_some_and(|s| e.sequence <= s) {
                    v.repeats += 1;
                    return Applied::Repeat;
                }
                if let Some(s) = v.sequence {
                    v.missed += e.sequence - s - 1;
                }
                v.sequence = Some(e.sequence);
                v.boot = Some(e.boot.clone());
                let entering_alarm =
                    e.state != "OK" && v.state.as_deref() != Some(e.state.as_str());
                if entering_alarm {
                    v.alarm_times.push_back(e.time_ms);
                }
                while v
                    .alarm_times
                    .front()
                    .is_some_and(|&t| t + HOUR_MS <= now_ms)
                {
                    v.alarm_times.pop_front();
                }
                v.state = Some(e.state.clone());
                v.reason = Some(e.reason.clone());
                v.since_ms = Some(e.time_ms);
                v.online = true;
                v.offline_reason = None;
                Applied::Event(e)
            }
            Message::State(s) => {
                let v = self.vehicle(&s.fleet, &s.vehicle);
                v.online = s.online;
                if s.online {
                    v.offline_reason = None;
                    // a retained state can be older than the events already seen
                    if s.sequence >= v.sequence {
                        v.state = s.state;
                        v.reason = s.reason;
                        v.since_ms = s.since_ms;
                    }
                } else {
                    v.offline_reason = s.reason;
                }
                v.boot = Some(s.boot);
                Applied::State
            }
            Message::Heartbeat(h) => {
                let v = self.vehicle(&h.fleet, &h.vehicle);
                v.heartbeat_at_ms = Some(now_ms);
                v.backlog = h.backlog;
                v.online = true;
                v.offline_reason = None;
                Applied::Heartbeat
            }
            Message::Score(p) => {
                let v = self.vehicle(&p.fleet, &p.vehicle);
                if v.scores.len() == SCORES_KEPT {
                    v.scores.pop_front();
                }
                v.scores.push_back(p.score);
                v.threshold = Some(p.threshold);
                Applied::Score
            }
            Message::Evidence(p) => {
                let v = self.vehicle(&p.fleet, &p.vehicle);
                if v.evidence.as_ref().is_none_or(|(s, _, _)| p.sequence >= *s) {
                    v.evidence = Some((p.sequence, p.dir, p.thumbnail_jpeg));
                }
                Applied::Evidence
            }
        }
    }

    fn vehicle(&mut self, fleet: &str, vehicle: &str) -> &mut Vehicle {
        self.vehicles
            .entry((fleet.to_string(), vehicle.to_string()))
            .or_insert_with(|| Vehicle {
                fleet: fleet.into(),
                vehicle: vehicle.into(),
                online: true,
                ..Default::default()
            })
    }

    pub fn vehicles(&self) -> impl Iterator<Item = &Vehicle> {
        self.vehicles.values()
    }

    /// Whether the vehicle is to be flagged: offline by its will or stop, or silent for
    /// longer than `silence_ms` (no heartbeat).
    pub fn flagged(v: &Vehicle, now_ms: u64, silence_ms: u64) -> bool {
        !v.online || v.heartbeat_age_ms(now_ms).is_some_and(|a| a > silence_ms)
    }

    /// What a flagged vehicle's row says: `OFFLINE (reason)`, `SILENT`, or nothing.
    pub fn flag(v: &Vehicle, now_ms: u64, silence_ms: u64) -> String {
        if !v.online {
            format!(
                "OFFLINE ({})",
                v.offline_reason.as_deref().unwrap_or("unknown")
            )
        } else if Self::flagged(v, now_ms, silence_ms) {
            "SILENT".into()
        } else {
            String::new()
        }
    }

    /// The table as text: one line per vehicle.
    pub fn table(&self, now_ms: u64, silence_ms: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<12} {:<14} {:<6} {:<22} {:>10} {:>8} {:>7} {:>10}  flag",
            "fleet", "vehicle", "state", "reason", "heartbeat", "alarms/h", "backlog", "score"
        );
        for v in self.vehicles() {
            let age = v
                .heartbeat_age_ms(now_ms)
                .map_or("-".to_string(), |a| format!("{:.1} s", a as f64 / 1000.0));
            let flag = Self::flag(v, now_ms, silence_ms);
            let _ = writeln!(
                s,
                "{:<12} {:<14} {:<6} {:<22} {:>10} {:>8} {:>7} {:>10}  {flag}",
                v.fleet,
                v.vehicle,
                v.state.as_deref().unwrap_or("-"),
                v.reason.as_deref().unwrap_or("-"),
                age,
                v.alarms_last_hour(now_ms),
                v.backlog,
                v.scores
                    .back()
                    .map_or("-".to_string(), |s| format!("{s:.3}")),
            );
        }
        if self.refused > 0 {
            let _ = writeln!(
                s,
                "{} messages refused (last: {})",
                self.refused,
                self.last_refusal.as_deref().unwrap_or("")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{HeartbeatPayload, StatePayload, PAYLOAD_VERSION};

    fn event(vehicle: &str, sequence: u64, state: &str, time_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&EventPayload {
            v: PAYLOAD_VERSION,
            fleet: "yard".into(),
            vehicle: vehicle.into(),
            boot: "b1".into(),
            sequence,
            time_ms,
            state: state.into(),
            reason: if state == "OK" {
                "cleared"
            } else {
                "ood_frames"
            }
            .into(),
            score: None,
            frame: None,
        })
        .unwrap()
    }

    #[test]
    fn events_are_deduplicated_gaps_counted_and_alarms_counted_per_hour() {
        let mut f = FleetView::new();
        let now = 10 * HOUR_MS;
        assert!(matches!(
            f.apply(
                "oodmon/yard/a/event",
                &event("a", 0, "OK", now - 2 * HOUR_MS),
                now
            ),
            Applied::Event(_)
        ));
        f.apply(
            "oodmon/yard/a/event",
            &event("a", 1, "OOD", now - 2 * HOUR_MS),
            now,
        );
        f.apply("oodmon/yard/a/event", &event("a", 2, "OK", now - 1000), now);
        // a repeat after a reconnection, then a jump of two
        assert_eq!(
            f.apply("oodmon/yard/a/event", &event("a", 1, "OOD", 0), now),
            Applied::Repeat
        );
        f.apply("oodmon/yard/a/event", &event("a", 5, "OOD", now - 500), now);
        let a = f.vehicles().next().unwrap();
        assert_eq!((a.repeats, a.missed, a.sequence), (1, 2, Some(5)));
        assert_eq!(a.state.as_deref(), Some("OOD"));
        // the OOD two hours ago no longer counts
        assert_eq!(a.alarms_last_hour(now), 1);
        assert!(!FleetView::flagged(a, now, 5000));
        assert!(f.table(now, 5000).contains("ood_frames"));
        // scores keep the last SCORES_KEPT for a sparkline
        for i in 0..SCORES_KEPT + 5 {
            let p = serde_json::to_vec(&crate::payload::ScorePayload {
                v: PAYLOAD_VERSION,
                fleet: "yard".into(),
                vehicle: "a".into(),
                boot: "b1".into(),
                time_ms: now,
                frame: i as u64,
                score: i as f64,
                threshold: 3.0,
                ood: i > 3,
            })
            .unwrap();
            assert_eq!(f.apply("oodmon/yard/a/score", &p, now), Applied::Score);
        }
        let a = f.vehicles().next().unwrap();
        assert_eq!(a.scores.len(), SCORES_KEPT);
        assert_eq!(a.scores.back(), Some(&((SCORES_KEPT + 4) as f64)));
        assert!(f.table(now, 5000).contains("64.000"));
    }

    #[test]
    fn the_last_will_flags_a_vehicle_until_it_is_back_and_junk_is_counted() {
        let mut f = FleetView::new();
        let state = |online: bool, reason: &str| {
            serde_json::to_vec(&StatePayload {
                v: PAYLOAD_VERSION,
                fleet: "yard".into(),
                vehicle: "b".into(),
                boot: "x".into(),
                online,
                state: Some("OK".into()),
                reason: Some(reason.into()),
                sequence: Some(3),
                since_ms: Some(1),
            })
            .unwrap()
        };
        f.apply("oodmon/yard/b/state", &state(true, "cleared"), 1000);
        f.apply(
            "oodmon/yard/b/state",
            &state(false, "connection_lost"),
            2000,
        );
        let b = f.vehicles().next().unwrap();
        assert!(FleetView::flagged(b, 2000, 5000));
        assert!(f.table(2000, 5000).contains("OFFLINE (connection_lost)"));
        let beat = serde_json::to_vec(&HeartbeatPayload {
            v: PAYLOAD_VERSION,
            fleet: "yard".into(),
            vehicle: "b".into(),
            boot: "y".into(),
            time_ms: 0,
            state: Some("OK".into()),
            backlog: 4,
        })
        .unwrap();
        f.apply("oodmon/yard/b/heartbeat", &beat, 3000);
        let b = f.vehicles().next().unwrap();
        assert!(!FleetView::flagged(b, 3000, 5000) && b.backlog == 4);
        // silent: no heartbeat for longer than the limit
        assert!(FleetView::flagged(b, 9000, 5000));
        assert!(f.table(9000, 5000).contains("SILENT"));
        for (topic, junk) in [
            ("oodmon/yard/b/event", &b"not json"[..]),
            ("oodmon/yard/b/state", b"{}"),
            ("oodmon/yard/c/heartbeat", &beat[..]),
        ] {
            assert!(matches!(f.apply(topic, junk, 9000), Applied::Refused(_)));
        }
        assert_eq!(f.refused, 3);
        assert_eq!(f.vehicles().count(), 1);
    }
}
