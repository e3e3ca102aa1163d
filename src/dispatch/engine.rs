//! The dispatch loop. One task owns the clock: it plans from the store, gives every local
//! meter the command its governing interval asks for, then sleeps until the next boundary
//! — in naps of at most a second, re-reading the wall clock each time so an NTP step
//! cannot make it fire early or miss a boundary — or until a notification changes a
//! timeslot, whichever comes first.
//!
//! Each turn is a small loop over plain values: the plan, [`overrides::resolve`] (what a
//! manual override makes of it), [`MeterState::turn`] (what changed for the meter), the
//! device calls, and the [`AuditWriter`].

use super::meter::{self, MeterState, Step};
use super::overrides::{self, Override, Overrides};
use super::record::{AuditWriter, Moment, Record};
use super::resume;
use super::status::{DispatchStatus, Wake};
use super::{CommandError, Commander};
use crate::clock::Clock;
use crate::config::{Config, SharedConfig};
use crate::plan::{self, Plan, PlanConfig, PlanInput};
use crate::store::audit::Action;
use crate::store::{Store, query};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Longest sleep between wall-clock checks (also the systemd watchdog cadence).
const MAX_NAP: std::time::Duration = std::time::Duration::from_secs(1);
/// Replan at least this often, so the 48 h horizon moves forward.
const REPLAN_EVERY: i64 = 60;
/// How long a change signal waits for the rest of its burst before the replan. Small
/// beside Leap's timescales (a dispatch starts at the earliest a few seconds after it is
/// sent), large beside one commit, so a retry storm replans a few times a second at most.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(50);
/// How far ahead each plan looks.
pub(crate) const HORIZON_HOURS: i64 = 48;

/// Where plans come from: the stored timeslots and the site's plan settings.
struct PlanSource {
    store: Store,
    config: PlanConfig,
    /// Where policies and strategies reloaded by `leap-edge reload` come from.
    live: Option<SharedConfig>,
    status: Arc<DispatchStatus>,
}

impl PlanSource {
    async fn plan(&mut self, now: DateTime<Utc>) -> Option<Plan> {
        if let Some(live) = &self.live {
            // Meters and site limits need a restart; policies and strategies apply here.
            let c = live.get();
            self.config.policy = c.policy.clone();
            self.config.strategy = c.strategy.clone();
        }
        // Look back as far as ahead: the planner clips intervals at `from`, and a command
        // resumed after a restart must know its true start to report its lateness.
        self.status.count_replan();
        let from = now - Duration::hours(HORIZON_HOURS);
        let to = now + Duration::hours(HORIZON_HOURS);
        let slots = self
            .store
            .read(move |c| query::timeslots_for_plan(c, from, now, to))
            .await;
        match slots {
            Ok(slots) => {
                let input = PlanInput {
                    timeslots: &slots,
                    config: &self.config,
                    from,
                    to,
                };
                self.status.set_plan_error(None);
                let plan = plan::plan(&input);
                self.status
                    .set_unmapped(unmapped_meters(&plan, &slots, now));
                Some(plan)
            }
            Err(e) => {
                // Keep whatever the meters hold; the next turn (≤ 1 s) tries again.
                tracing::error!(error = %e, "cannot read timeslots to plan; keeping current commands");
                self.status.set_plan_error(Some(e.to_string()));
                None
            }
        }
    }
}

