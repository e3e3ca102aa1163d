//! One meter's decisions, without a store, a clock or a device.

use super::*;
use crate::dispatch::overrides::{ManualAction, Override, resolve};
use crate::model::Target;
use chrono::{Duration, TimeZone};

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap() + Duration::seconds(s)
}

fn iv(event: &str, kw: f64, start: i64, end: i64) -> Interval {
    Interval {
        start: t(start),
        end: t(end),
        command: Command::award(event, kw, t(end)),
    }
}

fn at(s: i64, wake: Wake) -> Moment {
    Moment { now: t(s), wake }
}

/// A turn with no override in force.
fn plain(state: &mut MeterState, planned: Option<Interval>, m: Moment) -> Turn {
    let r = resolve(state.overridden(), None, planned, m.now, 0.5);
    state.turn(r, None, m)
}

/// Applies `iv` at its start, as a boundary wake-up does, and settles it.
fn applied(state: &mut MeterState, iv: &Interval) {
    let m = at(0, Wake::Boundary(iv.start));
    let step = plain(state, Some(iv.clone()), m).step.expect("a step");
    assert!(matches!(step, Step::Apply { .. }), "{step:?}");
    state.settle(step);
}

#[test]
fn startup_with_nothing_to_do_releases_the_device() {
    let mut s = MeterState::default();
    let turn = plain(&mut s, None, at(0, Wake::Startup));
    assert_eq!(
        turn.step,
        Some(Step::Release {
            prev: None,
            boundary: t(0)
        })
    );
    assert_eq!(plain(&mut s, None, at(1, Wake::Periodic)).step, None);
}

#[test]
fn a_new_reason_alone_does_not_reapply_the_running_command() {
    let mut s = MeterState::default();
    let first = iv("e1", 10.0, 0, 600);
    applied(&mut s, &first);
    // A runner-up timeslot arrived: the same command, governing for another reason.
    let mut second = first.clone();
    second.command.reason = "p1 commitment over p3 voluntary e2: lower priority number".into();
    let turn = plain(&mut s, Some(second.clone()), at(5, Wake::Change(t(5))));
    assert_eq!(turn.step, Some(Step::Extend { iv: second }));
    assert!(turn.rows.is_empty(), "{:?}", turn.rows);
}

#[test]
fn an_update_of_the_running_event_counts_from_when_it_was_seen() {
    let mut s = MeterState::default();
    applied(&mut s, &iv("e1", 10.0, 0, 600));
    let turn = plain(
        &mut s,
        Some(iv("e1", 6.0, 0, 600)),
        at(8, Wake::Change(t(7))),
    );
    match turn.step {
        Some(Step::Apply {
            boundary, resumed, ..
        }) => assert_eq!((boundary, resumed), (t(7), None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_end_of_the_interval_releases_at_its_end() {
    let mut s = MeterState::default();
    let first = iv("e1", 10.0, 0, 600);
    applied(&mut s, &first);
    let step = plain(&mut s, None, at(601, Wake::Boundary(t(600)))).step;
    assert_eq!(
        step,
        Some(Step::Release {
            prev: Some(first.command),
            boundary: t(600)
        })
    );
    let row = s.settle(step.unwrap()).expect("a release row");
    assert_eq!((row.action, row.boundary), (Action::Release, t(600)));
    assert_eq!(s.take_applied(), None);
}

#[test]
fn a_dry_run_is_audited_once_per_distinct_command() {
    let mut s = MeterState::default();
    let mut dry = iv("e1", 10.0, 0, 600);
    dry.command.mode = ExecMode::DryRun;
    let m = at(0, Wake::Boundary(t(0)));
    let first = plain(&mut s, Some(dry.clone()), m);
    assert_eq!(first.rows.len(), 1);
    assert_eq!(first.rows[0].action, Action::WouldApply);
    // Startup is over and nothing was applied: no device step for a dry-run.
    assert_eq!(first.step, None);
    assert!(
        plain(&mut s, Some(dry.clone()), at(1, Wake::Periodic))
            .rows
            .is_empty()
    );
    dry.command.target = Target::Kw(4.0);
    let changed = plain(&mut s, Some(dry), at(2, Wake::Change(t(2))));
    assert_eq!(
        changed.rows[0].boundary,
        t(2),
        "an update counts from when seen"
    );
}

#[test]
fn an_override_displaces_the_dispatch_which_then_resumes() {
    let mut s = MeterState::default();
    let leap = iv("e1", 10.0, 0, 600);
    applied(&mut s, &leap);
    let hold = Override {
        action: ManualAction::Hold,
        until: t(100),
    };
    let m = at(10, Wake::Change(t(10)));
    let r = resolve(s.overridden(), Some(&hold), Some(leap.clone()), m.now, 0.5);
    let turn = s.turn(r, None, m);
    assert_eq!(turn.rows.len(), 1);
    assert_eq!(turn.rows[0].action, Action::Overridden);
    let step = turn.step.expect("the override's command");
    s.settle(step);
    // The override expired: the Leap dispatch governs again, audited as resumed from now.
    let m = at(101, Wake::Boundary(t(100)));
    let step = plain(&mut s, Some(leap), m).step;
    match step.clone() {
        Some(Step::Apply {
            boundary, resumed, ..
        }) => assert_eq!(
            (boundary, resumed.as_deref()),
            (t(100), Some("resumed after a manual override"))
        ),
        other => panic!("{other:?}"),
    }
    let row = s.settle(step.unwrap()).expect("a row");
    assert_eq!(row.action, Action::Resumed);
}

#[test]
fn a_restart_resumes_a_dispatch_applied_before() {
    let mut s = MeterState::default();
    let leap = iv("e1", 10.0, -300, 600);
    let r = resolve(None, None, Some(leap), t(0), 0.5);
    let why = Some("resumed after a restart (first applied …)".to_string());
    match s.turn(r, why.clone(), at(0, Wake::Startup)).step {
        Some(Step::Apply {
            boundary, resumed, ..
        }) => assert_eq!((boundary, resumed), (t(0), why)),
        other => panic!("{other:?}"),
    }
}
