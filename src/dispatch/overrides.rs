//! Manual overrides from the technician CLI (`leap-edge override ...`). An override holds a
//! meter for a bounded time and then expires by itself, so a forgotten override cannot keep
//! a site out of the market. While it holds, Leap dispatches are logged as overridden.

use super::status::Wake;
use crate::admin::OverrideAction;
use crate::model::{Cap, Command, ExecMode, Kind, Strategy, Target};
use crate::plan::Interval;
use crate::store::audit::Action;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Longest override accepted: a day.
pub const MAX_OVERRIDE_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Override {
    pub action: OverrideAction,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct Overrides(Mutex<BTreeMap<String, Override>>);

impl Overrides {
    pub fn set(&self, meter: &str, o: Override) {
        self.0
            .lock()
            .expect("overrides lock")
            .insert(meter.to_string(), o);
    }

    /// Remove one meter's override (or all); returns how many were removed.
    pub fn clear(&self, meter: Option<&str>) -> usize {
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
    pub fn active(&self, meter: &str, now: DateTime<Utc>) -> Option<Override> {
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

    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.0
            .lock()
            .expect("overrides lock")
            .values()
            .map(|o| o.until)
            .min()
    }

    pub fn snapshot(&self) -> BTreeMap<String, Override> {
        self.0.lock().expect("overrides lock").clone()
    }
}

/// The command an override asks for; None for `release` (normal operation).
pub fn command(o: &Override, import_margin_kw: f64) -> Option<Command> {
    let kw = match o.action {
        OverrideAction::Release => return None,
        OverrideAction::Hold => 0.0,
        OverrideAction::Charge(kw) => -kw.abs(),
        OverrideAction::Discharge(kw) => kw.abs(),
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
    })
}

impl super::engine::Dispatcher {
    /// A manual override replaces whatever the plan says; the Leap event it displaces is
    /// audited as overridden (once per event).
    pub(super) async fn apply_override(
        &mut self,
        meter: &str,
        iv: Option<Interval>,
        now: DateTime<Utc>,
        wake: Wake,
    ) -> Option<Interval> {
        let Some(o) = self.overrides.active(meter, now) else {
            if let Some(s) = self.meters.get_mut(meter)
                && s.overridden.take().is_some()
            {
                // The displaced dispatch governs again from now (audited as resumed).
                s.resume = Some("resumed after a manual override".into());
            }
            return iv;
        };
        let displaced = iv.filter(|iv| iv.command.mode == ExecMode::Execute);
        if let Some(d) = displaced {
            let noted = self.meters.get(meter).and_then(|s| s.overridden.clone());
            if noted.as_deref() != Some(d.command.event_id.as_str()) {
                if let Some(s) = self.meters.get_mut(meter) {
                    s.overridden = Some(d.command.event_id.clone());
                }
                self.record(
                    meter,
                    Action::Overridden,
                    Some(&d.command),
                    now,
                    now,
                    wake,
                    Ok(()),
                )
                .await;
            }
        }
        let margin = self.config.site.import_margin_kw;
        command(&o, margin).map(|command| Interval {
            start: now,
            end: o.until,
            command,
        })
    }
}
