//! Property tests over random timeslot sets: the plan is checked against a brute-force
//! model that picks the governing timeslot instant by instant (SPEC §2.4, §2.6–2.8).

use super::tests::{FOREIGN, M1, M2, at, config, slot, stored};
use super::*;
use crate::config::TestPolicy;
use crate::model::{ExecMode, Timeslot};
use proptest::prelude::*;

/// Every boundary lies on this grid (minutes), so sampling each grid point and each
/// half-way point sees every interval.
const Q: i64 = 15;

#[derive(Debug, Clone)]
struct Gen {
    meters: Vec<usize>,
    group: bool,
    start_q: i64,
    len_q: i64,
    priority: Option<i64>,
    voluntary: bool,
    cancelled: bool,
    cancelled_final: bool,
    itest: bool,
    ctest: bool,
}

fn meter_pool(i: usize) -> String {
    // Two local meters (one also in upper case) and two foreign ones.
    match i {
        0 => M1.into(),
        1 => M2.into(),
        2 => M1.to_uppercase(),
        3 => FOREIGN.into(),
        _ => "eeeeeeee-0000-4000-8000-00000000000e".into(),
    }
}

fn gen_slot() -> impl Strategy<Value = Gen> {
    (
        (prop::collection::vec(0usize..5, 1..4), any::<bool>()),
        (0i64..40, -1i64..16, prop::option::of(1i64..5)),
        (
            any::<bool>(),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.1),
        ),
        (prop::bool::weighted(0.2), prop::bool::weighted(0.15)),
    )
        .prop_map(
            |((meters, group), (start_q, len_q, priority), (vol, canc, fin), (it, ct))| Gen {
                meters,
                group,
                start_q,
                len_q,
                priority,
                voluntary: vol,
                cancelled: canc,
                cancelled_final: fin,
                itest: it,
                ctest: ct,
            },
        )
}

fn test_policy_strategy() -> impl Strategy<Value = TestPolicy> {
    prop_oneof![
        Just(TestPolicy::Execute),
        Just(TestPolicy::DryRun),
        Just(TestPolicy::Ignore)
    ]
}

fn build(i: usize, g: &Gen) -> StoredTimeslot {
    let mut t = slot(
        &format!("e{:02}", (i * 7) % 31),
        M1,
        at(g.start_q * Q),
        at(0),
    );
    t.end_time = at((g.start_q + g.len_q) * Q);
    t.kind = if g.group { Kind::Group } else { Kind::Meter };
    t.event_id.push_str(&format!("-{i}")); // unique, but not in input order
    t.meter_ids = if g.group {
        g.meters.iter().map(|&m| meter_pool(m)).collect()
    } else {
        vec![meter_pool(g.meters[0])]
    };
    t.priority = g.priority;
    t.is_voluntary = g.voluntary;
    t.cancelled = g.cancelled;
    t.integration_test_notification = g.itest;
    t.communication_test = Some(g.ctest);
    let mut s = stored(t);
    s.cancelled_final = g.cancelled_final;
    s
}

/// The brute-force model: the governing timeslot for `meter` at `t`, by scanning all.
fn reference<'a>(
    input: &'a [StoredTimeslot],
    cfg: &PlanConfig,
    meter: &str,
    t: DateTime<Utc>,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> Option<(&'a Timeslot, ExecMode, usize)> {
    if t < window.0 || t >= window.1 {
        return None;
    }
    let candidates = input.iter().enumerate().filter_map(|(i, s)| {
        let ts = &s.timeslot;
        let mapped = ts.meter_ids.iter().any(|m| m.eq_ignore_ascii_case(meter));
        let mode = match select::test_policy(ts, &cfg.policy).0 {
            TestPolicy::Ignore => return None,
            TestPolicy::DryRun => ExecMode::DryRun,
            TestPolicy::Execute => ExecMode::Execute,
        };
        let ok = mapped && !s.is_cancelled() && ts.is_active_at(t);
        ok.then_some((ts, mode, i))
    });
    candidates.min_by_key(|(ts, mode, i)| {
        (
            *mode == ExecMode::DryRun,
            ts.plan_priority(),
            ts.is_voluntary,
            ts.start_time,
            ts.event_id.clone(),
            ts.kind,
            *i,
        )
    })
}

