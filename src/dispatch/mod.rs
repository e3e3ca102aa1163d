//! Dispatch: one task owns the clock, wakes at every plan boundary and hands each local
//! meter its command through a [`Commander`]; every action lands in the audit log.

pub mod commander;
pub mod engine;
pub mod overrides;
mod record;
mod resume;
pub mod status;

pub use commander::{CommandError, Commander, Recorded, RecordingCommander};
pub use engine::Dispatcher;
pub use status::{DispatchSnapshot, DispatchStatus};
