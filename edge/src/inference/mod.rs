//! From a frame to a decision: the [`engine`] decodes and preprocesses a frame straight
//! into the encoder session's input and runs it, the [`score`] stage measures the
//! embedding against the clusters, and the [`frame_loop`] pulls frames from a source,
//! counts bad ones and keeps latency statistics; the [`overlap`] loop does the same with
//! the model on a second thread.

pub mod engine;
pub mod frame_loop;
pub mod overlap;
pub mod score;

pub use engine::{Engine, FramePreparer, InferStage, ModelStage};
pub use frame_loop::{
    describe_cut, peak_memory_bytes, run, run_in, Ending, Event, LoopMode, RunLimits, RunSummary,
};
pub use overlap::{run_overlapped, Backlog, OverlapSettings};
pub use score::{FrameRecord, FrameScorer, StageLatency};
