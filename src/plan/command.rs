//! What a governing timeslot asks of one meter's battery (SPEC §2.9): target, cap, limits,
//! strategy, and a one-line reason a technician can read in `schedule` and the logs.

use super::select::{Candidate, test_policy};
use super::{PlanConfig, TestKind};
use crate::model::{Cap, Command, ExecMode, Strategy, Target};

pub(super) fn build(gov: &Candidate, runner_up: Option<&Candidate>, cfg: &PlanConfig) -> Command {
    let ts = gov.ts;
    let cap = ts.cap();
    let strategy = cfg.strategy.for_programs(&ts.programs);
    // SPEC §2.9: up-to-nomination bounds the reduction at the nomination, or at the award
    // when there is no nomination. The other caps bound by site load / export instead.
    let limit_kw = match cap {
        Cap::UpToNomination => gov.nomination_share.or(gov.energy_share),
        Cap::UpToSiteLoad | Cap::GridExportsAllowed => None,
    };
    // SPEC §2.9: the site's export limit (interconnection permit) wins over the cap;
    // its default 0 means no export even under grid-exports-allowed.
    let export_allowed_kw = match cap {
        Cap::GridExportsAllowed => cfg.export_limit_kw.max(0.0),
        Cap::UpToNomination | Cap::UpToSiteLoad => 0.0,
    };
    let target = match (
        strategy,
        paid_kw(cap, gov.energy_share, gov.nomination_share),
    ) {
        // `maximize` over-performs up to the cap where that is paid; `limit_kw` still
        // bounds it (SCENARIOS 22: never above the nomination).
        (Strategy::Maximize, _) | (Strategy::Award, None) => Target::Maximum,
        (Strategy::Award, Some(kw)) => Target::Kw(kw),
    };
    Command {
        kind: ts.kind,
        event_id: ts.event_id.clone(),
        mode: gov.mode,
        target,
        cap,
        limit_kw,
        export_allowed_kw,
        import_margin_kw: cfg.import_margin_kw,
        strategy,
        priority: ts.plan_priority(),
        programs: ts.programs.clone(),
        // The timeslot's own end, not the window's: the control loop spreads stored
        // energy over the whole remaining timeslot (SPEC §2.9).
        until: ts.end_time,
        reason: reason(gov, runner_up, cfg),
        known_since: Some(gov.known_since),
    }
}

/// SPEC §2.9: what of an award (a meter's share of `energy_kw`) is paid, which `award`
/// delivers and the event report judges against: under up-to-nomination an award above
/// the nomination is not paid beyond it. None: Leap asked for the maximum.
pub(crate) fn paid_kw(cap: Cap, energy: Option<f64>, nomination: Option<f64>) -> Option<f64> {
    match cap {
        Cap::UpToNomination => energy.map(|e| nomination.map_or(e, |n| e.min(n))),
        Cap::UpToSiteLoad | Cap::GridExportsAllowed => energy,
    }
}

/// [`paid_kw`] for one meter's `share` of a timeslot (the event report's award).
pub(crate) fn paid_share_kw(ts: &crate::model::Timeslot, share: f64) -> Option<f64> {
    paid_kw(
        ts.cap(),
        ts.energy_kw.kw().map(|kw| kw * share),
        ts.nomination_kw.map(|kw| kw * share),
    )
}

/// "p1 commitment over p3 voluntary 33cfced0…: lower priority number".
pub(super) fn reason(gov: &Candidate, runner_up: Option<&Candidate>, cfg: &PlanConfig) -> String {
    let mut out = match runner_up {
        None => format!("{}, the only active timeslot", describe(gov)),
        Some(r) => format!(
            "{} over {} {}: {}",
            describe(gov),
            describe(r),
            short_id(&r.ts.event_id),
            criterion(gov, r)
        ),
    };
    if gov.mode == ExecMode::DryRun {
        let which = match test_policy(gov.ts, &cfg.policy).1 {
            Some(TestKind::CommunicationTest) => "communication test",
            _ => "integration test",
        };
        out.push_str(&format!(" [dry-run: {which} policy]"));
    }
    out
}

fn describe(c: &Candidate) -> String {
    let kind = if c.ts.is_voluntary {
        "voluntary"
    } else {
        "commitment"
    };
    let test = if c.mode == ExecMode::DryRun {
        " dry-run"
    } else {
        ""
    };
    format!("p{} {kind}{test}", c.ts.plan_priority())
}

/// The first field of the SPEC §2.8 order in which the two differ.
fn criterion(gov: &Candidate, r: &Candidate) -> &'static str {
    if gov.mode != r.mode {
        "a real dispatch governs over a dry-run test"
    } else if gov.ts.plan_priority() != r.ts.plan_priority() {
        "lower priority number"
    } else if gov.ts.is_voluntary != r.ts.is_voluntary {
        "equal priority, commitment before voluntary"
    } else if gov.ts.start_time != r.ts.start_time {
        "equal priority, earlier start"
    } else if gov.ts.event_id != r.ts.event_id {
        "equal priority and start, event id order"
    } else {
        "identical keys, input order"
    }
}

fn short_id(id: &str) -> String {
    match id.char_indices().nth(8) {
        Some((i, _)) => format!("{}…", &id[..i]),
        None => id.to_string(),
    }
}
