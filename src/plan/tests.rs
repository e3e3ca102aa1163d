//! Unit tests, one or more per planning rule and per SCENARIOS row about planning
//! (2, 3, 4, 9, 11, 12, 13, 14, 21, 22), plus Leap's own sample meter notification.

use super::*;
use crate::model::{Cap, EnergyKw, ExecMode, Target, Timeslot};
use chrono::{Duration, TimeZone};

pub(super) const M1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub(super) const M2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
pub(super) const FOREIGN: &str = "ffffffff-0000-4000-8000-00000000000f";

/// 2023-06-05T00:00Z plus `minutes`.
pub(super) fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 6, 5, 0, 0, 0).unwrap() + Duration::minutes(minutes)
}

pub(super) fn h(hours: i64) -> DateTime<Utc> {
    at(hours * 60)
}

pub(super) fn stored(timeslot: Timeslot) -> StoredTimeslot {
    StoredTimeslot {
        timeslot,
        cancelled_final: false,
        conflict: false,
        revisions: 1,
        duplicates: 0,
        first_received: h(-24),
        last_received: h(-24),
    }
}

/// A real p1 commitment meter timeslot of 10 kW, up-to-site-load, DRAM.
pub(super) fn slot(id: &str, meter: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Timeslot {
    Timeslot {
        kind: Kind::Meter,
        event_id: id.into(),
        meter_ids: vec![meter.into()],
        market_group_id: None,
        partner_references: vec![],
        start_time: start,
        end_time: end,
        cancelled: false,
        energy_kw: EnergyKw::Kw(10.0),
        nomination_kw: None,
        performance_compensation_cap: Some("up-to-site-load".into()),
        priority: Some(1),
        is_voluntary: false,
        dispatch_event_types: vec!["day-ahead".into()],
        programs: vec!["DRAM".into()],
        communication_test: None,
        integration_test_notification: false,
        notification_communication_test: false,
        warnings: vec![],
    }
}

pub(super) fn with(mut t: Timeslot, f: impl FnOnce(&mut Timeslot)) -> Timeslot {
    f(&mut t);
    t
}

pub(super) fn config() -> PlanConfig {
    PlanConfig {
        meters: vec![
            PlanMeter {
                id: M1.into(),
                weight: 1.0,
            },
            PlanMeter {
                id: M2.into(),
                weight: 1.0,
            },
        ],
        export_limit_kw: 0.0,
        import_margin_kw: 0.5,
        ..PlanConfig::default()
    }
}

pub(super) fn run(
    slots: Vec<Timeslot>,
    cfg: &PlanConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Plan {
    let stored: Vec<StoredTimeslot> = slots.into_iter().map(stored).collect();
    plan(&PlanInput {
        timeslots: &stored,
        config: cfg,
        from,
        to,
    })
}

pub(super) fn day(slots: Vec<Timeslot>) -> Plan {
    run(slots, &config(), h(-1), h(23))
}

/// (start, end, event id) of each interval of `meter`.
pub(super) fn shape(p: &Plan, meter: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    p.meters[meter]
        .iter()
        .map(|iv| (iv.start, iv.end, iv.command.event_id.clone()))
        .collect()
}

pub(super) fn reason_of(p: &Plan, id: &str) -> Vec<ExcludeReason> {
    p.excluded
        .iter()
        .filter(|e| e.event_id == id)
        .map(|e| e.reason.clone())
        .collect()
}

/// Test-only reading of Leap's sample (the real parser lives in `ingest`).
fn leap_meter_sample() -> Vec<Timeslot> {
    let body: serde_json::Value =
        serde_json::from_str(include_str!("testdata/leap-meter-sample.json")).unwrap();
    let time = |v: &serde_json::Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        let items = v.as_array().unwrap().iter();
        items.map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let mut out = Vec::new();
    for entry in body["meter_dispatches"].as_array().unwrap() {
        let meter = entry["meter_id"].as_str().unwrap();
        for t in entry["timeslots"].as_array().unwrap() {
            out.push(Timeslot {
                event_id: t["meter_event_id"].as_str().unwrap().into(),
                cancelled: t["cancelled"].as_bool().unwrap(),
                energy_kw: t["energy_kw"].as_f64().map_or(EnergyKw::Null, EnergyKw::Kw),
                performance_compensation_cap: t["performance_compensation_cap"]
                    .as_str()
                    .map(Into::into),
                priority: t["priority"].as_i64(),
                is_voluntary: t["is_voluntary"].as_bool().unwrap(),
                dispatch_event_types: strings(&t["dispatch_event_types"]),
                programs: strings(&t["programs"]),
                integration_test_notification: body["integration_test_notification"]
                    .as_bool()
                    .unwrap(),
                ..slot("", meter, time(&t["start_time"]), time(&t["end_time"]))
            });
        }
    }
    out
}

const SAMPLE_METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

#[test]
fn leap_sample_meter_notification_gives_three_intervals() {
    // SCENARIOS 2 and 3 on Leap's own sample: 10 kW, 20 kW back to back (p1 DRAM), then
    // the overlapping p3 ELRP takes over at 02:00 with the maximum and exports.
    let cfg = PlanConfig {
        meters: vec![PlanMeter {
            id: SAMPLE_METER.to_uppercase(), // SPEC §2.7: ids match whatever their case
            weight: 1.0,
        }],
        export_limit_kw: 5.0,
        ..config()
    };
    let p = run(leap_meter_sample(), &cfg, h(-1), h(24));
    let ivs = &p.meters[&SAMPLE_METER.to_uppercase()];
    assert_eq!(ivs.len(), 3, "{ivs:#?}");
    let expect = [
        (h(0), h(1), Target::Kw(10.0), 1, Cap::UpToSiteLoad, 0.0),
        (h(1), h(2), Target::Kw(20.0), 1, Cap::UpToSiteLoad, 0.0),
        (h(2), h(5), Target::Maximum, 3, Cap::GridExportsAllowed, 5.0),
    ];
    for (iv, (start, end, target, prio, cap, export)) in ivs.iter().zip(expect) {
        let c = &iv.command;
        assert_eq!((iv.start, iv.end), (start, end));
        assert_eq!((c.target, c.priority, c.cap), (target, prio, cap));
        assert_eq!(c.export_allowed_kw, export);
        assert_eq!(c.limit_kw, None);
        // The sample is an integration test: default policy is dry-run (SPEC §2.6).
        assert_eq!(c.mode, ExecMode::DryRun);
    }
    assert!(ivs[0].command.event_id.starts_with("11cf"));
    assert!(ivs[1].command.event_id.starts_with("22cf"));
    assert!(ivs[2].command.event_id.starts_with("33cf"));
    assert_eq!(ivs[2].command.until, h(5));
    assert!(
        ivs[1].command.reason.starts_with(
            "p1 commitment dry-run over p3 voluntary dry-run 33cfced0…: lower priority number"
        ),
        "{}",
        ivs[1].command.reason
    );
    assert!(ivs[0].command.reason.contains("the only active timeslot"));
    assert!(p.excluded.is_empty(), "{:?}", p.excluded);
}

#[test]
fn scenario_2_back_to_back_hand_over_without_gap() {
    let a = slot("a", M1, h(0), h(1));
    let b = with(slot("b", M1, h(1), h(2)), |t| {
        t.energy_kw = EnergyKw::Kw(20.0)
    });
    let p = day(vec![b, a]);
    assert_eq!(
        shape(&p, M1),
        vec![(h(0), h(1), "a".into()), (h(1), h(2), "b".into())]
    );
    assert_eq!(
        p.command_at(M1, h(1)).unwrap().command.target,
        Target::Kw(20.0)
    );
    assert_eq!(
        p.command_at(M1, h(1) - Duration::seconds(1))
            .unwrap()
            .command
            .event_id,
        "a"
    );
    assert_eq!(p.command_at(M1, h(2)), None, "normal at T+2h");
}

#[test]
fn higher_priority_inside_lower_splits_it() {
    let low = with(slot("low", M1, h(0), h(5)), |t| t.priority = Some(3));
    let high = slot("high", M1, h(1), h(2));
    let p = day(vec![low, high]);
    assert_eq!(
        shape(&p, M1),
        vec![
            (h(0), h(1), "low".into()),
            (h(1), h(2), "high".into()),
            (h(2), h(5), "low".into())
        ]
    );
}

#[test]
fn pieces_of_one_governing_timeslot_are_merged_and_overridden_is_reported() {
    let high = slot("high", M1, h(0), h(4));
    let low = with(slot("low", M1, h(1), h(2)), |t| t.priority = Some(5));
    let p = day(vec![high, low]);
    assert_eq!(shape(&p, M1), vec![(h(0), h(4), "high".into())]);
    assert!(
        p.meters[M1][0]
            .command
            .reason
            .contains("over p5 commitment low")
    );
    let ex = p.excluded.iter().find(|e| e.event_id == "low").unwrap();
    assert_eq!(
        (ex.meter_id.as_deref(), &ex.reason),
        (Some(M1), &ExcludeReason::Overridden)
    );
}

#[test]
fn absent_priority_plans_as_lowest() {
    let none = with(slot("none", M1, h(0), h(2)), |t| t.priority = None);
    let ten = with(slot("ten", M1, h(0), h(2)), |t| t.priority = Some(9));
    assert_eq!(day(vec![none, ten]).meters[M1][0].command.event_id, "ten");
}

#[test]
fn scenario_4_and_11_cancelled_timeslots_never_appear() {
    let cancelled = with(slot("c", M1, h(1), h(2)), |t| t.cancelled = true);
    // SPEC §2.4: seen cancelled once, then an older un-cancelled retry: still cancelled.
    let mut rearmed = stored(slot("r", M2, h(1), h(2)));
    rearmed.cancelled_final = true;
    rearmed.conflict = true;
    let all = vec![stored(cancelled), rearmed];
    let p = plan(&PlanInput {
        timeslots: &all,
        config: &config(),
        from: h(0),
        to: h(24),
    });
    assert!(p.meters.values().all(Vec::is_empty), "{p:#?}");
    assert_eq!(
        reason_of(&p, "c"),
        vec![ExcludeReason::Cancelled { conflict: false }]
    );
    assert_eq!(
        reason_of(&p, "r"),
        vec![ExcludeReason::Cancelled { conflict: true }]
    );
    assert_eq!(p.next_boundary_after(h(0)), None);
}

#[test]
fn scenario_9_ended_timeslot_is_not_planned() {
    let p = run(vec![slot("old", M1, h(0), h(1))], &config(), h(1), h(3));
    assert!(p.meters[M1].is_empty());
    assert_eq!(reason_of(&p, "old"), vec![ExcludeReason::Ended]);
}

#[test]
fn window_clips_intervals_but_until_keeps_the_timeslot_end() {
    let long = slot("long", M1, h(0), h(10));
    let later = slot("later", M1, h(12), h(13));
    let p = run(vec![long, later], &config(), h(2), h(6));
    assert_eq!(shape(&p, M1), vec![(h(2), h(6), "long".into())]);
    assert_eq!(p.meters[M1][0].command.until, h(10));
    assert_eq!(reason_of(&p, "later"), vec![ExcludeReason::AfterWindow]);
    assert_eq!((p.from, p.to), (h(2), h(6)));
}

#[test]
fn invalid_times_are_excluded() {
    let backwards = slot("bw", M1, h(2), h(1));
    let p = day(vec![backwards]);
    assert!(p.meters[M1].is_empty());
    assert!(matches!(
        reason_of(&p, "bw")[0],
        ExcludeReason::Invalid { .. }
    ));
}

pub(super) fn group(id: &str, meters: &[&str], kw: EnergyKw) -> Timeslot {
    let mut t = slot(id, meters[0], h(0), h(1));
    t.kind = Kind::Group;
    t.meter_ids = meters.iter().map(|m| m.to_string()).collect();
    t.market_group_id = Some("11aa7aae-24e5-455f-91e9-e0f5f145f2ae".into());
    t.energy_kw = kw;
    t
}

#[test]
fn scenario_12_group_share_counts_the_foreign_meter() {
    let g = group("g", &[M1, FOREIGN, &M2.to_uppercase()], EnergyKw::Kw(30.0));
    let g = with(g, |t| t.nomination_kw = Some(60.0));
    let p = day(vec![g]);
    for m in [M1, M2] {
        let c = &p.meters[m][0].command;
        assert_eq!(c.target, Target::Kw(10.0), "{m}");
        assert_eq!(c.kind, Kind::Group);
    }
    assert!(!p.meters.contains_key(FOREIGN));
    assert!(p.excluded.is_empty());
}

#[test]
fn group_shares_follow_weights_and_split_nomination() {
    let mut cfg = config();
    cfg.meters[0].weight = 2.0;
    let g = group("g", &[M1, M2, FOREIGN], EnergyKw::Kw(45.0));
    let g = with(g, |t| {
        t.nomination_kw = Some(22.5);
        t.performance_compensation_cap = Some("up-to-nomination".into());
    });
    let p = run(vec![g], &cfg, h(0), h(2));
    let (c1, c2) = (&p.meters[M1][0].command, &p.meters[M2][0].command);
    // weights 2 : 1, the foreign meter counting as their mean 1.5 → 45 kW gives 20 / 10;
    // nomination 22.5 gives 10 / 5.
    assert_eq!((c1.limit_kw, c2.limit_kw), (Some(10.0), Some(5.0)));
    assert_eq!((c1.target, c2.target), (Target::Kw(10.0), Target::Kw(5.0)));
}

#[test]
fn group_shares_do_not_depend_on_the_weights_scale() {
    let shares = |w1: f64, w2: f64| {
        let mut cfg = config();
        cfg.meters[0].weight = w1;
        cfg.meters[1].weight = w2;
        let g = group("g", &[M1, M2, FOREIGN], EnergyKw::Kw(60.0));
        let p = run(vec![g], &cfg, h(0), h(2));
        let kw = |m: &str| match p.meters[m][0].command.target {
            Target::Kw(k) => (k * 1e6).round() / 1e6,
            other => panic!("{other:?}"),
        };
        (kw(M1), kw(M2))
    };
    // 0.3 : 0.1, the foreign meter as their mean 0.2: 60 × 0.3/0.6 = 30, 60 × 0.1/0.6 = 10.
    assert_eq!(shares(0.3, 0.1), (30.0, 10.0));
    assert_eq!(shares(30.0, 10.0), (30.0, 10.0));
    // Equal weights of any size: equal shares with the foreign meter (SCENARIOS 12).
    assert_eq!(shares(5.0, 5.0), (20.0, 20.0));
}

#[test]
fn group_with_null_energy_asks_each_local_meter_for_the_maximum() {
    let p = day(vec![group("g", &[M1, M2], EnergyKw::Null)]);
    assert_eq!(p.meters[M1][0].command.target, Target::Maximum);
    assert_eq!(p.meters[M2][0].command.target, Target::Maximum);
}

#[test]
fn scenario_13_unmapped_meter_and_foreign_group() {
    let p = day(vec![
        slot("u", FOREIGN, h(0), h(1)),
        group("fg", &[FOREIGN], EnergyKw::Kw(5.0)),
    ]);
    assert!(p.meters.values().all(Vec::is_empty));
    assert!(!p.meters.contains_key(FOREIGN));
    assert_eq!(reason_of(&p, "u"), vec![ExcludeReason::UnmappedMeter]);
    assert_eq!(
        reason_of(&p, "fg"),
        vec![ExcludeReason::NoLocalMeterInGroup]
    );
    assert_eq!(reason_of(&p, "u")[0].to_string(), "unmapped meter");
    // The id is named, to compare with the configuration's.
    let u = p.excluded.iter().find(|e| e.event_id == "u").unwrap();
    assert_eq!(u.meter_id.as_deref(), Some(FOREIGN));
}

/// SPEC §2.9: under up-to-nomination an award above the nomination is paid, delivered and
/// judged (the event report) only up to it; the other caps pay the award.
#[test]
fn the_paid_award_stops_at_the_nomination_only_under_up_to_nomination() {
    let t = slot("E1", M1, at(10), at(11));
    let t = with(t, |t| {
        t.energy_kw = EnergyKw::Kw(20.0);
        t.nomination_kw = Some(10.0);
        t.performance_compensation_cap = Some("up-to-nomination".into());
    });
    assert_eq!(super::paid_share_kw(&t, 0.5), Some(5.0));
    let site = with(t.clone(), |t| {
        t.performance_compensation_cap = Some("up-to-site-load".into());
    });
    assert_eq!(super::paid_share_kw(&site, 0.5), Some(10.0));
    let max = with(t, |t| t.energy_kw = EnergyKw::Null);
    assert_eq!(super::paid_share_kw(&max, 1.0), None);
}
