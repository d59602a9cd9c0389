//! # oodmon-protocol
//!
//! The alarm link between the edge and a safety controller, written down in `PROTOCOL.md`
//! so that a PLC or microcontroller programmer can implement it without this code.
//!
//! A message is an 18-byte header (version, type, session id, sequence number, wall-clock
//! label), a payload of fixed size per type and a CRC-32C over both, all little-endian; on
//! the wire it is COBS-encoded and ends with one zero byte. [`receiver`] holds the rules a
//! receiver applies: sender restarts, duplicates and lost messages told apart by session
//! and sequence, link loss after two heartbeat periods, and the CRC error-rate limit. Encoding writes into a caller's
//! fixed buffer and decoding keeps one frame in a `heapless` buffer: no allocation, no
//! `std`, so the same code runs on a microcontroller. The decoder never panics on any
//! byte sequence and resynchronises at the next zero byte.

#![no_std]

use crc::{Crc, CRC_32_ISCSI};

pub mod receiver;

/// Protocol version carried in every message. Version 1 had no session id and no heartbeat
/// period; version 3 added the camera reasons (codes 12-17), version 4 the oversaturated
/// camera (18). A receiver refuses another version's frames by their version byte, so an
/// old controller fails safe on a new sender (version mismatch, then link lost) instead of
/// misreading a reason.
pub const VERSION: u8 = 4;
/// Header bytes: version (1), type (1), session (4), sequence (4), timestamp in ms (8).
pub const HEADER_LEN: usize = 18;
/// CRC-32C (Castagnoli, as iSCSI) over header and payload.
pub const CRC_LEN: usize = 4;
/// Largest payload (SCORE).
pub const MAX_PAYLOAD: usize = 13;
/// Largest unencoded message.
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Largest frame on the wire, COBS overhead and the zero delimiter included.
pub const MAX_FRAME: usize = corncobs::max_encoded_len(MAX_MESSAGE);
/// Most bytes a valid frame has before its delimiter; a receiver rejects longer ones.
pub const MAX_ENCODED: usize = MAX_FRAME - 1;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The alarm state a controller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AlarmState {
    /// In distribution: the vision model can be trusted.
    Ok = 0,
    /// Out of distribution: the scene is unlike the training data.
    Ood = 1,
    /// The monitor itself cannot vouch for anything (no frames, frozen camera, errors);
    /// fail-safe, treat as danger.
    Fault = 2,
}

impl AlarmState {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => AlarmState::Ok,
            1 => AlarmState::Ood,
            2 => AlarmState::Fault,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Ood => "OOD",
            AlarmState::Fault => "FAULT",
        }
    }
}

/// Why the state is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// Nothing to report (OK after start-up).
    None = 0,
    /// k of the last n frames were out of distribution.
    OodFrames = 1,
    /// m in-distribution frames in a row and the hold time passed.
    Cleared = 2,
    /// No frame for longer than the stall timeout.
    NoFrames = 3,
    /// The camera delivers identical frames.
    FrozenCamera = 4,
    /// The encoder failed on a frame.
    InferenceError = 5,
    /// The score was NaN or infinite.
    NonFiniteScore = 6,
    /// Too many undecodable or malformed frames in a row.
    BadFrames = 7,
    /// An alarm output (serial port, GPIO line) could not be written.
    OutputError = 8,
    /// The monitor is starting and has not judged a frame yet.
    Starting = 9,
    /// The monitor is shutting down.
    Stopping = 10,
    /// Inference is slower than the camera: too many recent frames were dropped unjudged.
    FramesDropped = 11,
    /// The camera guards: k of the last n frames were too dark.
    CameraDark = 12,
    /// ... too bright, or blown out.
    CameraOverexposed = 13,
    /// ... too low in contrast (fog, haze, glare, a dirty lens).
    CameraLowContrast = 14,
    /// ... partly covered by a uniform region (something on the lens).
    CameraOccluded = 15,
    /// ... too noisy, or full of compression blocks.
    CameraNoisy = 16,
    /// ... too blurred (defocus, motion, water on the lens).
    CameraBlurred = 17,
    /// ... colours more saturated than any calibration frame (a colour pipeline, white
    /// balance or gain gone wrong).
    CameraOversaturated = 18,
}

