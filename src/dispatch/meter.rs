//! One meter's dispatch state and the pure decisions on it: at each wake-up, what changed
//! since the last one (extend, apply, release), what a dry-run would have done, and the
//! audit rows that follow. No I/O here: the engine calls the device and writes the rows.

use super::overrides::Resolution;
use super::record::{Moment, Record};
use super::status::Wake;
use crate::model::{Command, ExecMode};
use crate::plan::Interval;
use crate::store::audit::Action;
use chrono::{DateTime, Utc};

/// What the device was last handed, and until when its interval runs.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    command: Command,
    end: DateTime<Utc>,
}

/// One meter's change at a wake-up, decided before any device is called.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
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

/// What one meter's wake-up decided before any device is called.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Turn {
    /// Audit rows due now (overridden, would-apply), in order.
    pub(crate) rows: Vec<Record>,
    pub(crate) step: Option<Step>,
    /// The dry-run interval governing now, if any (for `status`).
    pub(crate) dry: Option<Interval>,
}

#[derive(Debug, Default)]
pub(crate) struct MeterState {
    applied: Option<Applied>,
    /// SPEC §2.6: the dry-run command last audited as would-apply.
    would: Option<Command>,
    /// The Leap event last audited as overridden by a manual override.
    overridden: Option<String>,
}

/// The part of `r` that moves the battery (a dry-run does not).
pub(crate) fn executed(r: &Resolution) -> Option<&Interval> {
    r.effective
        .as_ref()
        .filter(|iv| iv.command.mode == ExecMode::Execute)
}

impl MeterState {
    /// The event last audited as overridden, for [`super::overrides::resolve`].
    pub(crate) fn overridden(&self) -> Option<&str> {
        self.overridden.as_deref()
    }

    /// One wake-up. `r` is what the overrides made of the plan; `restart` says why its
    /// governing dispatch resumes after a restart (see `resume.rs`), if it does.
    pub(crate) fn turn(&mut self, r: Resolution, restart: Option<String>, m: Moment) -> Turn {
        let mut rows = Vec::new();
        if let Some(d) = r.displaced {
            rows.push(Record::ok(Action::Overridden, Some(d), m.now));
        }
        self.overridden = r.overridden;
        // SPEC §2.6 audit truth: a displaced dispatch that governs again is resumed.
        let resume = restart.or_else(|| {
            r.resumed
                .then(|| "resumed after a manual override".to_string())
        });
        let (exec, dry) = match r.effective {
            Some(iv) if iv.command.mode == ExecMode::Execute => (Some(iv), None),
            other => (None, other),
        };
        rows.extend(self.dry_run(dry.clone(), m));
        let step = self.step_for(exec, resume, m);
        if let Some(Step::Extend { iv }) = &step {
            self.applied = Some(Applied {
                command: iv.command.clone(),
                end: iv.end,
            });
        }
        Turn { rows, step, dry }
    }

    /// SPEC §2.6 dry-run: audit what would be written, once per distinct command.
    fn dry_run(&mut self, dry: Option<Interval>, m: Moment) -> Option<Record> {
        let Some(iv) = dry else {
            self.would = None;
            return None;
        };
        if self.would.as_ref() == Some(&iv.command) {
            return None;
        }
        let same_event = self
            .would
            .as_ref()
            .is_some_and(|w| w.event_id == iv.command.event_id);
        self.would = Some(iv.command.clone());
        let boundary = if same_event { m.at() } else { iv.start };
        Some(Record::ok(Action::WouldApply, Some(iv.command), boundary))
    }

    /// What the meter needs now, compared with what it was last given (None: nothing).
    fn step_for(&self, exec: Option<Interval>, resume: Option<String>, m: Moment) -> Option<Step> {
        match (exec, &self.applied) {
            (Some(iv), Some(a)) if a.command == iv.command => Some(Step::Extend { iv }),
            (Some(iv), prev) => {
                let same_event = prev.as_ref().is_some_and(|p| {
                    p.command.event_id == iv.command.event_id && p.command.kind == iv.command.kind
                });
                // An update of the running event counts from when it was seen; a new
                // governing event counts from its start (so late arrivals show as late).
                // SPEC §2.6 audit truth: a dispatch that governs again after an override
                // or a restart is late only from that moment.
                let resumed = resume.filter(|_| !same_event && iv.start < m.at());
                let boundary = if same_event || resumed.is_some() || took_over(&iv, m) {
                    m.at()
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
                let boundary = if m.now >= a.end { a.end } else { m.at() };
                Some(Step::Release {
                    prev: Some(a.command.clone()),
                    boundary,
                })
            }
            // After a restart the device's state is unknown: make sure it is normal.
            (None, None) if m.wake == Wake::Startup => Some(Step::Release {
                prev: None,
                boundary: m.now,
            }),
            (None, None) => None,
        }
    }

    /// `step` handed to the device: the new state, and the audit row it owes. The row's
    /// result is the device's answer, which the engine fills in when it comes (a slow device
    /// must not hold the state, or the next boundary, until then).
    pub(crate) fn settle(&mut self, step: Step) -> Option<Record> {
        match step {
            Step::Extend { .. } => None,
            Step::Apply {
                iv,
                boundary,
                resumed,
            } => {
                let action = match resumed {
                    Some(_) => Action::Resumed,
                    None => Action::Apply,
                };
                self.applied = Some(Applied {
                    command: iv.command.clone(),
                    end: iv.end,
                });
                Some(Record {
                    detail: resumed,
                    ..Record::ok(action, Some(iv.command), boundary)
                })
            }
            Step::Release { prev, boundary } => {
                self.applied = None;
                Some(Record::ok(Action::Release, prev, boundary))
            }
        }
    }

    /// SPEC §2.10 without a plan (the store cannot be read): a command is still not held
    /// past the end of its interval. The release that is due for that, if one is.
    pub(crate) fn ended(&self, now: DateTime<Utc>) -> Option<Step> {
        let a = self.applied.as_ref().filter(|a| now >= a.end)?;
        Some(Step::Release {
            prev: Some(a.command.clone()),
            boundary: a.end,
        })
    }

    /// SPEC §2.10 shutdown: the command the device holds, forgotten (it is released).
    pub(crate) fn take_applied(&mut self) -> Option<Command> {
        self.applied.take().map(|a| a.command)
    }
}

#[cfg(test)]
#[path = "meter_tests.rs"]
mod tests;

/// A timeslot known before its own start that comes to govern mid-way on a change (the
/// one above it cancelled or re-prioritised): late only from that change. One that arrived
/// after its start (pushed or found by polling late) is late from its start, so Leap's
/// lateness shows, however long the gateway took to store and notice it (SPEC §2.6 audit
/// truth, §2.8 governing timeslot; a project decision where Leap is silent, README).
fn took_over(iv: &Interval, m: Moment) -> bool {
    let Wake::Change(seen) = m.wake else {
        return false;
    };
    iv.start < seen && iv.command.known_since.is_some_and(|k| k <= iv.start)
}
