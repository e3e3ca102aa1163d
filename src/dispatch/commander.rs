//! The seam between dispatch and the hardware: dispatch decides *what* each local meter
//! must do and *when*; a `Commander` makes it happen. The Modbus implementation lives in
//! `control`; tests use the recording double in `dispatch/recording.rs`.

use crate::model::Command;
use crate::seam::BoxFuture;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("meter {meter}: no device is configured for it")]
    UnknownMeter { meter: String },
    /// The command is kept and retried by the device's loop; this reports the first failure.
    #[error("meter {meter}: device {device} did not take the command yet: {reason}")]
    Device {
        meter: String,
        device: String,
        reason: String,
    },
}

pub trait Commander: Send + Sync {
    /// Make `meter` follow `command` until told otherwise. Called again with an updated
    /// command when the governing timeslot changes.
    fn apply<'a>(
        &'a self,
        meter: &'a str,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(), CommandError>>;

    /// Hand `meter`'s battery back to normal (self-consumption) operation.
    fn release<'a>(&'a self, meter: &'a str) -> BoxFuture<'a, Result<(), CommandError>>;
}
