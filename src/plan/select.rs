//! Which (timeslot, local meter) pairs take part in planning, with each pair's mode and kW
//! shares; every timeslot left out gets its reason (SPEC §2.4, §2.6, §2.7).

use super::{ExcludeReason, Excluded, PlanConfig, PlanInput, TestKind};
use crate::config::TestPolicy;
use crate::model::{EnergyKw, ExecMode, Kind, StoredTimeslot, Timeslot};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};

/// One timeslot on one local meter, clipped to the window.
#[derive(Debug, Clone)]
pub(super) struct Candidate<'a> {
    pub(crate) ts: &'a Timeslot,
    /// Position in the input, the last tie-break (the store never hands out two
    /// timeslots with the same (kind, event id), but planning must stay deterministic).
    pub(crate) input_index: usize,
    pub(crate) mode: ExecMode,
    /// This meter's share of `energy_kw` (None: null/absent → the maximum).
    pub(crate) energy_share: Option<f64>,
    pub(crate) nomination_share: Option<f64>,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    /// When the gateway first stored this timeslot.
    pub(crate) known_since: DateTime<Utc>,
}

pub(super) struct Selection<'a> {
    pub(crate) candidates: Vec<Candidate<'a>>,
    /// For each configured meter (same index as `PlanConfig::meters`), its candidates.
    pub(crate) by_meter: Vec<Vec<usize>>,
    pub(crate) excluded: Vec<Excluded>,
}

pub(super) fn select<'a>(input: &PlanInput<'a>) -> Selection<'a> {
    let cfg = input.config;
    // SPEC §2.7: Leap meter ids are uuids; match them whatever their case.
    let local: HashMap<String, usize> = cfg
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.to_ascii_lowercase(), i))
        .collect();
    let mut sel = Selection {
        candidates: Vec::new(),
        by_meter: vec![Vec::new(); cfg.meters.len()],
        excluded: Vec::new(),
    };
    for (input_index, stored) in input.timeslots.iter().enumerate() {
        let ts = &stored.timeslot;
        let meters = group_meters(ts, &local);
        let mode = match eligibility(stored, &meters, input) {
            Ok(mode) => mode,
            Err(reason) => {
                sel.excluded.push(Excluded {
                    kind: ts.kind,
                    event_id: ts.event_id.clone(),
                    // A meter dispatch names its one meter (an id typo shows next to the
                    // config's); a group's list may hold thousands, not one to show.
                    meter_id: match ts.kind {
                        Kind::Meter => ts.meter_ids.first().cloned(),
                        Kind::Group => None,
                    },
                    reason,
                });
                continue;
            }
        };
        let total_weight = total_weight(&meters, cfg);
        for m in meters.iter().filter_map(|m| *m) {
            let share = |kw: f64| match ts.kind {
                Kind::Meter => kw,
                // SPEC §2.7 + SCENARIOS 12: the group's award is split over ALL its meters;
                // a foreign meter keeps its own share, which is not ours to deliver.
                Kind::Group => kw * cfg.meters[m].weight / total_weight,
            };
            sel.by_meter[m].push(sel.candidates.len());
            sel.candidates.push(Candidate {
                ts,
                input_index,
                mode,
                energy_share: ts.energy_kw.kw().map(share),
                nomination_share: ts.nomination_kw.map(share),
                start: ts.start_time.max(input.from),
                end: ts.end_time.min(input.to),
                known_since: stored.first_received,
            });
        }
    }
    sel
}

/// The timeslot's meters, each deduplicated case-insensitively: Some(local index) or None
/// for a foreign meter. A set, not a list search: a market group may list 10,000 meters
/// on each of its timeslots, and every plan walks them all.
fn group_meters(ts: &Timeslot, local: &HashMap<String, usize>) -> Vec<Option<usize>> {
    let mut seen: HashSet<String> = HashSet::with_capacity(ts.meter_ids.len());
    let mut out = Vec::with_capacity(ts.meter_ids.len());
    for id in &ts.meter_ids {
        let id = id.to_ascii_lowercase();
        let m = local.get(&id).copied();
        if seen.insert(id) {
            out.push(m);
        }
    }
    out
}

