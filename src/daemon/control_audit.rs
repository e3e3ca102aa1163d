//! SPEC §2.13: what a control loop decided on its own — readings untrusted and the battery
//! handed back, readings back, export the battery cannot prevent — goes into the audit log
//! next to dispatch's own entries, so `leap-edge history` tells the whole story of an event.

use crate::control::{ControlEvent, ControlStatus};
use crate::store::Store;
use crate::store::audit::{self, Action, AuditEntry};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often pending control events are written (they wait in memory, bounded).
const EVERY: Duration = Duration::from_millis(500);

/// Write control events to the audit log until `stop`, then what is still pending.
pub async fn run(store: Store, status: ControlStatus, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said = None;
    loop {
        tokio::select! {
            _ = tick.tick() => flush(&store, &status, &mut said).await,
            _ = stop.cancelled() => break,
        }
    }
    flush(&store, &status, &mut None).await;
}

/// A failing write is logged at most this often (it is retried every tick).
const SAY_AGAIN: Duration = Duration::from_secs(60);

/// Write what is pending now; `said` is when a failure was last logged.
pub(crate) async fn flush(
    store: &Store,
    status: &ControlStatus,
    said: &mut Option<std::time::Instant>,
) {
    let events = status.take_events();
    if events.is_empty() {
        return;
    }
    let entries: Vec<AuditEntry> = events.iter().cloned().map(entry).collect();
    let n = entries.len();
    // All or none, and kept for the next try when none: a `blind` row written without
    // its `resumed` (or lost with it) tells a wrong story of the event.
    let r = store
        .call(move |c| {
            let tx = c.transaction()?;
            for e in &entries {
                audit::insert(&tx, e)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await;
    match r {
        Err(e) => {
            if said.is_none_or(|t| t.elapsed() >= SAY_AGAIN) {
                tracing::error!(error = %e, events = n, "cannot write control events to the audit log; kept and tried again every 0.5 s (said once a minute)");
                *said = Some(std::time::Instant::now());
            }
            status.put_back(events);
        }
        Ok(()) => {
            if said.take().is_some() {
                tracing::info!(events = n, "control events written to the audit log again");
            }
        }
    }
}

fn entry(e: ControlEvent) -> AuditEntry {
    AuditEntry {
        at: e.at,
        meter_id: e.meter_id,
        action: Action::Safety,
        kind: None,
        event_id: Some(e.event_id),
        cap: None,
        target: None,
        boundary: None,
        lateness_ms: None,
        error: None,
        detail: Some(format!("{}: {}", e.what, e.detail)),
    }
}
