use super::*;
use crate::intervals::recorder::{Energy, Source};
use crate::model::{EnergyKw, Kind};
use chrono::TimeZone;

fn timeslot(start: DateTime<Utc>, minutes: i64) -> Timeslot {
    Timeslot {
        kind: Kind::Meter,
        event_id: "ev-1".into(),
        meter_ids: vec!["m1".into()],
        market_group_id: None,
        partner_references: vec![],
        start_time: start,
        end_time: start + chrono::Duration::minutes(minutes),
        cancelled: false,
        energy_kw: EnergyKw::Kw(20.0),
        nomination_kw: None,
        performance_compensation_cap: Some("up-to-site-load".into()),
        priority: Some(1),
        is_voluntary: false,
        dispatch_event_types: vec![],
        programs: vec!["DRAM".into()],
        communication_test: None,
        integration_test_notification: false,
        notification_communication_test: false,
        warnings: vec![],
    }
}

fn interval(start: i64, net_kwh: f64, battery_kwh: f64) -> Interval {
    Interval {
        meter_id: "m1".into(),
        start,
        energy: Some(Energy {
            import_wh: net_kwh * 1000.0,
            export_wh: 0.0,
            source: Source::Meter,
        }),
        battery_wh: battery_kwh * 1000.0,
        covered_ms: 900_000,
        battery_ms: 900_000,
        export_ms: 0,
        min_soc_pct: Some(50.0),
        open: false,
    }
}

#[test]
fn baseline_is_the_mean_of_ten_previous_non_event_days_and_delivery_is_judged() {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    let t0 = start.timestamp();
    // Day d before the event imported d kWh in both quarter hours; day 3 had an event.
    let mut ivs: Vec<Interval> = (1..=12)
        .flat_map(|d| [0, 900].map(|o| interval(t0 - d * 86_400 + o, d as f64, 0.0)))
        .collect();
    ivs.push(interval(t0, 1.0, 5.0));
    ivs.push(interval(t0 + 900, 1.2, 4.95));
    let day3 = (start - chrono::Duration::days(3)).date_naive();
    let event_days = HashSet::from([day3, start.date_naive()]);
    let ts = timeslot(start, 30);
    let input = Input {
        timeslot: &ts,
        meter_id: "m1",
        award_kw: Some(20.0),
        intervals: &ivs,
        event_days: &event_days,
        first_setpoint_lateness_ms: Some(4),
        dry_run: false,
        test_not_commanded: false,
        overlapping: &[],
    };
    let r = build(&input);
    assert_eq!(r.baseline_days, 10);
    // Days 1, 2, 4..=11: (1 + 2 + 4 + … + 11) / 10 = 6.3.
    let b = r.intervals[0].baseline_estimate_kwh.unwrap();
    assert!((b - 6.3).abs() < 1e-9, "{b}");
    assert_eq!(r.award_kwh, Some(10.0));
    assert!((r.delivered_kwh - 9.95).abs() < 1e-9);
    assert!(r.verdict.starts_with("MET:"), "{}", r.verdict);
    assert!(
        r.verdict.contains("first setpoint 4 ms late"),
        "{}",
        r.verdict
    );
    assert_eq!(r.partial_intervals, 0);
    assert!(!r.verdict.contains("approximate"), "{}", r.verdict);

    // A 5-minute event (a CAISO real-time one) inside the first quarter hour: the interval's
    // whole battery energy is all there is, and the verdict says it is approximate.
    let short = timeslot(start + chrono::Duration::minutes(5), 5);
    let r = build(&Input {
        timeslot: &short,
        ..input
    });
    assert_eq!((r.intervals.len(), r.partial_intervals), (1, 1));
    assert!(r.intervals[0].partial);
    assert!(
        r.verdict
            .contains("approximate: 1 interval(s) only partly inside the event"),
        "{}",
        r.verdict
    );

    // Without the second interval's data the verdict says so instead of judging.
    let fewer = &ivs[..ivs.len() - 1];
    let r = build(&Input {
        intervals: fewer,
        ..input
    });
    assert_eq!(r.gaps, 1);
    assert!(r.verdict.starts_with("INCOMPLETE DATA"), "{}", r.verdict);
}

/// The counters bridged a 5-minute outage of the readings: the site's energy is exact,
/// but what the battery delivered is 5 minutes short. Before, that was judged (here
/// SHORT) as if whole.
#[test]
fn an_interval_short_of_battery_readings_is_not_judged() {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    let t0 = start.timestamp();
    let mut ivs = vec![interval(t0, 1.0, 5.0), interval(t0 + 900, 1.2, 3.3)];
    let ts = timeslot(start, 30);
    let input = |ivs: &[Interval]| {
        build(&Input {
            timeslot: &ts,
            meter_id: "m1",
            award_kw: Some(20.0),
            intervals: ivs,
            event_days: &HashSet::new(),
            first_setpoint_lateness_ms: Some(4),
            dry_run: false,
            test_not_commanded: false,
            overlapping: &[],
        })
    };
    assert!(
        input(&ivs).verdict.starts_with("SHORT"),
        "{}",
        input(&ivs).verdict
    );
    ivs[1].covered_ms = 600_000;
    let r = input(&ivs);
    assert_eq!(r.intervals[1].data, "readings missing");
    assert!(r.verdict.starts_with("INCOMPLETE DATA"), "{}", r.verdict);
    // The grid read all along but the battery's power point did not (stuck, out of range):
    // the delivered energy is unknown, not zero. Before, this read MISSED.
    ivs[1].covered_ms = 900_000;
    ivs[1].battery_ms = 0;
    ivs[1].battery_wh = 0.0;
    let r = input(&ivs);
    assert_eq!(r.intervals[1].data, "readings missing");
    assert!(r.verdict.starts_with("INCOMPLETE DATA"), "{}", r.verdict);
}

/// Leap's integration test under the default dry-run policy: the battery was never asked
/// to move. Before, the verdict was "MISSED … 0.00 of 10.00 kWh", in the audit log too.
#[test]
fn a_dry_run_is_not_judged() {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    let t0 = start.timestamp();
    let ivs = vec![interval(t0, 1.0, 0.0), interval(t0 + 900, 1.2, 0.0)];
    let ts = timeslot(start, 30);
    let r = build(&Input {
        timeslot: &ts,
        meter_id: "m1",
        award_kw: Some(20.0),
        intervals: &ivs,
        event_days: &HashSet::new(),
        first_setpoint_lateness_ms: Some(4),
        dry_run: true,
        test_not_commanded: false,
        overlapping: &[],
    });
    assert!(r.verdict.starts_with("DRY RUN"), "{}", r.verdict);
}

/// SCENARIOS 3: a DRAM hour inside an ELRP afternoon on one meter. Interval data cannot
/// split the battery's energy between them, so each verdict says it is shared.
#[test]
fn an_overlapped_event_says_its_delivery_is_shared() {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    let t0 = start.timestamp();
    let ivs = vec![interval(t0, 1.0, 5.0), interval(t0 + 900, 1.2, 5.0)];
    let ts = timeslot(start, 30);
    let others = ["elrp-1".to_string()];
    let r = build(&Input {
        timeslot: &ts,
        meter_id: "m1",
        award_kw: Some(20.0),
        intervals: &ivs,
        event_days: &HashSet::new(),
        first_setpoint_lateness_ms: Some(4),
        dry_run: false,
        test_not_commanded: false,
        overlapping: &others,
    });
    assert!(
        r.verdict.contains("approximate: overlaps elrp-1"),
        "{}",
        r.verdict
    );
}
