//! From per-frame decisions to an alarm a safety controller can act on: the debouncing
//! state machine ([`machine`]: k-of-n raise, m-in-a-row and hold-time clear, stall and
//! frozen-camera faults, failed outputs), the service thread that runs it and drives the
//! outputs with heartbeats ([`service`]), and the software watchdog on the GPIO line
//! ([`watchdog`]).

pub mod machine;
pub mod service;
pub mod watchdog;

pub use machine::{
    alarm_rate, AlarmConfig, AlarmMachine, AlarmRate, DecisionRule, FrameOutcome, Output,
    Transition,
};
pub use service::{AlarmService, LoopEvent, Outputs, ServiceReport};
