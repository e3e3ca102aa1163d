//! Audit truth for resumed dispatches: after a restart, a dispatch this meter was already
//! following before is not a late start; it is resumed, late only from the daemon's start.

use super::engine::Dispatcher;
use super::status::Wake;
use crate::plan::Interval;
use crate::store::audit::{self, AuditFilter};

impl Dispatcher {
    /// On the first wake-up only: mark `meter` as resuming when the audit log shows its
    /// governing event applied before (by an earlier life of the daemon).
    pub(super) async fn note_restart(&mut self, meter: &str, exec: Option<&Interval>, wake: Wake) {
        let Some(iv) = exec.filter(|_| wake == Wake::Startup) else {
            return;
        };
        let filter = AuditFilter {
            meter: Some(meter.to_string()),
            event: Some(iv.command.event_id.clone()),
            ..Default::default()
        };
        let kind = iv.command.kind.as_str().to_string();
        let before = self
            .store
            .read(move |c| audit::query(c, &filter))
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|r| {
                r.kind.as_deref() == Some(kind.as_str())
                    && (r.action == "apply" || r.action == "resumed")
            });
        if let (Some(first), Some(s)) = (before, self.meters.get_mut(meter)) {
            s.resume = Some(format!(
                "resumed after a restart (first applied {})",
                first.at
            ));
        }
    }
}
