//! Manual overrides from the technician CLI (`leap-edge override ...`). An override holds a
//! meter for a bounded time and then expires by itself, so a forgotten override cannot keep
//! a site out of the market. While it holds, Leap dispatches are logged as overridden.
//!
//! [`Overrides`] is the shared store the admin socket writes; [`resolve`] is the pure rule
//! that turns a meter's override (if any) and its planned interval into what it follows.
//! Dispatch has its own [`ManualAction`]: the admin socket's wire type is converted at the
//! admin edge, so dispatch does not depend on the admin protocol.

use crate::model::{Cap, Command, ExecMode, Kind, Strategy, Target};
use crate::plan::Interval;
use crate::store::overrides::SavedOverride;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Longest override accepted: a day.
pub(crate) const MAX_OVERRIDE_SECS: u64 = 24 * 3600;

/// What a technician asked a meter's battery to do, whatever Leap asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ManualAction {
    /// Battery idle: neither charge nor discharge.
    Hold,
    /// Charge at this many kW (a positive number).
    Charge(f64),
    /// Discharge at this many kW (a positive number).
    Discharge(f64),
    /// Normal (self-consumption) operation.
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Override {
    pub(crate) action: ManualAction,
    pub(crate) until: DateTime<Utc>,
}

impl Override {
    /// As the store keeps it (the override outlives a restart).
    pub(crate) fn saved(&self, meter: &str) -> SavedOverride {
        let (action, kw) = match self.action {
            ManualAction::Hold => ("hold", None),
            ManualAction::Charge(kw) => ("charge", Some(kw)),
            ManualAction::Discharge(kw) => ("discharge", Some(kw)),
            ManualAction::Release => ("release", None),
        };
        SavedOverride {
            meter_id: meter.to_string(),
            action: action.into(),
            kw,
            until: self.until,
        }
    }

