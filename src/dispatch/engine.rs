//! The dispatch loop. One task owns the clock: it plans from the store, gives every local
//! meter the command its governing interval asks for, then sleeps until the next boundary
//! — in naps of at most a second, re-reading the wall clock each time so an NTP step
//! cannot make it fire early or miss a boundary — or until a notification changes a
//! timeslot, whichever comes first.

use super::overrides::Overrides;
use super::status::{DispatchStatus, Wake};
use super::{CommandError, Commander};
use crate::clock::Clock;
use crate::config::Config;
use crate::model::{Command, ExecMode};
use crate::plan::{self, Interval, Plan, PlanConfig, PlanInput};
use crate::store::audit::Action;
use crate::store::{Store, query};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
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
pub const HORIZON_HOURS: i64 = 48;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Applied {
    pub(super) command: Command,
    pub(super) end: DateTime<Utc>,
}

/// One meter's change at a wake-up, decided before any device is called.
#[derive(Debug, Clone)]
enum Step {
    /// Same command as before; only its interval's end moved.
    Extend { iv: Interval },
    Apply {
        iv: Interval,
        boundary: DateTime<Utc>,
        /// Why this is a resumption (after an override or a restart), if it is one.
        resumed: Option<String>,
    },
    Release {
        prev: Option<Command>,
        boundary: DateTime<Utc>,
    },
}

#[derive(Debug, Default)]
pub(super) struct MeterState {
    pub(super) applied: Option<Applied>,
    pub(super) would: Option<Command>,
    /// The Leap event last logged as overridden by a manual override.
    pub(super) overridden: Option<String>,
    /// Set for one wake-up when a displaced dispatch may govern again (see `resume.rs`).
    pub(super) resume: Option<String>,
}

pub struct Dispatcher {
    pub(super) config: Arc<Config>,
    pub(super) plan_config: PlanConfig,
    pub(super) store: Store,
    pub(super) commander: Arc<dyn Commander>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) status: Arc<DispatchStatus>,
    pub(super) meters: BTreeMap<String, MeterState>,
    pub(super) overrides: Arc<Overrides>,
    /// Where policies and strategies reloaded by `leap-edge reload` come from.
    pub(super) live: Option<crate::config::SharedConfig>,
    /// Called once per loop turn (systemd watchdog).
    pub(super) heartbeat: Box<dyn Fn() + Send + Sync>,
}

