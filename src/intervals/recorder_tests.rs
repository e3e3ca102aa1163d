use super::*;

/// 2026-11-29T00:00:00Z in ms.
const T0: i64 = 1_795_910_400_000;

/// A site importing `kw` steadily, with accumulators when `metered`.
fn sample(at_ms: i64, kw: f64, metered: bool) -> Sample {
    let wh = kw * (at_ms - T0) as f64 / 3600.0;
    Sample {
        at_ms,
        grid_kw: kw,
        battery_kw: Some(1.0),
        soc_pct: Some(80.0 - (at_ms - T0) as f64 / 1e6),
        imp_wh: metered.then_some(5_000.0 + wh),
        exp_wh: metered.then_some(10.0),
    }
}

fn run(r: &mut Recorder, from_s: i64, to_s: i64, kw: f64, metered: bool) -> Vec<Acc> {
    (from_s..to_s)
        .flat_map(|s| r.push(sample(T0 + s * 1000, kw, metered)))
        .collect()
}

#[test]
fn accumulators_give_the_counter_difference_between_boundaries() {
    let mut r = Recorder::default();
    let done = run(&mut r, 0, 1801, 4.0, true);
    assert_eq!(done.len(), 2);
    // Nothing is known before the first reading, even one on the boundary: a gap.
    assert_eq!(done[0].energy(), None);
    let e = done[1].energy().expect("second interval complete");
    assert_eq!(e.source, Source::Meter);
    assert!((e.import_wh - 1000.0).abs() < 1e-6, "{e:?}");
    assert_eq!(e.export_wh, 0.0);
    assert_eq!(done[1].start, T0 / 1000 + 900);
}

#[test]
fn power_is_integrated_and_marked_estimated() {
    let mut r = Recorder::default();
    let done = run(&mut r, -1, 901, 4.0, false);
    let e = done[1].energy().expect("complete");
    assert_eq!(e.source, Source::Estimated);
    assert!((e.import_wh - 1000.0).abs() < 1e-6, "{e:?}");
    assert!((done[1].battery_wh - 250.0).abs() < 1e-6);
}

/// Readings whose battery power was dropped (out of range, not implemented) still cover the
/// grid, but not the battery: its energy is known for that part only.
#[test]
fn battery_coverage_counts_only_readings_with_battery_power() {
    let mut r = Recorder::default();
    let done: Vec<Acc> = (-1..901)
        .flat_map(|s| {
            let mut x = sample(T0 + s * 1000, 4.0, false);
            if s >= 450 {
                x.battery_kw = None;
            }
            r.push(x)
        })
        .collect();
    let acc = &done[1];
    assert_eq!(acc.covered_ms, 900_000);
    assert!(
        (acc.battery_ms - 450_000).abs() <= 1000,
        "{}",
        acc.battery_ms
    );
    assert!(acc.energy().is_some(), "the grid's energy is still known");
}

#[test]
fn an_outage_leaves_gaps_and_never_fills_them() {
    for metered in [true, false] {
        let mut r = Recorder::default();
        let mut done = run(&mut r, -1, 300, 4.0, metered);
        // Meter silent from 00:05 to 00:50: 00:00, 00:15, 00:30 and 00:45 are unknown.
        done.extend(run(&mut r, 3000, 4501, 4.0, metered));
        let starts: Vec<_> = done.iter().map(|a| (a.start - T0 / 1000) / 60).collect();
        assert_eq!(starts, vec![-15, 0, 45, 60], "metered {metered}");
        assert_eq!(done[1].energy(), None);
        assert_eq!(done[2].energy(), None);
        let e = done[3].energy().expect("01:00 interval complete");
        assert!((e.import_wh - 1000.0).abs() < 1e-6);
    }
}