impl Reason {
    pub fn from_u8(v: u8) -> Option<Self> {
        use Reason::*;
        Some(match v {
            0 => None,
            1 => OodFrames,
            2 => Cleared,
            3 => NoFrames,
            4 => FrozenCamera,
            5 => InferenceError,
            6 => NonFiniteScore,
            7 => BadFrames,
            8 => OutputError,
            9 => Starting,
            10 => Stopping,
            11 => FramesDropped,
            12 => CameraDark,
            13 => CameraOverexposed,
            14 => CameraLowContrast,
            15 => CameraOccluded,
            16 => CameraNoisy,
            17 => CameraBlurred,
            18 => CameraOversaturated,
            _ => return Option::None,
        })
    }

    pub fn name(self) -> &'static str {
        use Reason::*;
        match self {
            None => "none",
            OodFrames => "ood_frames",
            Cleared => "cleared",
            NoFrames => "no_frames",
            FrozenCamera => "frozen_camera",
            InferenceError => "inference_error",
            NonFiniteScore => "non_finite_score",
            BadFrames => "bad_frames",
            OutputError => "output_error",
            Starting => "starting",
            Stopping => "stopping",
            FramesDropped => "frames_dropped",
            CameraDark => "camera_dark",
            CameraOverexposed => "camera_overexposed",
            CameraLowContrast => "camera_low_contrast",
            CameraOccluded => "camera_occluded",
            CameraNoisy => "camera_noisy",
            CameraBlurred => "camera_blurred",
            CameraOversaturated => "camera_oversaturated",
        }
    }
}

impl AlarmState {
    /// Whether `reason` may accompany this state; a receiver rejects other pairs.
    pub fn allows(self, reason: Reason) -> bool {
        use Reason::*;
        match self {
            AlarmState::Ok => reason == Cleared,
            AlarmState::Ood => reason == OodFrames,
            AlarmState::Fault => matches!(
                reason,
                NoFrames
                    | FrozenCamera
                    | InferenceError
                    | NonFiniteScore
                    | BadFrames
                    | OutputError
                    | Starting
                    | Stopping
                    | FramesDropped
                    | CameraDark
                    | CameraOverexposed
                    | CameraLowContrast
                    | CameraOccluded
                    | CameraNoisy
                    | CameraBlurred
                    | CameraOversaturated
            ),
        }
    }
}

/// Message type codes.
pub const HEARTBEAT: u8 = 1;
pub const STATE_CHANGE: u8 = 2;
pub const SCORE: u8 = 3;

/// The messages of the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Message {
    /// Sent every heartbeat period: the current state, so a silent link is itself a fault;
    /// `period_ms` is that period, so a receiver knows when silence means a lost link.
    Heartbeat {
        state: AlarmState,
        reason: Reason,
        period_ms: u16,
    },
    /// Sent at once when the state or its reason changes; `score` is the frame score that
    /// caused it (NaN when no frame did).
    StateChange {
        state: AlarmState,
        reason: Reason,
        score: f32,
    },
    /// Optional, per frame.
    Score {
        score: f32,
        threshold: f32,
        cluster: u16,
        /// Split-conformal p-value; NaN when not calibrated.
        p_value: f32,
        ood: bool,
    },
}

impl Message {
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Heartbeat { .. } => HEARTBEAT,
            Message::StateChange { .. } => STATE_CHANGE,
            Message::Score { .. } => SCORE,
        }
    }

    fn payload_len(type_code: u8) -> Option<usize> {
        match type_code {
            HEARTBEAT => Some(4),
            STATE_CHANGE => Some(6),
            SCORE => Some(13),
            _ => None,
        }
    }
}