fn check_shape(p: &Plan) {
    for ivs in p.meters.values() {
        for iv in ivs {
            assert!(iv.start < iv.end && p.from <= iv.start && iv.end <= p.to);
        }
        for w in ivs.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap or unsorted: {w:#?}");
            let same = (w[0].command.kind, &w[0].command.event_id)
                == (w[1].command.kind, &w[1].command.event_id);
            assert!(!(same && w[0].end == w[1].start), "unmerged: {w:#?}");
        }
    }
}

fn check_instants(input: &[StoredTimeslot], cfg: &PlanConfig, p: &Plan) {
    for meter in [M1, M2] {
        for k in -8..(60 * 2) {
            let t = at(k * Q / 2);
            let got = p.command_at(meter, t);
            let want = reference(input, cfg, meter, t, (p.from, p.to));
            match (got, want) {
                (None, None) => {}
                (Some(iv), Some((ts, mode, _))) => {
                    let c = &iv.command;
                    assert_eq!((&c.event_id, c.kind, c.mode), (&ts.event_id, ts.kind, mode));
                    // SPEC §2.8: lowest priority number among the active of its mode.
                    let lowest = input
                        .iter()
                        .filter(|s| !s.is_cancelled() && s.timeslot.is_active_at(t))
                        .filter(|s| {
                            s.timeslot
                                .meter_ids
                                .iter()
                                .any(|m| m.eq_ignore_ascii_case(meter))
                        })
                        .filter(|s| mode_of(&s.timeslot, cfg) == Some(mode))
                        .map(|s| s.timeslot.plan_priority())
                        .min();
                    assert_eq!(Some(c.priority), lowest, "at {t}");
                    if mode == ExecMode::DryRun {
                        assert!(!input.iter().any(|s| {
                            !s.is_cancelled()
                                && s.timeslot.is_active_at(t)
                                && mode_of(&s.timeslot, cfg) == Some(ExecMode::Execute)
                                && s.timeslot
                                    .meter_ids
                                    .iter()
                                    .any(|m| m.eq_ignore_ascii_case(meter))
                        }));
                    }
                }
                (got, want) => panic!("{meter} at {t}: plan {got:?}, model {want:?}"),
            }
        }
    }
}

fn mode_of(ts: &Timeslot, cfg: &PlanConfig) -> Option<ExecMode> {
    match select::test_policy(ts, &cfg.policy).0 {
        TestPolicy::Ignore => None,
        TestPolicy::DryRun => Some(ExecMode::DryRun),
        TestPolicy::Execute => Some(ExecMode::Execute),
    }
}

/// Every input timeslot is accounted for: planned somewhere, or excluded with a reason.
fn check_accounting(input: &[StoredTimeslot], p: &Plan) {
    for s in input {
        let ts = &s.timeslot;
        let planned = p
            .meters
            .values()
            .flatten()
            .any(|iv| iv.command.event_id == ts.event_id && iv.command.kind == ts.kind);
        let excluded = p.excluded.iter().any(|e| e.event_id == ts.event_id);
        assert!(planned || excluded, "{} vanished", ts.event_id);
        if s.is_cancelled() {
            // SPEC §2.4: cancelled timeslots never appear.
            assert!(!planned, "cancelled {} planned", ts.event_id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plan_matches_the_brute_force_model(
        gens in prop::collection::vec(gen_slot(), 0..25),
        from_q in -4i64..20,
        len_q in 0i64..50,
        integration in test_policy_strategy(),
        communication in test_policy_strategy(),
    ) {
        let input: Vec<StoredTimeslot> =
            gens.iter().enumerate().map(|(i, g)| build(i, g)).collect();
        let mut cfg = config();
        cfg.policy.integration_test = integration;
        cfg.policy.communication_test = communication;
        let p = plan(&PlanInput {
            timeslots: &input,
            config: &cfg,
            from: at(from_q * Q),
            to: at((from_q + len_q) * Q),
        });
        check_shape(&p);
        check_instants(&input, &cfg, &p);
        check_accounting(&input, &p);
        // Every boundary next_boundary_after reports is an interval edge, and none is skipped.
        let mut t = p.from - chrono::Duration::minutes(1);
        let edges: std::collections::BTreeSet<_> = p.meters.values().flatten()
            .flat_map(|iv| [iv.start, iv.end]).collect();
        let mut seen = Vec::new();
        while let Some(next) = p.next_boundary_after(t) {
            prop_assert!(next > t);
            seen.push(next);
            t = next;
        }
        prop_assert_eq!(seen, edges.into_iter().collect::<Vec<_>>());
    }
}
