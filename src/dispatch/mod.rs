//! Dispatch: one task owns the clock, wakes at every plan boundary and hands each local
//! meter its command through a [`Commander`]; every action lands in the audit log.
//!
//! The parts are plain values: `overrides` (the shared override store and the pure
//! resolver), `meter` (one meter's state and the pure step decisions), `record` (the audit
//! writer), `resume` (the restart lookup); `engine` is the loop over them.

pub mod commander;
pub mod engine;
mod meter;
pub mod overrides;
mod record;
mod resume;
pub mod status;

pub use commander::{BoxFuture, CommandError, Commander, Recorded, RecordingCommander};
pub use engine::Dispatcher;
pub use status::{DispatchSnapshot, DispatchStatus};