/// A message with its header fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packet {
    /// Chosen at random (never 0) each time the sender starts: a new value is a restart.
    pub session: u32,
    /// 0 for the first message of a session, +1 per message the sender tries to send
    /// (wrapping), sent or not: a gap means lost messages.
    pub sequence: u32,
    /// Sender's wall clock, milliseconds since the Unix epoch: a label, never a timer
    /// (it may step when the sender's clock is set).
    pub timestamp_ms: u64,
    pub message: Message,
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes than any valid frame before the delimiter.
    TooLong,
    /// Not valid COBS.
    Cobs,
    /// Shorter than a header and CRC, or a payload of the wrong size for its type.
    Length,
    /// The CRC does not match: corrupted on the line.
    Crc,
    /// Another protocol version.
    Version(u8),
    /// Unknown message type.
    Type(u8),
    /// A state or reason code this version does not define, a reason that does not go
    /// with its state, or a session id of 0.
    Value,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::TooLong => write!(f, "frame longer than any valid frame"),
            DecodeError::Cobs => write!(f, "not valid COBS"),
            DecodeError::Length => write!(f, "wrong length for its message type"),
            DecodeError::Crc => write!(f, "CRC mismatch"),
            DecodeError::Version(v) => write!(
                f,
                "the sender speaks protocol version {v}, this receiver version {VERSION}: \
                 run the same oodmon version on both ends"
            ),
            DecodeError::Type(t) => write!(f, "unknown message type {t}"),
            DecodeError::Value => write!(f, "undefined state, reason or session value"),
        }
    }
}

