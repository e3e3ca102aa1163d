//! A `Commander` that only records what it was asked: the test double for dispatch tests,
//! the integration tests and the benches (built with `cfg(test)` or the `test-util` feature).

use super::commander::{CommandError, Commander};
use crate::model::Command;
use crate::seam::BoxFuture;
use std::sync::{Arc, Mutex};

/// What a [`RecordingCommander`] was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Apply { meter: String, command: Command },
    Release { meter: String },
}

/// Keeps every call in memory.
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