#[test]
fn a_restart_inside_an_interval_keeps_accumulator_energy_exact() {
    let mut r = Recorder::default();
    run(&mut r, -5, 400, 4.0, true);
    // The daemon restarts: the recorder resumes from what was stored, 200 s later.
    let stored = r.open.clone();
    let mut r = Recorder::resume(stored);
    let done = run(&mut r, 600, 901, 4.0, true);
    let e = done[0].energy().expect("exact across the restart");
    assert_eq!(e.source, Source::Meter);
    assert!((e.import_wh - 1000.0).abs() < 1e-6);
    // The same restart without accumulators loses 200 s of 900: a gap.
    let mut r = Recorder::default();
    run(&mut r, -5, 400, 4.0, false);
    let mut r = Recorder::resume(r.open.clone());
    assert_eq!(run(&mut r, 600, 901, 4.0, false)[0].energy(), None);
}

#[test]
fn a_short_restart_across_a_boundary_is_bridged_by_the_counters() {
    let mut r = Recorder::default();
    run(&mut r, -5, 890, 4.0, true);
    let mut r = Recorder::resume(r.open.clone());
    let done = run(&mut r, 920, 1801, 4.0, true);
    for a in &done {
        let e = a.energy().expect("both intervals exact");
        assert!((e.import_wh - 1000.0).abs() < 1e-6, "{e:?}");
    }
    assert_eq!(done.len(), 2);
}

#[test]
fn a_counter_reset_is_a_gap_not_negative_energy() {
    let mut r = Recorder::default();
    run(&mut r, -5, 1000, 4.0, true);
    // The meter is replaced at 00:16:40 and counts again from zero.
    let done: Vec<Acc> = (1000..1801)
        .flat_map(|t| {
            let mut s = sample(T0 + t * 1000, 4.0, true);
            s.imp_wh = Some(4.0 * (t - 1000) as f64 / 3.6);
            r.push(s)
        })
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].energy(), None);
}

/// A meter replaced mid-interval whose new counter starts below the old reading but ends
/// the interval above the start boundary's: the boundary difference looks plausible (389 Wh
/// instead of 1 kWh) yet is wrong, so the interval is a gap.
#[test]
fn a_counter_reset_inside_an_interval_is_a_gap_even_when_it_climbs_back() {
    let mut r = Recorder::default();
    run(&mut r, -5, 1000, 4.0, true);
    let done: Vec<Acc> = (1000..1801)
        .flat_map(|t| {
            let mut s = sample(T0 + t * 1000, 4.0, true);
            s.imp_wh = Some(5_500.0 + 4.0 * (t - 1000) as f64 / 3.6);
            r.push(s)
        })
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].energy(), None, "{:?}", done[0]);
}

/// A long control period (readings every 20 s, beyond the 10 s hold): the readings still
/// cover the interval, which would otherwise always be a gap on a site without counters.
#[test]
fn readings_a_long_control_period_apart_still_cover_the_interval() {
    let readings = |r: &mut Recorder| -> Vec<Acc> {
        (0..=92)
            .flat_map(|k| r.push(sample(T0 - 20_000 + k * 20_000, 4.0, false)))
            .collect()
    };
    let mut r = Recorder::default().with_period(std::time::Duration::from_secs(20));
    let done = readings(&mut r);
    let e = done[1].energy().expect("complete with the period's hold");
    assert!((e.import_wh - 1000.0).abs() < 1e-6, "{e:?}");
    let mut r = Recorder::default();
    assert_eq!(readings(&mut r)[1].energy(), None, "the 10 s hold alone");
}