impl Packet {
    /// Serialises the unencoded message (header, payload, CRC) into `out`; returns its length.
    pub fn to_bytes(&self, out: &mut [u8; MAX_MESSAGE]) -> usize {
        out[0] = VERSION;
        out[1] = self.message.type_code();
        out[2..6].copy_from_slice(&self.session.to_le_bytes());
        out[6..10].copy_from_slice(&self.sequence.to_le_bytes());
        out[10..18].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        let p = &mut out[HEADER_LEN..];
        let len = match self.message {
            Message::Heartbeat {
                state,
                reason,
                period_ms,
            } => {
                p[0] = state as u8;
                p[1] = reason as u8;
                p[2..4].copy_from_slice(&period_ms.to_le_bytes());
                4
            }
            Message::StateChange {
                state,
                reason,
                score,
            } => {
                p[0] = state as u8;
                p[1] = reason as u8;
                p[2..6].copy_from_slice(&score.to_le_bytes());
                6
            }
            Message::Score {
                score,
                threshold,
                cluster,
                p_value,
                ood,
            } => {
                p[0..4].copy_from_slice(&score.to_le_bytes());
                p[4..8].copy_from_slice(&threshold.to_le_bytes());
                p[8..10].copy_from_slice(&cluster.to_le_bytes());
                p[10] = ood as u8;
                // p-value last so a controller that ignores it reads a prefix
                p[11..13].copy_from_slice(&p_value_u16(p_value).to_le_bytes());
                13
            }
        };
        let body = HEADER_LEN + len;
        let crc = CRC32C.checksum(&out[..body]);
        out[body..body + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        body + CRC_LEN
    }

    /// Encodes the packet as one wire frame (COBS, then a zero byte) into `out`; returns
    /// the number of bytes to send.
    pub fn encode(&self, out: &mut [u8; MAX_FRAME]) -> usize {
        let mut raw = [0u8; MAX_MESSAGE];
        let n = self.to_bytes(&mut raw);
        corncobs::encode_buf(&raw[..n], &mut out[..])
    }

    /// Parses an unencoded message (header, payload, CRC).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, DecodeError> {
        // CRC and version come first and need only their own bytes, so that a frame of
        // another version (whose header may be shorter) is refused as such
        if raw.len() < 1 + CRC_LEN {
            return Err(DecodeError::Length);
        }
        let body = raw.len() - CRC_LEN;
        let crc = u32::from_le_bytes([raw[body], raw[body + 1], raw[body + 2], raw[body + 3]]);
        if CRC32C.checksum(&raw[..body]) != crc {
            return Err(DecodeError::Crc);
        }
        if raw[0] != VERSION {
            return Err(DecodeError::Version(raw[0]));
        }
        if raw.len() < HEADER_LEN + CRC_LEN {
            return Err(DecodeError::Length);
        }
        let type_code = raw[1];
        let want = Message::payload_len(type_code).ok_or(DecodeError::Type(type_code))?;
        let p = &raw[HEADER_LEN..body];
        if p.len() != want {
            return Err(DecodeError::Length);
        }
        let session = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
        if session == 0 {
            return Err(DecodeError::Value);
        }
        let sequence = u32::from_le_bytes([raw[6], raw[7], raw[8], raw[9]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[10..18]);
        let f32_at = |i: usize| f32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let pair = |s: u8, r: u8| match (AlarmState::from_u8(s), Reason::from_u8(r)) {
            (Some(s), Some(r)) if s.allows(r) => Ok((s, r)),
            _ => Err(DecodeError::Value),
        };
        let message = match type_code {
            HEARTBEAT => {
                let (state, reason) = pair(p[0], p[1])?;
                let period_ms = u16::from_le_bytes([p[2], p[3]]);
                if period_ms == 0 {
                    return Err(DecodeError::Value);
                }
                Message::Heartbeat {
                    state,
                    reason,
                    period_ms,
                }
            }
            STATE_CHANGE => {
                let (state, reason) = pair(p[0], p[1])?;
                Message::StateChange {
                    state,
                    reason,
                    score: f32_at(2),
                }
            }
            _ => Message::Score {
                score: f32_at(0),
                threshold: f32_at(4),
                cluster: u16::from_le_bytes([p[8], p[9]]),
                ood: match p[10] {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Value),
                },
                p_value: p_value_f32(u16::from_le_bytes([p[11], p[12]])),
            },
        };
        Ok(Packet {
            session,
            sequence,
            timestamp_ms: u64::from_le_bytes(ts),
            message,
        })
    }
}

/// p-values travel as u16 fixed point (value x 65534), 65535 meaning "not calibrated".
fn p_value_u16(p: f32) -> u16 {
    if p.is_finite() {
        (p.clamp(0.0, 1.0) * 65534.0 + 0.5) as u16
    } else {
        u16::MAX
    }
}

fn p_value_f32(v: u16) -> f32 {
    if v == u16::MAX {
        f32::NAN
    } else {
        v as f32 / 65534.0
    }
}

/// Reassembles frames from a byte stream, one byte at a time, in a fixed buffer.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: heapless::Vec<u8, MAX_ENCODED>,
    overflow: bool,
}

impl Decoder {
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            overflow: false,
        }
    }

    /// Feeds one byte; at a zero byte returns the frame it ends (a packet or why it was
    /// rejected). Empty frames (two zeros in a row) are skipped silently.
    pub fn push(&mut self, byte: u8) -> Option<Result<Packet, DecodeError>> {
        if byte != 0 {
            if self.buf.push(byte).is_err() {
                self.overflow = true;
            }
            return None;
        }
        let result = if self.overflow {
            Some(Err(DecodeError::TooLong))
        } else if self.buf.is_empty() {
            None
        } else {
            Some(match corncobs::decode_in_place(&mut self.buf) {
                Ok(n) => Packet::from_bytes(&self.buf[..n]),
                Err(_) => Err(DecodeError::Cobs),
            })
        };
        self.buf.clear();
        self.overflow = false;
        result
    }

    /// Bytes of an unfinished frame held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
