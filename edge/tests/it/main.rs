//! oodmon-edge integration tests (one binary; shared helpers in `util`).

mod alarms;
mod alloc;
mod cli;
mod engine;
mod sources;
mod util;