    /// Back from the store; None for a row this version does not understand.
    pub(crate) fn from_saved(s: &SavedOverride) -> Option<Override> {
        let power = s.kw.filter(|kw| *kw > 0.0 && kw.is_finite());
        let action = match (s.action.as_str(), power) {
            ("hold", _) => ManualAction::Hold,
            ("charge", Some(kw)) => ManualAction::Charge(kw),
            ("discharge", Some(kw)) => ManualAction::Discharge(kw),
            ("release", _) => ManualAction::Release,
            _ => return None,
        };
        Some(Override {
            action,
            until: s.until,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Overrides(Mutex<BTreeMap<String, Override>>);

impl Overrides {
    pub(crate) fn set(&self, meter: &str, o: Override) {
        self.0
            .lock()
            .expect("overrides lock")
            .insert(meter.to_string(), o);
    }

    /// Remove one meter's override (or all); returns how many were removed.
    pub(crate) fn clear(&self, meter: Option<&str>) -> usize {
        let mut m = self.0.lock().expect("overrides lock");
        match meter {
            Some(id) => usize::from(m.remove(id).is_some()),
            None => {
                let n = m.len();
                m.clear();
                n
            }
        }
    }

    /// The override in force for `meter` at `now`; expired ones are dropped.
    pub(crate) fn active(&self, meter: &str, now: DateTime<Utc>) -> Option<Override> {
        let mut m = self.0.lock().expect("overrides lock");
        match m.get(meter) {
            Some(o) if o.until > now => Some(*o),
            Some(_) => {
                m.remove(meter);
                tracing::info!(meter_id = meter, "manual override expired");
                None
            }
            None => None,
        }
    }

    pub(crate) fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.0
            .lock()
            .expect("overrides lock")
            .values()
            .map(|o| o.until)
            .min()
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, Override> {
        self.0.lock().expect("overrides lock").clone()
    }
}

/// The command an override asks for; None for `release` (normal operation).
pub(crate) fn command(o: &Override, import_margin_kw: f64) -> Option<Command> {
    let kw = match o.action {
        ManualAction::Release => return None,
        ManualAction::Hold => 0.0,
        ManualAction::Charge(kw) => -kw.abs(),
        ManualAction::Discharge(kw) => kw.abs(),
    };
    Some(Command {
        kind: Kind::Meter,
        event_id: "manual-override".into(),
        mode: ExecMode::Execute,
        target: Target::Setpoint(kw),
        // A manual discharge is not paid for: it must never push the site into export.
        cap: Cap::UpToSiteLoad,
        limit_kw: None,
        export_allowed_kw: 0.0,
        import_margin_kw,
        strategy: Strategy::Award,
        priority: 0,
        programs: Vec::new(),
        until: o.until,
        reason: "manual override from the CLI".into(),
        known_since: None,
    })
}

/// What a meter's override (or its end) makes of the interval its plan gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolution {
    /// What the meter follows now: the override's command, else the plan's interval.
    pub(crate) effective: Option<Interval>,
    /// A Leap dispatch this override displaces and that was not audited as overridden
    /// yet (once per event).
    pub(crate) displaced: Option<Command>,
    /// The override has just ended: the dispatch it displaced governs again from now.
    pub(crate) resumed: bool,
    /// The Leap event last audited as overridden, to pass to the next call.
    pub(crate) overridden: Option<String>,
}

/// A manual override replaces whatever the plan says; `overridden` is the event this
/// meter last audited as overridden (from the previous [`Resolution`]).
pub(crate) fn resolve(
    overridden: Option<&str>,
    active: Option<&Override>,
    planned: Option<Interval>,
    now: DateTime<Utc>,
    import_margin_kw: f64,
) -> Resolution {
    let Some(o) = active else {
        return Resolution {
            effective: planned,
            displaced: None,
            resumed: overridden.is_some(),
            overridden: None,
        };
    };
    // A dry-run is not displaced: nothing would have moved the battery.
    let governing = planned
        .filter(|iv| iv.command.mode == ExecMode::Execute)
        .map(|iv| iv.command);
    let displaced = governing.filter(|c| overridden != Some(c.event_id.as_str()));
    let overridden = match &displaced {
        Some(c) => Some(c.event_id.clone()),
        None => overridden.map(str::to_string),
    };
    Resolution {
        effective: command(o, import_margin_kw).map(|command| Interval {
            start: now,
            end: o.until,
            command,
        }),
        displaced,
        resumed: false,
        overridden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap() + Duration::minutes(min)
    }

    fn planned(event: &str, mode: ExecMode) -> Interval {
        let o = Override {
            action: ManualAction::Discharge(4.0),
            until: t(60),
        };
        let mut command = command(&o, 0.5).unwrap();
        command.event_id = event.into();
        command.mode = mode;
        command.target = Target::Kw(10.0);
        Interval {
            start: t(-5),
            end: t(60),
            command,
        }
    }

    fn hold(until: i64) -> Override {
        Override {
            action: ManualAction::Hold,
            until: t(until),
        }
    }

    #[test]
    fn without_an_override_the_plan_governs() {
        let iv = planned("e1", ExecMode::Execute);
        let r = resolve(None, None, Some(iv.clone()), t(0), 0.5);
        assert_eq!(r.effective, Some(iv));
        assert_eq!((r.displaced, r.resumed, r.overridden), (None, false, None));
    }

    #[test]
    fn an_override_replaces_the_plan_and_displaces_its_event_once() {
        let iv = planned("e1", ExecMode::Execute);
        let r = resolve(None, Some(&hold(30)), Some(iv.clone()), t(0), 0.5);
        let eff = r.effective.expect("the override's command");
        assert_eq!(
            (eff.start, eff.end, eff.command.target, eff.command.cap),
            (t(0), t(30), Target::Setpoint(0.0), Cap::UpToSiteLoad)
        );
        assert_eq!(eff.command.import_margin_kw, 0.5);
        assert_eq!(r.displaced.map(|c| c.event_id), Some("e1".into()));
        assert_eq!(r.overridden.as_deref(), Some("e1"));
        // The next wake-up: the same event is not audited again.
        let again = resolve(Some("e1"), Some(&hold(30)), Some(iv), t(1), 0.5);
        assert_eq!(again.displaced, None);
        assert_eq!(again.overridden.as_deref(), Some("e1"));
        // A new governing event is.
        let other = planned("e2", ExecMode::Execute);
        let next = resolve(Some("e1"), Some(&hold(30)), Some(other), t(2), 0.5);
        assert_eq!(next.displaced.map(|c| c.event_id), Some("e2".into()));
    }

    #[test]
    fn a_dry_run_is_not_displaced() {
        let iv = planned("e1", ExecMode::DryRun);
        let r = resolve(None, Some(&hold(30)), Some(iv), t(0), 0.5);
        assert_eq!((r.displaced, r.overridden), (None, None));
        assert!(r.effective.is_some());
    }

    #[test]
    fn release_means_normal_operation_and_the_end_resumes_the_plan() {
        let iv = planned("e1", ExecMode::Execute);
        let release = Override {
            action: ManualAction::Release,
            until: t(30),
        };
        let r = resolve(None, Some(&release), Some(iv.clone()), t(0), 0.5);
        assert_eq!(r.effective, None);
        assert_eq!(r.overridden.as_deref(), Some("e1"));
        let after = resolve(r.overridden.as_deref(), None, Some(iv.clone()), t(31), 0.5);
        assert!(after.resumed);
        assert_eq!((after.effective, after.overridden), (Some(iv), None));
    }

    #[test]
    fn charge_and_discharge_signs() {
        let kw = |action| match command(
            &Override {
                action,
                until: t(1),
            },
            0.0,
        ) {
            Some(Command {
                target: Target::Setpoint(kw),
                ..
            }) => kw,
            other => panic!("{other:?}"),
        };
        assert_eq!(kw(ManualAction::Charge(3.0)), -3.0);
        assert_eq!(kw(ManualAction::Discharge(3.0)), 3.0);
        assert_eq!(kw(ManualAction::Hold), 0.0);
    }
}