/// Issue 9, the one weight rule: weights are relative among the group's LOCAL meters, and a
/// foreign meter (one this gateway does not serve) counts as the local meters' mean weight
/// — what an unweighted meter is worth in this group. Shares are therefore independent of
/// the weights' absolute scale (0.3/0.1 and 30/10 split the same way), and with equal
/// weights every meter, local or foreign, gets an equal share (SCENARIOS 12).
fn total_weight(meters: &[Option<usize>], cfg: &PlanConfig) -> f64 {
    let local: Vec<f64> = meters
        .iter()
        .filter_map(|m| m.map(|i| cfg.meters[i].weight))
        .collect();
    group_weight(&local, meters.len() - local.len())
}

/// The weight a group's award is divided by: its local meters' weights plus, for each
/// foreign meter, their mean (see `total_weight`). Reports use it too, so an award in a
/// report is what the plan commanded.
pub(crate) fn group_weight(local: &[f64], foreign: usize) -> f64 {
    let local_sum: f64 = local.iter().sum();
    let mean = if local.is_empty() {
        1.0
    } else {
        local_sum / local.len() as f64
    };
    local_sum + foreign as f64 * mean
}

/// Ok(mode) when the timeslot is planned, else why not. The order of the checks decides
/// which reason a technician sees when several apply: the most final one first.
fn eligibility(
    stored: &StoredTimeslot,
    meters: &[Option<usize>],
    input: &PlanInput,
) -> Result<ExecMode, ExcludeReason> {
    let ts = &stored.timeslot;
    if let Some(why) = invalid(ts) {
        return Err(ExcludeReason::Invalid { why });
    }
    // SPEC §2.4: cancellation is final, whatever a later revision says.
    if stored.is_cancelled() {
        return Err(ExcludeReason::Cancelled {
            conflict: stored.conflict,
        });
    }
    if !meters.iter().any(Option::is_some) {
        return Err(match ts.kind {
            Kind::Meter => ExcludeReason::UnmappedMeter,
            Kind::Group => ExcludeReason::NoLocalMeterInGroup,
        });
    }
    let mode = match test_policy(ts, &input.config.policy) {
        (TestPolicy::Ignore, kind) => {
            return Err(ExcludeReason::IgnoredByPolicy {
                policy: kind.unwrap_or(TestKind::IntegrationTest),
            });
        }
        (TestPolicy::DryRun, _) => ExecMode::DryRun,
        (TestPolicy::Execute, _) => ExecMode::Execute,
    };
    if ts.end_time <= input.from {
        return Err(ExcludeReason::Ended);
    }
    if ts.start_time >= input.to || input.from >= input.to {
        return Err(ExcludeReason::AfterWindow);
    }
    Ok(mode)
}

fn invalid(ts: &Timeslot) -> Option<String> {
    if ts.end_time <= ts.start_time {
        return Some(format!(
            "end_time {} is not after start_time {}",
            ts.end_time, ts.start_time
        ));
    }
    let bad = |v: f64| !v.is_finite() || v < 0.0;
    if let EnergyKw::Kw(v) = ts.energy_kw
        && bad(v)
    {
        return Some(format!("energy_kw {v} is not a usable number"));
    }
    if let Some(v) = ts.nomination_kw
        && bad(v)
    {
        return Some(format!("nomination_kw {v} is not a usable number"));
    }
    None
}

/// SPEC §2.6: the policy that applies to this timeslot, and which test kind chose it
/// (None: a real dispatch). When both test kinds apply, the more restrictive policy wins.
pub(crate) fn test_policy(
    ts: &Timeslot,
    policy: &crate::config::PolicyConfig,
) -> (TestPolicy, Option<TestKind>) {
    let mut out = (TestPolicy::Execute, None);
    let mut consider = |p: TestPolicy, kind: TestKind| {
        if strictness(p) > strictness(out.0) {
            out = (p, Some(kind));
        } else if out.1.is_none() {
            out.1 = Some(kind);
        }
    };
    if ts.integration_test_notification {
        consider(policy.integration_test, TestKind::IntegrationTest);
    }
    if ts.is_communication_test() {
        consider(policy.communication_test, TestKind::CommunicationTest);
    }
    out
}

fn strictness(p: TestPolicy) -> u8 {
    match p {
        TestPolicy::Execute => 0,
        TestPolicy::DryRun => 1,
        TestPolicy::Ignore => 2,
    }
}
