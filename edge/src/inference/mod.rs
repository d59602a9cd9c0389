//! From a frame to a decision: the [`engine`] decodes and preprocesses a frame straight
//! into the encoder session's input and runs it, the [`score`] stage measures the
//! embedding against the clusters, and the [`frame_loop`] pulls frames from a source,
//! counts bad ones and keeps latency statistics.

pub mod engine;
pub mod frame_loop;
pub mod score;

pub use engine::Engine;
pub use frame_loop::{peak_memory_bytes, run, Ending, Event, RunLimits, RunSummary};
pub use score::{FrameRecord, FrameScorer, StageLatency};
