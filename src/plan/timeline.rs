//! The sweep that turns one meter's candidates into its command intervals: walk the sorted
//! start/end boundaries keeping the set of active candidates ordered by precedence; the
//! first of the set governs until the next boundary (SPEC §2.8). O(n log n) per meter.

use super::select::Candidate;
use super::{Interval, PlanConfig, command};
use crate::model::ExecMode;
use chrono::{DateTime, Utc};
use std::cmp::Ordering;
use std::collections::BTreeSet;

pub(super) struct Sweep {
    pub(crate) intervals: Vec<Interval>,
    /// Candidates (indices into the candidate list) that never govern in the window.
    pub(crate) never_governed: Vec<usize>,
}

/// SPEC §2.8 precedence, strongest first: executing before dry-run (see the module doc of
/// `plan`), lowest priority number, commitment before voluntary, earliest start, event id,
/// kind, then input position so the order is total.
pub(super) fn precedence(a: &Candidate, b: &Candidate) -> Ordering {
    let mode = |c: &Candidate| c.mode == ExecMode::DryRun;
    mode(a)
        .cmp(&mode(b))
        .then(a.ts.plan_priority().cmp(&b.ts.plan_priority()))
        .then(a.ts.is_voluntary.cmp(&b.ts.is_voluntary))
        .then(a.ts.start_time.cmp(&b.ts.start_time))
        .then_with(|| a.ts.event_id.cmp(&b.ts.event_id))
        .then(a.ts.kind.cmp(&b.ts.kind))
        .then(a.input_index.cmp(&b.input_index))
}

/// A stretch with one governing candidate. Ranks index `order` (lower = stronger).
struct Piece {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    gov: u32,
    /// The strongest candidate it overrides anywhere in the stretch.
    runner_up: Option<u32>,
}

pub(super) fn sweep(cands: &[Candidate], mine: &[usize], cfg: &PlanConfig) -> Sweep {
    let mut order = mine.to_vec();
    order.sort_by(|&a, &b| precedence(&cands[a], &cands[b]));
    let pieces = pieces(cands, &order);

    let mut governed = vec![false; order.len()];
    let intervals = pieces
        .iter()
        .map(|p| {
            governed[p.gov as usize] = true;
            let gov = &cands[order[p.gov as usize]];
            let runner = p.runner_up.map(|r| &cands[order[r as usize]]);
            Interval {
                start: p.start,
                end: p.end,
                command: command::build(gov, runner, cfg),
            }
        })
        .collect();
    let never_governed = order
        .iter()
        .zip(&governed)
        .filter(|(_, g)| !**g)
        .map(|(c, _)| *c)
        .collect();
    Sweep {
        intervals,
        never_governed,
    }
}

/// Boundary sweep over the candidates in `order` (already sorted by precedence, so a
/// candidate's rank is its position and the active set's minimum governs).
fn pieces(cands: &[Candidate], order: &[usize]) -> Vec<Piece> {
    let mut events: Vec<(DateTime<Utc>, bool, u32)> = Vec::with_capacity(order.len() * 2);
    for (rank, &c) in order.iter().enumerate() {
        let rank = u32::try_from(rank).expect("fewer than 2^32 timeslots per meter");
        events.push((cands[c].start, true, rank));
        events.push((cands[c].end, false, rank));
    }
    events.sort_unstable_by_key(|e| e.0);

    let mut active = BTreeSet::new();
    let mut out: Vec<Piece> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        // Apply every boundary at t before choosing: back-to-back timeslots hand over
        // without a gap (SCENARIOS 2).
        while let Some(&(at, is_start, rank)) = events.get(i)
            && at == t
        {
            if is_start {
                active.insert(rank);
            } else {
                active.remove(&rank);
            }
            i += 1;
        }
        let Some(&(next, _, _)) = events.get(i) else {
            break;
        };
        let mut it = active.iter().copied();
        if let Some(gov) = it.next() {
            push_piece(&mut out, t, next, gov, it.next());
        }
    }
    out
}

fn push_piece(
    out: &mut Vec<Piece>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    gov: u32,
    runner_up: Option<u32>,
) {
    if let Some(last) = out.last_mut()
        && last.gov == gov
        && last.end == start
    {
        last.end = end;
        last.runner_up = match (last.runner_up, runner_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        return;
    }
    out.push(Piece {
        start,
        end,
        gov,
        runner_up,
    });
}
