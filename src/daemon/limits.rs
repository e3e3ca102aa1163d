//! Requested vs achieved in the audit log (issue 15 point 4): while a meter follows a
//! command, each change of what binds its battery (no-export margin, battery rating,
//! reserve, …) is written once as a `limited` entry, so `history` says why a dispatch
//! delivered less than asked, not only `status` at the moment it happens.

use crate::admin::state::Limit;
use crate::control::{ControlStatus, MeterStatus};
use crate::store::Store;
use crate::store::audit::{self, Action, AuditEntry};
use crate::textfmt::kw;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// (event id, limit) last audited per meter.
type Seen = HashMap<String, (String, Option<Limit>)>;

/// A failing write is logged at most this often (it is retried every second).
const SAY_AGAIN: Duration = Duration::from_secs(60);

/// Runs until `stop`, looking at the loops once a second.
pub(super) async fn watch(status: ControlStatus, store: Store, stop: CancellationToken) {
    let mut seen = Seen::new();
    let mut said: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for m in status.snapshot() {
            let before = seen.get(&m.meter_id).cloned();
            if let Some(entry) = change(&mut seen, &m) {
                let r = store.call(move |c| audit::insert(c, &entry)).await;
                if let Err(e) = r {
                    if said.is_none_or(|t: std::time::Instant| t.elapsed() >= SAY_AGAIN) {
                        tracing::error!(meter_id = %m.meter_id, error = %e, "cannot audit a limit; tried again every second (said once a minute)");
                        said = Some(std::time::Instant::now());
                    }
                    // Not recorded, so what was seen before stands: the next look writes
                    // the same row again.
                    match before {
                        Some(b) => seen.insert(m.meter_id.clone(), b),
                        None => seen.remove(&m.meter_id),
                    };
                }
            }
        }
    }
}

/// The audit entry for `m` if what limits it changed since last time.
fn change(seen: &mut Seen, m: &MeterStatus) -> Option<AuditEntry> {
    let Some(cmd) = &m.command else {
        seen.remove(&m.meter_id);
        return None;
    };
    let d = m.last_decision?;
    let limit = super::report::limit_of(d.bound);
    let key = (cmd.event_id.clone(), limit);
    let before = seen.insert(m.meter_id.clone(), key.clone());
    if before.as_ref() == Some(&key) {
        return None;
    }
    let asked = d
        .requested_kw
        .map_or("the maximum".to_string(), |k| kw(Some(k)));
    let detail = match limit {
        // Delivering what was asked: worth a line only when a limit stopped binding.
        None if before.is_none_or(|(ev, l)| ev != cmd.event_id || l.is_none()) => return None,
        None => format!(
            "asked {asked}, setpoint {}: no longer limited",
            kw(Some(d.setpoint_kw))
        ),
        Some(l) => format!(
            "asked {asked}, setpoint {}: limited by {}",
            kw(Some(d.setpoint_kw)),
            l.describe()
        ),
    };
    tracing::info!(meter_id = %m.meter_id, event_id = %cmd.event_id, detail = %detail, "control limit");
    Some(AuditEntry {
        at: m.last_decision_at.unwrap_or_else(chrono::Utc::now),
        meter_id: m.meter_id.clone(),
        action: Action::Limited,
        kind: Some(cmd.kind.as_str().to_string()),
        event_id: Some(cmd.event_id.clone()),
        cap: Some(cmd.performance_compensation_cap.as_str().to_string()),
        target: Some(cmd.target.to_string()),
        boundary: None,
        lateness_ms: None,
        error: None,
        detail: Some(detail),
    })
}