/// SPEC §2.7: meter ids of running or upcoming timeslots that no `[[meters]]` entry maps
/// (a typo in an id dispatches nothing, silently, unless it is shown).
fn unmapped_meters(
    plan: &Plan,
    slots: &[crate::model::StoredTimeslot],
    now: DateTime<Utc>,
) -> Vec<String> {
    let events: std::collections::HashSet<&str> = plan
        .excluded
        .iter()
        .filter(|e| e.reason == plan::ExcludeReason::UnmappedMeter)
        .map(|e| e.event_id.as_str())
        .collect();
    let mut ids: Vec<String> = slots
        .iter()
        .filter(|s| s.timeslot.kind == crate::model::Kind::Meter && s.timeslot.end_time > now)
        .filter(|s| events.contains(s.timeslot.event_id.as_str()))
        .flat_map(|s| s.timeslot.meter_ids.iter().cloned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether the saved manual overrides are back (SPEC §2.10 with the CLI's overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// Not read yet; tried since then.
    Pending(std::time::Instant),
    Done,
}

/// How long dispatch waits for the saved overrides before following Leap's plan without
/// them: a hold must survive a restart, but an unreadable table must not stop dispatch.
const RESTORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Dispatcher {
    source: PlanSource,
    audit: AuditWriter,
    commander: Arc<dyn Commander>,
    clock: Arc<dyn Clock>,
    status: Arc<DispatchStatus>,
    overrides: Arc<Overrides>,
    meters: BTreeMap<String, MeterState>,
    /// For the commands of manual overrides (a restart applies a changed margin).
    import_margin_kw: f64,
    /// Called once per loop turn (systemd watchdog).
    heartbeat: Box<dyn Fn() + Send + Sync>,
    /// Per meter, its last device call if it may still be waiting for the device, and the
    /// number of the newest step handed over (see [`Dispatcher::hand_over`]).
    inflight: BTreeMap<String, (tokio::task::JoinHandle<()>, Arc<AtomicU64>)>,
}

impl Dispatcher {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        commander: Arc<dyn Commander>,
        clock: Arc<dyn Clock>,
    ) -> Dispatcher {
        let status = Arc::new(DispatchStatus::new(&config));
        let meters = config
            .meters
            .iter()
            .map(|m| (m.id.clone(), MeterState::default()))
            .collect();
        Dispatcher {
            audit: AuditWriter::new(store.clone(), status.clone()),
            source: PlanSource {
                store,
                config: PlanConfig::from_config(&config),
                live: None,
                status: status.clone(),
            },
            status,
            commander,
            clock,
            meters,
            overrides: Arc::new(Overrides::default()),
            import_margin_kw: config.site.import_margin_kw,
            heartbeat: Box::new(|| {}),
            inflight: BTreeMap::new(),
        }
    }

    pub(crate) fn with_heartbeat(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.heartbeat = Box::new(f);
        self
    }

    pub(crate) fn with_live_config(mut self, live: SharedConfig) -> Self {
        self.source.live = Some(live);
        self
    }

    pub(crate) fn overrides(&self) -> Arc<Overrides> {
        self.overrides.clone()
    }

    pub(crate) fn status(&self) -> Arc<DispatchStatus> {
        self.status.clone()
    }

    /// Run until `shutdown` turns true, then hand every meter back to normal operation.
    pub async fn run(
        mut self,
        mut changes: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut restore = Restore::Pending(std::time::Instant::now());
        let mut started = false;
        let mut wake = Wake::Startup;
        loop {
            let now = self.clock.now();
            // No plan is followed before the saved overrides are back (for at most
            // RESTORE_PATIENCE, then without them while they are still tried every turn);
            // and until a plan is followed the turn is still the start (a restart's
            // `resumed`, not a late `apply`), however long the store took.
            if let Restore::Pending(since) = restore {
                restore = self.restore_overrides(since).await;
            }
            let plan = match restore {
                Restore::Pending(since) if since.elapsed() < RESTORE_PATIENCE => None,
                _ => self.source.plan(now).await,
            };
            if let (Restore::Pending(_), Some(_)) = (restore, &plan) {
                self.status.set_plan_error(Some(
                    "saved manual overrides cannot be read: dispatching without them until they can (a hold set before the restart is not in force; `leap-edge override` sets one again)".into(),
                ));
            }
            let moment = Moment {
                now,
                wake: if started { wake } else { Wake::Startup },
            };
            match &plan {
                Some(plan) => {
                    self.turn(plan, moment).await;
                    started = true;
                }
                None => self.release_ended(moment).await,
            }
            let next = self.next_wake(plan.as_ref(), now);
            self.status.set_next_boundary(next);
            wake = tokio::select! {
                w = self.sleep_until(next, now, &mut changes) => w,
                _ = shutdown.wait_for(|s| *s) => break,
            };
        }
        self.release_all().await;
    }

    /// Overrides a technician set before a restart hold again, until their own end, before
    /// the first plan is followed: a maintenance hold must not end silently at a crash.
    /// Pending while they cannot be read (tried again next turn, no plan followed, status
    /// and /healthz saying why), until RESTORE_PATIENCE: then Leap's plan goes first.
    async fn restore_overrides(&self, since: std::time::Instant) -> Restore {
        let now = self.clock.now();
        let store = &self.source.store;
        let saved = store
            .read(move |c| crate::store::overrides::active(c, now))
            .await;
        let saved = match saved {
            Ok(s) => s,
            Err(e) if since.elapsed() < RESTORE_PATIENCE => {
                tracing::error!(error = %e, "cannot read the saved manual overrides yet; no dispatch is followed until they are");
                self.status.set_plan_error(Some(format!(
                    "saved manual overrides cannot be read ({e}); no dispatch is followed until they are (at most {} s)",
                    RESTORE_PATIENCE.as_secs()
                )));
                return Restore::Pending(since);
            }
            Err(e) => {
                tracing::debug!(error = %e, "saved manual overrides still cannot be read; dispatching without them, tried every turn");
                return Restore::Pending(since);
            }
        };
        for s in saved {
            match Override::from_saved(&s) {
                Some(o) if self.meters.contains_key(&s.meter_id) => {
                    tracing::warn!(meter_id = %s.meter_id, action = %s.action, until = %s.until,
                        "manual override restored after a restart");
                    self.overrides.set(&s.meter_id, o);
                }
                _ => tracing::warn!(meter_id = %s.meter_id, action = %s.action,
                    "saved manual override not restored (meter not configured or action unknown)"),
            }
        }
        Restore::Done
    }

    /// The next plan boundary or override expiry, whichever comes first.
    fn next_wake(&self, plan: Option<&Plan>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = match plan {
            Some(p) => p.next_boundary_after(now),
            // No plan (the store failed): try again in a second.
            None => Some(now + Duration::seconds(1)),
        };
        match (next, self.overrides.next_expiry().filter(|t| *t > now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn sleep_until(
        &self,
        next: Option<DateTime<Utc>>,
        planned_at: DateTime<Utc>,
        changes: &mut watch::Receiver<u64>,
    ) -> Wake {
        loop {
            (self.heartbeat)();
            let now = self.clock.now();
            if let Some(b) = next.filter(|b| now >= *b) {
                return Wake::Boundary(b);
            }
            if now - planned_at >= Duration::seconds(REPLAN_EVERY) {
                return Wake::Periodic;
            }
            // Issue 9: the wall clock stepped back (NTP correction). The plan was made for
            // a "now" that has not happened yet: an active timeslot may not have started
            // against the corrected clock. Recompute at once (forward steps are caught by
            // the boundary check above).
            if now < planned_at {
                tracing::warn!(planned_at = %planned_at, now = %now,
                    step_ms = (planned_at - now).num_milliseconds(),
                    "dispatch: wall clock stepped back, recomputing the plan");
                return Wake::ClockBack((planned_at - now).num_milliseconds());
            }
            let nap = next
                .and_then(|b| (b - now).to_std().ok())
                .map_or(MAX_NAP, |d| d.min(MAX_NAP));
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                r = changes.changed() => {
                    if r.is_ok() {
                        let seen = self.clock.now();
                        // Issue 18: a burst of notifications is one replan, not one each.
                        // Everything committed within the window is in the next read.
                        tokio::time::sleep(COALESCE).await;
                        changes.borrow_and_update();
                        return Wake::Change(seen);
                    }
                    // The sender is gone (shutting down): keep timing boundaries only, in
                    // naps (awaiting a closed channel again would return at once).
                    tokio::time::sleep(nap).await;
                }
            }
        }
    }

    /// One wake-up: every meter's decision first (with the audit rows it owes before any
    /// device is called), then the device calls, answered in the background.
    async fn turn(&mut self, plan: &Plan, m: Moment) {
        let (steps, rows) = self.decide(plan, m).await;
        self.hand_over(steps, m);
        // Written after every meter has its device call: a row waits for the one database
        // writer (behind an ingest batch's fsync, or a lock another process holds), and no
        // meter's boundary may wait for another meter's audit row.
        for (meter, row) in rows {
            self.audit.write(&meter, row, m).await;
        }
    }

    /// Each meter's step, from its plan interval and its override, and the rows that say
    /// what was not sent to a device (overridden, would-apply).
    async fn decide(
        &mut self,
        plan: &Plan,
        m: Moment,
    ) -> (Vec<(String, Step)>, Vec<(String, Record)>) {
        let mut steps = Vec::new();
        let mut rows = Vec::new();
        for (meter, state) in &mut self.meters {
            let active = self.overrides.active(meter, m.now);
            let planned = plan.command_at(meter, m.now).cloned();
            let margin = self.import_margin_kw;
            let r = overrides::resolve(state.overridden(), active.as_ref(), planned, m.now, margin);
            let restart = match meter::executed(&r) {
                Some(iv) if m.wake == Wake::Startup => {
                    resume::after_restart(&self.source.store, meter, iv).await
                }
                _ => None,
            };
            let turn = state.turn(r, restart, m);
            self.status.set_dry_run(meter, turn.dry.as_ref());
            rows.extend(turn.rows.into_iter().map(|r| (meter.clone(), r)));
            match turn.step {
                // Nothing changes on the device: no call, no row; but `status` shows the
                // interval's new end (a higher-priority timeslot cut it short, or its
                // cancellation gave it back).
                Some(Step::Extend { iv }) => self.status.set_command(meter, Some(&iv)),
                None => {}
                Some(step) => steps.push((meter.clone(), step)),
            }
        }
        (steps, rows)
    }

    /// No plan could be read: every command keeps running, but none past the end of its
    /// interval (SPEC §2.10), whatever the store does.
    async fn release_ended(&mut self, m: Moment) {
        let steps: Vec<(String, Step)> = self
            .meters
            .iter()
            .filter_map(|(meter, state)| Some((meter.clone(), state.ended(m.now)?)))
            .collect();
        if steps.is_empty() {
            return;
        }
        tracing::warn!(
            meters = steps.len(),
            "no plan: releasing the commands whose interval has ended"
        );
        self.hand_over(steps, m);
    }

    /// Every meter is handed its command at once, and the loop goes on: a device slow to
    /// answer (the commander waits up to its apply timeout) must delay neither another
    /// meter's boundary nor its own next one. The meter's state and `status` change now;
    /// its audit row waits for the device's answer. A meter's calls stay in order: each
    /// waits for the one before it, and one that a newer step overtook while it waited is
    /// not made at all (a burst of revisions on a slow device would otherwise queue a
    /// 2 s call each, the newest last; one turn after the burst applies only the newest).
    fn hand_over(&mut self, steps: Vec<(String, Step)>, m: Moment) {
        for (meter, step) in steps {
            let Some(state) = self.meters.get_mut(&meter) else {
                continue;
            };
            let shown = match &step {
                Step::Apply { iv, .. } => Some(iv.clone()),
                Step::Release { .. } | Step::Extend { .. } => None,
            };
            self.status.set_command(&meter, shown.as_ref());
            let call = device_call(self.commander.clone(), meter.clone(), step.clone());
            let row = state.settle(step);
            let (before, newest) = match self.inflight.remove(&meter) {
                Some((task, newest)) => (Some(task), newest),
                None => (None, Arc::new(AtomicU64::new(0))),
            };
            let mine = newest.fetch_add(1, Ordering::SeqCst) + 1;
            let (audit, name, latest) = (self.audit.clone(), meter.clone(), newest.clone());
            let task = tokio::spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                if latest.load(Ordering::SeqCst) != mine {
                    tracing::debug!(meter_id = %name, "dispatch: a newer step overtook this one before the device was free; not sent");
                    return;
                }
                let result = call.await;
                if let Some(row) = row {
                    audit.write(&name, Record { result, ..row }, m).await;
                }
            });
            self.inflight.insert(meter, (task, newest));
        }
    }

    /// The device calls still being answered, awaited (each is bounded by the commander's
    /// apply timeout): at shutdown the release must come after them, not before.
    async fn answered(&mut self) {
        for (_, (task, _)) in std::mem::take(&mut self.inflight) {
            let _ = task.await;
        }
    }

    /// SPEC §2.10: normal operation is restored on shutdown.
    async fn release_all(&mut self) {
        self.answered().await;
        let m = Moment {
            now: self.clock.now(),
            wake: Wake::Shutdown,
        };
        for (meter, state) in &mut self.meters {
            let Some(cmd) = state.take_applied() else {
                continue;
            };
            let result = self.commander.release(meter).await;
            let row = Record {
                result,
                ..Record::ok(Action::Release, Some(cmd), m.now)
            };
            self.audit.write(meter, row, m).await;
        }
    }
}

/// `step`'s call to the device, on its own task: a commander that panics is an error in
/// the audit row, not a lost row.
async fn device_call(
    commander: Arc<dyn Commander>,
    meter: String,
    step: Step,
) -> Result<(), CommandError> {
    let name = meter.clone();
    let call = tokio::spawn(async move {
        match &step {
            Step::Apply { iv, .. } => commander.apply(&meter, &iv.command).await,
            Step::Release { .. } => commander.release(&meter).await,
            Step::Extend { .. } => Ok(()),
        }
    });
    call.await.unwrap_or_else(|e| {
        Err(CommandError::Device {
            meter: name,
            device: "?".into(),
            reason: format!("command task failed: {e}"),
        })
    })
}
