//! Dispatch's record of what it did: every action goes to the log, the lateness metric and
//! the audit table (SPEC §2.6 dry-runs included); and the shutdown release (SPEC §2.10).

use super::CommandError;
use super::engine::Dispatcher;
use super::status::Wake;
use crate::model::Command;
use crate::store::audit::{self, Action, AuditEntry};
use chrono::{DateTime, Utc};

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record(
        &self,
        meter: &str,
        action: Action,
        cmd: Option<&Command>,
        boundary: DateTime<Utc>,
        now: DateTime<Utc>,
        wake: Wake,
        result: Result<(), CommandError>,
    ) {
        self.record_detail(meter, action, cmd, boundary, now, wake, result, None)
            .await;
    }

    /// [`Dispatcher::record`] with the audit detail given (else it says why from `wake`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_detail(
        &self,
        meter: &str,
        action: Action,
        cmd: Option<&Command>,
        boundary: DateTime<Utc>,
        now: DateTime<Utc>,
        wake: Wake,
        result: Result<(), CommandError>,
        detail: Option<String>,
    ) {
        let lateness = (now - boundary).num_milliseconds().max(0);
        let detail = detail.or_else(|| wake.describe(lateness));
        let error = result.err().map(|e| e.to_string());
        let target = cmd.map(|c| c.target.to_string());
        match (&error, cmd) {
            (Some(e), _) => {
                tracing::warn!(meter_id = meter, action = action.as_str(), error = %e, "command not taken yet; the device loop retries")
            }
            (None, Some(c)) => tracing::info!(
                meter_id = meter, action = action.as_str(), event_id = %c.event_id,
                cap = c.cap.as_str(), target = target.as_deref().unwrap_or("-"), lateness_ms = lateness,
                detail = detail.as_deref().unwrap_or(""),
                "dispatch"
            ),
            (None, None) => {
                tracing::info!(
                    meter_id = meter,
                    action = action.as_str(),
                    detail = detail.as_deref().unwrap_or(""),
                    "dispatch"
                )
            }
        }
        if matches!(wake, Wake::Boundary(_)) && action != Action::WouldApply {
            self.status.observe_lateness(lateness as f64 / 1000.0);
        }
        self.status.set_error(meter, error.clone());
        let entry = AuditEntry {
            at: now,
            meter_id: meter.to_string(),
            action,
            kind: cmd.map(|c| c.kind.as_str().to_string()),
            event_id: cmd.map(|c| c.event_id.clone()),
            cap: cmd.map(|c| c.cap.as_str().to_string()),
            target,
            boundary: Some(boundary),
            lateness_ms: Some(lateness),
            error,
            detail,
        };
        if let Err(e) = self.store.call(move |c| audit::insert(c, &entry)).await {
            tracing::error!(meter_id = meter, error = %e, "cannot write the audit log");
        }
    }

    /// SPEC §2.10: normal operation is restored on shutdown.
    pub(super) async fn release_all(&mut self) {
        let now = self.clock.now();
        let held: Vec<(String, Command)> = self
            .meters
            .iter()
            .filter_map(|(m, s)| s.applied.as_ref().map(|a| (m.clone(), a.command.clone())))
            .collect();
        for (meter, cmd) in held {
            let result = self.commander.release(&meter).await;
            self.record(
                &meter,
                Action::Release,
                Some(&cmd),
                now,
                now,
                Wake::Shutdown,
                result,
            )
            .await;
            if let Some(s) = self.meters.get_mut(&meter) {
                s.applied = None;
            }
        }
    }
}
