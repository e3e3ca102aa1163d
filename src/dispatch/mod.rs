//! Dispatch: one task owns the clock, wakes at every plan boundary and hands each local
//! meter its command through a [`Commander`].

pub mod commander;

pub use commander::{BoxFuture, CommandError, Commander, Recorded, RecordingCommander};
