//! Dispatch's record of what it did: every action goes to the log, the lateness metric and
//! the audit table (SPEC §2.6 dry-runs included).

use super::CommandError;
use super::status::{DispatchStatus, Wake};
use crate::model::Command;
use crate::store::Store;
use crate::store::audit::{self, Action, AuditEntry};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// When an action was taken: the instant, and the wake-up that led to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moment {
    pub(crate) now: DateTime<Utc>,
    pub(crate) wake: Wake,
}

impl Moment {
    /// The instant an action is measured from when no plan boundary is (see [`Wake::at`]).
    pub(crate) fn at(self) -> DateTime<Utc> {
        self.wake.at(self.now)
    }
}

/// One action on one meter, as it goes to the audit log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) action: Action,
    pub(crate) command: Option<Command>,
    /// The instant the action was due; lateness is measured from it.
    pub(crate) boundary: DateTime<Utc>,
    pub(crate) result: Result<(), CommandError>,
    /// Why, when the wake-up's own description is not enough.
    pub(crate) detail: Option<String>,
}

impl Record {
    /// An action that called no device (or whose device call succeeded).
    pub(crate) fn ok(action: Action, command: Option<Command>, boundary: DateTime<Utc>) -> Self {
        Record {
            action,
            command,
            boundary,
            result: Ok(()),
            detail: None,
        }
    }
}

/// Writes [`Record`]s: the log line, the lateness histogram, the meter's last error and
/// the audit row.
#[derive(Clone)]
pub(crate) struct AuditWriter {
    store: Store,
    status: Arc<DispatchStatus>,
}

impl AuditWriter {
    pub(crate) fn new(store: Store, status: Arc<DispatchStatus>) -> Self {
        AuditWriter { store, status }
    }

    pub(crate) async fn write(&self, meter: &str, rec: Record, m: Moment) {
        let lateness = (m.now - rec.boundary).num_milliseconds().max(0);
        let detail = rec.detail.clone().or_else(|| m.wake.describe(lateness));
        let error = rec.result.as_ref().err().map(ToString::to_string);
        let target = rec.command.as_ref().map(|c| c.target.to_string());
        log(
            meter,
            &rec,
            target.as_deref(),
            error.as_deref(),
            lateness,
            &detail,
        );
        if matches!(m.wake, Wake::Boundary(_)) && rec.action != Action::WouldApply {
            self.status.observe_lateness(lateness as f64 / 1000.0);
        }
        // Only a row that answers a device call says whether the meter's command was taken:
        // an overridden or would-apply row, written after the turn's device calls, must not
        // clear the error of a call that failed meanwhile.
        if matches!(
            rec.action,
            Action::Apply | Action::Release | Action::Resumed
        ) {
            self.status.set_error(meter, error.clone());
        }
        let cmd = rec.command.as_ref();
        let entry = AuditEntry {
            at: m.now,
            meter_id: meter.to_string(),
            action: rec.action,
            kind: cmd.map(|c| c.kind.as_str().to_string()),
            event_id: cmd.map(|c| c.event_id.clone()),
            cap: cmd.map(|c| c.cap.as_str().to_string()),
            target,
            boundary: Some(rec.boundary),
            lateness_ms: Some(lateness),
            error,
            detail,
        };
        if let Err(e) = self.store.call(move |c| audit::insert(c, &entry)).await {
            tracing::error!(meter_id = meter, error = %e, "cannot write the audit log");
        }
    }
}

fn log(
    meter: &str,
    rec: &Record,
    target: Option<&str>,
    error: Option<&str>,
    lateness: i64,
    detail: &Option<String>,
) {
    let (action, detail) = (rec.action, detail.as_deref().unwrap_or(""));
    match (error, &rec.command) {
        (Some(e), _) => {
            tracing::warn!(meter_id = meter, action = action.as_str(), error = %e, "command not taken yet; the device loop retries")
        }
        (None, Some(c)) => tracing::info!(
            meter_id = meter, action = action.as_str(), event_id = %c.event_id,
            cap = c.cap.as_str(), command_target = target.unwrap_or("-"), lateness_ms = lateness,
            detail, "dispatch"
        ),
        (None, None) => {
            tracing::info!(
                meter_id = meter,
                action = action.as_str(),
                detail,
                "dispatch"
            )
        }
    }
}
