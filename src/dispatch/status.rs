//! What dispatch tells the rest of the daemon: per-meter current command, next boundary,
//! last error, boundary lateness — for `leap-edge status`, `/metrics` and `/healthz`.

use crate::config::Config;
use crate::metrics::{Histogram, escape};
use crate::plan::Interval;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Why the dispatch loop woke up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Wake {
    Startup,
    Boundary(DateTime<Utc>),
    Change(DateTime<Utc>),
    Periodic,
    /// The wall clock stepped back by this many ms since the plan was made (Issue 9).
    ClockBack(i64),
    Shutdown,
}

impl Wake {
    /// The instant an action taken on this wake-up is measured from, when no plan boundary is.
    pub(crate) fn at(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Wake::Boundary(t) | Wake::Change(t) => t,
            _ => now,
        }
    }

    pub(crate) fn describe(self, lateness_ms: i64) -> Option<String> {
        let late = lateness_ms > 2000;
        match self {
            Wake::Startup if late => Some(format!(
                "startup recovery: late start by {} s",
                lateness_ms / 1000
            )),
            Wake::Startup => Some("startup".into()),
            Wake::Change(_) if late => Some(format!(
                "plan changed (notification or CLI); late start by {} s",
                lateness_ms / 1000
            )),
            Wake::Change(_) => Some("plan changed (notification or CLI)".into()),
            Wake::Boundary(_) => None,
            Wake::Periodic if late => Some(format!("late start by {} s", lateness_ms / 1000)),
            Wake::Periodic => None,
            // The audit row says why it happened then: a release and an apply mid-event,
            // or a late start, would otherwise give no reason.
            Wake::ClockBack(ms) => Some(format!(
                "the wall clock stepped back about {} s; plan recomputed",
                crate::textfmt::num(ms as f64 / 1000.0)
            )),
            Wake::Shutdown => Some("shutdown: back to normal operation".into()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MeterDispatch {
    pub(crate) command: Option<Interval>,
    /// A dry-run timeslot governing now (SPEC §2.6): written nowhere, shown in `status`.
    pub(crate) dry_run: Option<Interval>,
    pub(crate) last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DispatchSnapshot {
    pub(crate) meters: BTreeMap<String, MeterDispatch>,
    pub next_boundary: Option<DateTime<Utc>>,
    pub(crate) plan_error: Option<String>,
    /// Meter ids of running or upcoming timeslots that no `[[meters]]` entry maps.
    pub(crate) unmapped_meters: Vec<String>,
}

const LATENESS_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub struct DispatchStatus {
    inner: Mutex<DispatchSnapshot>,
    lateness: Histogram,
    /// Plans made (issue 18: a burst of notifications is one replan).
    replans: std::sync::atomic::AtomicU64,
}

impl DispatchStatus {
    pub(crate) fn new(config: &Config) -> DispatchStatus {
        let meters = config
            .meters
            .iter()
            .map(|m| (m.id.clone(), MeterDispatch::default()))
            .collect();
        DispatchStatus {
            inner: Mutex::new(DispatchSnapshot {
                meters,
                ..Default::default()
            }),
            lateness: Histogram::new(LATENESS_BOUNDS),
            replans: Default::default(),
        }
    }

    pub fn count_replan(&self) {
        self.replans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Plans made since start.
    pub fn replans(&self) -> u64 {
        self.replans.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> DispatchSnapshot {
        self.inner.lock().expect("status lock").clone()
    }

    /// Change one configured meter's entry (an unknown meter is ignored).
    fn with_meter(&self, meter: &str, f: impl FnOnce(&mut MeterDispatch)) {
        if let Some(m) = self
            .inner
            .lock()
            .expect("status lock")
            .meters
            .get_mut(meter)
        {
            f(m);
        }
    }

    pub(crate) fn set_command(&self, meter: &str, iv: Option<&Interval>) {
        self.with_meter(meter, |m| m.command = iv.cloned());
    }

    pub(crate) fn set_dry_run(&self, meter: &str, iv: Option<&Interval>) {
        self.with_meter(meter, |m| m.dry_run = iv.cloned());
    }

    pub(crate) fn set_error(&self, meter: &str, error: Option<String>) {
        self.with_meter(meter, |m| m.last_error = error);
    }

    pub(crate) fn set_next_boundary(&self, t: Option<DateTime<Utc>>) {
        self.inner.lock().expect("status lock").next_boundary = t;
    }

    /// Logged when a meter id appears that was not in the list before.
    pub(crate) fn set_unmapped(&self, ids: Vec<String>) {
        let mut inner = self.inner.lock().expect("status lock");
        let new: Vec<&String> = ids
            .iter()
            .filter(|id| !inner.unmapped_meters.contains(id))
            .collect();
        if !new.is_empty() {
            tracing::warn!(meter_ids = ?new,
                "dispatch: timeslots for meters not configured here are stored but not dispatched: a typo in a [[meters]] id, or a meter this gateway does not serve");
        }
        inner.unmapped_meters = ids;
    }

    pub(crate) fn set_plan_error(&self, e: Option<String>) {
        self.inner.lock().expect("status lock").plan_error = e;
    }

    pub(crate) fn observe_lateness(&self, seconds: f64) {
        self.lateness.observe(seconds);
    }
}

impl crate::seam::StatusSource for DispatchStatus {
    fn render_metrics(&self, out: &mut String) {
        self.lateness.render(
            out,
            "leap_edge_boundary_lateness_seconds",
            "Delay from a plan boundary to the command being handed to the device.",
        );
        let _ = writeln!(
            out,
            "# HELP leap_edge_replans_total Plans made from the store (a burst of notifications is one).\n# TYPE leap_edge_replans_total counter\nleap_edge_replans_total {}",
            self.replans()
        );
        let snap = self.snapshot();
        let _ = writeln!(
            out,
            "# HELP leap_edge_meter_dispatching 1 while a meter follows a dispatch command."
        );
        let _ = writeln!(out, "# TYPE leap_edge_meter_dispatching gauge");
        for (id, m) in &snap.meters {
            let _ = writeln!(
                out,
                "leap_edge_meter_dispatching{{meter_id=\"{}\"}} {}",
                escape(id),
                u8::from(m.command.is_some())
            );
        }
    }

    fn health_problems(&self) -> Vec<String> {
        self.snapshot()
            .plan_error
            .map(|e| format!("dispatch cannot plan: {e}"))
            .into_iter()
            .collect()
    }
}