/// A wall clock stepped back 300 s in the middle of a metered interval: the counters kept
/// rising in real time, so bridging as before put 1.33 kWh in a 1 kWh quarter hour, marked
/// exact. After `clock_stepped` that interval is a gap, and the next one is exact again.
#[test]
fn a_clock_step_back_leaves_a_gap_not_misplaced_energy() {
    let s = |wall_s: i64, real_s: i64| Sample {
        at_ms: T0 + wall_s * 1000,
        grid_kw: 4.0,
        battery_kw: Some(1.0),
        soc_pct: Some(80.0),
        imp_wh: Some(5_000.0 + 4.0 * real_s as f64 / 3.6),
        exp_wh: Some(10.0),
    };
    let record = |step: bool| {
        let mut r = Recorder::default();
        let mut done = Vec::new();
        for t in -5..600 {
            done.extend(r.push(s(t, t)));
        }
        if step {
            r.clock_stepped();
        }
        for t in 600..2102 {
            done.extend(r.push(s(t - 300, t)));
        }
        done
    };
    let at = |done: &[Acc], start: i64| {
        done.iter()
            .find(|a| a.start == T0 / 1000 + start)
            .and_then(Acc::energy)
    };
    let before = record(false);
    let misplaced = at(&before, 0).expect("bridged as exact");
    assert!((misplaced.import_wh - 1333.3).abs() < 1.0, "{misplaced:?}");
    let after = record(true);
    assert_eq!(at(&after, 0), None, "the stepped interval is a gap");
    let next = at(&after, 900).expect("the next interval is exact");
    assert!((next.import_wh - 1000.0).abs() < 1e-6, "{next:?}");
}

/// The same without counters (an estimated interval): before, a step back of 300 s at
/// 600 s into the interval integrated 600 s before it and 900 s after, and the interval
/// went out complete with 1.67 kWh of a 1 kWh quarter hour. Now only the readings after
/// the step count: a gap here. A step back past the interval's start lives it again whole,
/// and then only the readings after the step are in it.
#[test]
fn a_clock_step_back_does_not_count_estimated_time_twice() {
    let s = |wall_s: i64| sample(T0 + wall_s * 1000, 4.0, false);
    let record = |back_s: i64| {
        let mut r = Recorder::default();
        let mut done = Vec::new();
        for t in -5..600 {
            done.extend(r.push(s(t)));
        }
        r.clock_stepped();
        for t in 600..2102 {
            done.extend(r.push(s(t - back_s)));
        }
        done
    };
    let at = |done: &[Acc], start: i64| {
        done.iter()
            .find(|a| a.start == T0 / 1000 + start)
            .and_then(Acc::energy)
    };
    assert_eq!(at(&record(300), 0), None, "the stepped interval is a gap");
    let next = at(&record(300), 900).expect("the next interval is complete");
    assert!((next.import_wh - 1000.0).abs() < 1e-6, "{next:?}");
    let again = at(&record(700), 0).expect("lived again whole");
    assert!((again.import_wh - 1000.0).abs() < 1e-6, "{again:?}");
}

/// The clock runs 3 days ahead for a while, then NTP steps it back: the interval opened
/// 3 days ahead never happened. Recording goes on in the real quarter hours (the next one
/// closes complete, at its real time), and the future one is reported dropped so its
/// stored row goes too. Before, it took every reading until the clock caught up with it,
/// and no interval closed for 3 days, not even as a gap.
#[test]
fn a_step_back_after_a_step_ahead_records_the_real_quarter_hours_again() {
    let mut r = Recorder::default();
    run(&mut r, 0, 300, 4.0, true);
    let ahead = 3 * 86_400;
    r.clock_stepped();
    let closed = run(&mut r, ahead + 300, ahead + 310, 4.0, true);
    assert_eq!(closed.len(), 1, "the real interval closed at the step");
    let future = r.open.as_ref().unwrap().start;
    assert_eq!(future, T0 / 1000 + ahead);
    r.clock_stepped();
    let done = run(&mut r, 320, 1801, 4.0, true);
    assert_eq!(r.take_dropped(), Some(future));
    assert_eq!(r.take_dropped(), None, "once");
    let starts: Vec<i64> = done.iter().map(|a| a.start).collect();
    assert_eq!(starts, [T0 / 1000, T0 / 1000 + 900]);
    let e = done[1]
        .energy()
        .expect("the next real interval is complete");
    assert!((e.import_wh - 1000.0).abs() < 1e-6, "{e:?}");
}
