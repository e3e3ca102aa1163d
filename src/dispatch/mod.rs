//! Dispatch: one task owns the clock, wakes at every plan boundary and hands each local
//! meter its command through a [`Commander`]; every action lands in the audit log.
//!
//! The parts are plain values: `overrides` (the shared override store and the pure
//! resolver), `meter` (one meter's state and the pure step decisions), `record` (the audit
//! writer), `resume` (the restart lookup); `engine` is the loop over them.

pub(crate) mod commander;
pub(crate) mod engine;
mod meter;
pub(crate) mod overrides;
mod record;
#[cfg(any(test, feature = "test-util"))]
mod recording;
mod resume;
pub(crate) mod status;

pub use commander::{CommandError, Commander};
pub use engine::Dispatcher;
#[cfg(any(test, feature = "test-util"))]
pub use recording::{Recorded, RecordingCommander};
pub(crate) use status::DispatchStatus;