impl Dispatcher {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        commander: Arc<dyn Commander>,
        clock: Arc<dyn Clock>,
    ) -> Dispatcher {
        let meters = config
            .meters
            .iter()
            .map(|m| (m.id.clone(), MeterState::default()))
            .collect();
        Dispatcher {
            plan_config: PlanConfig::from_config(&config),
            status: Arc::new(DispatchStatus::new(&config)),
            config,
            store,
            commander,
            clock,
            meters,
            overrides: Arc::new(Overrides::default()),
            live: None,
            heartbeat: Box::new(|| {}),
        }
    }

    pub fn with_heartbeat(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.heartbeat = Box::new(f);
        self
    }

    pub fn with_live_config(mut self, live: crate::config::SharedConfig) -> Self {
        self.live = Some(live);
        self
    }

    pub fn overrides(&self) -> Arc<Overrides> {
        self.overrides.clone()
    }

    pub fn status(&self) -> Arc<DispatchStatus> {
        self.status.clone()
    }

    /// Run until `shutdown` turns true, then hand every meter back to normal operation.
    pub async fn run(
        mut self,
        mut changes: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut wake = Wake::Startup;
        loop {
            let now = self.clock.now();
            let plan = self.plan(now).await;
            if let Some(plan) = &plan {
                self.apply_all(plan, now, wake).await;
            }
            let next = match &plan {
                Some(p) => p.next_boundary_after(now),
                // No plan (the store failed): try again in a second.
                None => Some(now + Duration::seconds(1)),
            };
            let next = match (next, self.overrides.next_expiry().filter(|t| *t > now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.status.set_next_boundary(next);
            wake = tokio::select! {
                w = self.sleep_until(next, now, &mut changes) => w,
                _ = shutdown.wait_for(|s| *s) => break,
            };
        }
        self.release_all().await;
    }

    async fn plan(&mut self, now: DateTime<Utc>) -> Option<Plan> {
        if let Some(live) = &self.live {
            // Meters and site limits need a restart; policies and strategies apply here.
            let c = live.get();
            self.plan_config.policy = c.policy.clone();
            self.plan_config.strategy = c.strategy.clone();
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
                    config: &self.plan_config,
                    from,
                    to,
                };
                self.status.set_plan_error(None);
                Some(plan::plan(&input))
            }
            Err(e) => {
                // Keep whatever the meters hold; the next turn (≤ 1 s) tries again.
                tracing::error!(error = %e, "cannot read timeslots to plan; keeping current commands");
                self.status.set_plan_error(Some(e.to_string()));
                None
            }
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
                return Wake::Periodic;
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
                    // The sender is gone (shutting down): keep timing boundaries only.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    async fn apply_all(&mut self, plan: &Plan, now: DateTime<Utc>, wake: Wake) {
        let ids: Vec<String> = self.meters.keys().cloned().collect();
        let mut steps = Vec::new();
        for meter in ids {
            let iv = plan.command_at(&meter, now).cloned();
            let iv = self.apply_override(&meter, iv, now, wake).await;
            let (exec, dry) = match iv {
                Some(iv) if iv.command.mode == ExecMode::Execute => (Some(iv), None),
                Some(iv) => (None, Some(iv)),
                None => (None, None),
            };
            self.dry_run(&meter, dry, now, wake).await;
            self.note_restart(&meter, exec.as_ref(), wake).await;
            let step = self.step_for(&meter, exec, now, wake);
            if let Some(s) = self.meters.get_mut(&meter) {
                s.resume = None;
            }
            match step {
                Some(step @ Step::Extend { .. }) => {
                    self.finish(&meter, step, now, wake, Ok(())).await
                }
                Some(step) => steps.push((meter, step)),
                None => {}
            }
        }
        // Every meter is handed its command at once: a device slow to answer (the
        // commander waits up to its apply timeout) must not delay another meter's boundary.
        let calls: Vec<_> = steps
            .iter()
            .map(|(meter, step)| {
                let (commander, meter, step) =
                    (self.commander.clone(), meter.clone(), step.clone());
                tokio::spawn(async move {
                    match &step {
                        Step::Apply { iv, .. } => commander.apply(&meter, &iv.command).await,
                        Step::Release { .. } => commander.release(&meter).await,
                        Step::Extend { .. } => Ok(()),
                    }
                })
            })
            .collect();
        for ((meter, step), call) in steps.into_iter().zip(calls) {
            let result = call.await.unwrap_or_else(|e| {
                Err(CommandError::Device {
                    meter: meter.clone(),
                    device: "?".into(),
                    reason: format!("command task failed: {e}"),
                })
            });
            self.finish(&meter, step, now, wake, result).await;
        }
    }

    /// What `meter` needs now, compared with what it was last given (None: nothing).
    fn step_for(
        &self,
        meter: &str,
        exec: Option<Interval>,
        now: DateTime<Utc>,
        wake: Wake,
    ) -> Option<Step> {
        let state = self.meters.get(meter).and_then(|s| s.applied.clone());
        match (exec, state) {
            (Some(iv), Some(a)) if a.command == iv.command => Some(Step::Extend { iv }),
            (Some(iv), prev) => {
                let same_event = prev.as_ref().is_some_and(|p| {
                    p.command.event_id == iv.command.event_id && p.command.kind == iv.command.kind
                });
                // An update of the running event counts from when it was seen; a new
                // governing event counts from its start (so late arrivals show as late).
                // SPEC §2.6 audit truth: a dispatch that governs again after an override
                // or a restart is late only from that moment.
                let resumed = self
                    .meters
                    .get(meter)
                    .and_then(|s| s.resume.clone())
                    .filter(|_| !same_event && iv.start < wake.at(now));
                let boundary = if same_event || resumed.is_some() {
                    wake.at(now)
                } else {
                    iv.start
                };
                Some(Step::Apply {
                    iv,
                    boundary,
                    resumed,
                })
            }
            (None, Some(a)) => {
                let boundary = if now >= a.end { a.end } else { wake.at(now) };
                Some(Step::Release {
                    prev: Some(a.command),
                    boundary,
                })
            }
            // After a restart the device's state is unknown: make sure it is normal.
            (None, None) if wake == Wake::Startup => Some(Step::Release {
                prev: None,
                boundary: now,
            }),
            (None, None) => None,
        }
    }

    async fn finish(
        &mut self,
        meter: &str,
        step: Step,
        now: DateTime<Utc>,
        wake: Wake,
        result: Result<(), CommandError>,
    ) {
        match step {
            Step::Extend { iv } => {
                if let Some(s) = self.meters.get_mut(meter) {
                    s.applied = Some(Applied {
                        command: iv.command,
                        end: iv.end,
                    });
                }
            }
            Step::Apply {
                iv,
                boundary,
                resumed,
            } => {
                let action = if resumed.is_some() {
                    Action::Resumed
                } else {
                    Action::Apply
                };
                let cmd = Some(&iv.command);
                self.record_detail(meter, action, cmd, boundary, now, wake, result, resumed)
                    .await;
                if let Some(s) = self.meters.get_mut(meter) {
                    s.applied = Some(Applied {
                        command: iv.command.clone(),
                        end: iv.end,
                    });
                }
                self.status.set_command(meter, Some(&iv));
            }
            Step::Release { prev, boundary } => {
                self.record(
                    meter,
                    Action::Release,
                    prev.as_ref(),
                    boundary,
                    now,
                    wake,
                    result,
                )
                .await;
                if let Some(s) = self.meters.get_mut(meter) {
                    s.applied = None;
                }
                self.status.set_command(meter, None);
            }
        }
    }

    /// SPEC §2.6 dry-run: audit what would be written, once per distinct command.
    async fn dry_run(
        &mut self,
        meter: &str,
        dry: Option<Interval>,
        now: DateTime<Utc>,
        wake: Wake,
    ) {
        let Some(state) = self.meters.get_mut(meter) else {
            return;
        };
        match dry {
            Some(iv) if state.would.as_ref() != Some(&iv.command) => {
                let same_event = state
                    .would
                    .as_ref()
                    .is_some_and(|w| w.event_id == iv.command.event_id);
                state.would = Some(iv.command.clone());
                let boundary = if same_event { wake.at(now) } else { iv.start };
                self.record(
                    meter,
                    Action::WouldApply,
                    Some(&iv.command),
                    boundary,
                    now,
                    wake,
                    Ok(()),
                )
                .await;
            }
            Some(_) => {}
            None => state.would = None,
        }
    }
}
