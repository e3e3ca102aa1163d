//! The estimate in closed loop with the law's no-export rule, one control period a step,
//! on a modelled site whose battery moves at most `ramp` kW per period towards the
//! setpoint written the period before.

use super::*;

const MARGIN: f64 = 0.5;
const PERIOD: Duration = Duration::from_secs(1);

struct Site {
    load: f64,
    /// PV on the inverter's DC bus: part of the reading, not of the setpoint.
    dc_pv: f64,
    battery: f64,
    ramp: f64,
}

impl Site {
    fn grid(&self) -> f64 {
        self.load - self.dc_pv - self.battery
    }
    fn reading(&self) -> f64 {
        self.battery + self.dc_pv
    }
    /// The battery moves towards `setpoint` over one period.
    fn follow(&mut self, setpoint: f64) {
        let step = (setpoint - self.battery).clamp(-self.ramp, self.ramp);
        self.battery += step;
    }
}

/// Run `periods` control periods of "read, estimate, decide (no export, award 40 kW),
/// write". Returns the setpoints written and the grid after each period.
fn run(
    h: &mut HiddenGeneration,
    site: &mut Site,
    t: &mut Instant,
    periods: usize,
) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut written: Option<f64> = None;
    for _ in 0..periods {
        let hidden = match written {
            Some(w) => h.observe(w, site.reading(), *t),
            None => h.kw(),
        };
        let load = site.grid() + site.reading() - hidden;
        let setpoint = (load - MARGIN).min(40.0);
        h.wrote(setpoint, Some(site.reading()));
        site.follow(setpoint);
        written = Some(setpoint);
        *t += PERIOD;
        out.push((setpoint, site.grid()));
    }
    out
}

#[test]
fn dc_pv_is_learned_once_the_battery_has_settled() {
    let mut h = HiddenGeneration::default();
    let mut t = Instant::now();
    let mut site = Site {
        load: 30.0,
        dc_pv: 10.0,
        battery: 20.0,
        ramp: 100.0,
    };
    let trace = run(&mut h, &mut site, &mut t, 8);
    assert_eq!(h.kw(), 10.0);
    assert!((site.grid() - MARGIN).abs() < 1e-9, "{trace:?}");
    // Exported while measuring: the first three periods, not after.
    let exporting = trace.iter().filter(|(_, g)| *g < 0.0).count();
    assert_eq!(exporting, 3, "{trace:?}");
    // Clouds: the PV falls to 4 kW and the estimate follows once settled again.
    site.dc_pv = 4.0;
    run(&mut h, &mut site, &mut t, 8);
    assert!((h.kw() - 4.0).abs() < 1e-9, "{h:?}");
    assert!((site.grid() - MARGIN).abs() < 1e-9);
}

/// The review's case against the first version: a slow AC battery (2 kW a period), no PV,
/// the load falling from 20.5 to 5.5 kW. Readings taken while it ramps down must not be
/// taken for generation: the setpoint never goes below 0 (charging from the grid).
#[test]
fn a_lagging_battery_never_drives_it_into_charging_from_the_grid() {
    for dc_pv in [0.0, 10.0] {
        let mut h = HiddenGeneration::default();
        let mut t = Instant::now();
        let mut site = Site {
            load: 20.5 + dc_pv,
            dc_pv,
            battery: 20.0,
            ramp: 2.0,
        };
        run(&mut h, &mut site, &mut t, 20);
        site.load -= 15.0;
        let trace = run(&mut h, &mut site, &mut t, 30);
        let lowest = trace.iter().map(|(s, _)| *s).fold(f64::MAX, f64::min);
        assert!(
            lowest >= 5.0 - 1e-9,
            "pv {dc_pv}: setpoint fell to {lowest}: {trace:?}"
        );
        assert!((h.kw() - dc_pv).abs() < 1e-9, "pv {dc_pv}: {h:?}");
        assert!((site.grid() - MARGIN).abs() < 1e-9, "pv {dc_pv}: {trace:?}");
    }
}

#[test]
fn a_battery_without_dc_pv_leaves_it_at_zero() {
    let mut h = HiddenGeneration::default();
    let t = Instant::now();
    h.wrote(10.0, Some(10.0));
    // Tracking its setpoint, a little below it (conversion loss) or within noise.
    for (i, (w, m)) in [(10.0, 10.0), (10.0, 9.7), (10.0, 10.05), (10.0, 10.0)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(h.observe(w, m, t + PERIOD * i as u32), 0.0, "{w} {m}");
    }
}

#[test]
fn a_device_that_has_not_responded_is_not_settled() {
    let mut h = HiddenGeneration::default();
    let t = Instant::now();
    // Setpoint cut from 20 to 5; the device takes 5 s to react, reading 20 meanwhile:
    // steady, and 15 kW "over" its setpoint, but it has not moved at all.
    h.wrote(5.0, Some(20.0));
    for s in 0..5 {
        assert_eq!(h.observe(5.0, 20.0, t + PERIOD * s), 0.0);
    }
    // It moves, arrives, and holds: measured, and there is nothing over.
    for (s, r) in [(5, 12.0), (6, 5.0), (7, 5.0), (8, 5.0)] {
        h.observe(5.0, r, t + PERIOD * s);
    }
    assert_eq!(h.kw(), 0.0);
    // A refresh of the same setpoint keeps the write it repeats: still settled.
    h.wrote(5.0, Some(5.0));
    assert_eq!(h.observe(5.0, 5.0, t + PERIOD * 9), 0.0);
}

#[test]
fn an_interruption_or_a_new_command_starts_again() {
    let mut h = HiddenGeneration::default();
    let t = Instant::now();
    h.wrote(10.0, Some(10.0));
    for s in 0..3 {
        h.observe(10.0, 13.0, t + PERIOD * s);
    }
    assert_eq!(h.kw(), 3.0);
    h.interrupted();
    // The readings after a release do not settle with those before it, nor without a
    // write to compare with.
    for s in 3..7 {
        assert_eq!(h.observe(10.0, 10.0, t + PERIOD * s), 3.0);
    }
    h.reset();
    assert_eq!(h.kw(), 0.0);
}
