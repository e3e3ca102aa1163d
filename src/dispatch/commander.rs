//! The seam between dispatch and the hardware: dispatch decides *what* each local meter
//! must do and *when*; a `Commander` makes it happen. The Modbus implementation lives in
//! `control`; tests and dry runs use [`RecordingCommander`].

use crate::model::Command;
use crate::seam::BoxFuture;
use std::sync::{Arc, Mutex};

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

/// What a [`RecordingCommander`] was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Apply { meter: String, command: Command },
    Release { meter: String },
}

/// Keeps every call in memory; for tests and for sites without devices.
#[derive(Debug, Clone, Default)]
pub struct RecordingCommander {
    calls: Arc<Mutex<Vec<Recorded>>>,
}

impl RecordingCommander {
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().expect("recording lock").clone()
    }
}

impl Commander for RecordingCommander {
    fn apply<'a>(
        &'a self,
        meter: &'a str,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        self.calls
            .lock()
            .expect("recording lock")
            .push(Recorded::Apply {
                meter: meter.to_string(),
                command: command.clone(),
            });
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, meter: &'a str) -> BoxFuture<'a, Result<(), CommandError>> {
        self.calls
            .lock()
            .expect("recording lock")
            .push(Recorded::Release {
                meter: meter.to_string(),
            });
        Box::pin(async { Ok(()) })
    }
}
