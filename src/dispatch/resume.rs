//! Audit truth for resumed dispatches: after a restart, a dispatch this meter was already
//! following before is not a late start; it is resumed, late only from the daemon's start.

use crate::plan::Interval;
use crate::store::Store;
use crate::store::audit::{self, AuditFilter};

/// On the first wake-up only: why `meter`'s governing interval `iv` resumes, when the
/// audit log shows the meter following its event when the daemon stopped (its last
/// dispatch row applies or resumes it, or hands it back at a shutdown; a manual override
/// in between is passed over). An event applied earlier but displaced before the stop by a
/// higher-priority timeslot is not resumed: its interval starting while the daemon was
/// down is a late start.
pub(crate) async fn after_restart(store: &Store, meter: &str, iv: &Interval) -> Option<String> {
    let who = meter.to_string();
    let last = store
        .read(move |c| audit::last_dispatch(c, &who))
        .await
        .ok()??;
    let same = last.kind.as_deref() == Some(iv.command.kind.as_str())
        && last.event_id.as_deref() == Some(iv.command.event_id.as_str());
    let following = match last.action.as_str() {
        "apply" | "resumed" => true,
        "release" => last
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("shutdown")),
        _ => false,
    };
    if !(same && following) {
        return None;
    }
    let filter = AuditFilter {
        meter: Some(meter.to_string()),
        event: Some(iv.command.event_id.clone()),
        ..Default::default()
    };
    let kind = iv.command.kind.as_str().to_string();
    let first = store
        .read(move |c| audit::query(c, &filter))
        .await
        .unwrap_or_default()
        .into_iter()
        // Oldest first (the query's order): the first apply, not the last resume.
        .find(|r| {
            r.kind.as_deref() == Some(kind.as_str())
                && (r.action == "apply" || r.action == "resumed")
        })?;
    Some(format!(
        "resumed after a restart (first applied {})",
        first.at
    ))
}
