//! SPEC §2.9 no export and §2.13 blind is not safe: the battery's reading stays above its
//! setpoint while the site exports. The law's site load is grid + battery reading, which
//! is only right when the reading is the power the setpoint controls. Two real causes
//! break that, and the law cannot correct either from its readings:
//! - a hybrid inverter with PV on its DC bus, where the reading a SunSpec profile offers
//!   (the inverter's AC output, 701/103 W) is battery *plus* PV while a storage command
//!   (124) sets the battery alone: the PV is counted as load and exported for the whole
//!   event (on the simulator, 9.5 kW of 10 kW PV);
//! - a device that does not follow its setpoint down.
//!
//! Telling the PV from a battery that lags needs the battery's own power, which the
//! reading is not; an estimate from these readings alone was tried and ran away behind
//! slow batteries. So this only detects, and hands the battery back: when the reading has
//! stood steady above the setpoint, and the grid below its floor, for [`READINGS`]
//! readings over [`SPAN`], the command is not followed again until a new one comes (it
//! would export again the moment it resumed). A battery still ramping changes its reading
//! and does not count. The fix on such a site is a profile whose `battery_power` reads
//! the battery's own (DC) power.

use std::time::Duration;
use tokio::time::Instant;

/// The reading must be this far above the setpoint…
const OVER_KW: f64 = 0.5;
/// …or this share of it, on large batteries.
const OVER_SHARE: f64 = 0.05;
/// The grid must be this far below its floor (margin or export permit).
const EXPORT_KW: f64 = 0.5;
/// Readings within this of each other are one battery state (meter noise).
const STEADY_KW: f64 = 0.2;
const STEADY_SHARE: f64 = 0.02;
/// For at least this many readings…
pub(crate) const READINGS: u32 = 3;
/// …spanning at least this long.
pub(crate) const SPAN: Duration = Duration::from_secs(5);

struct Run {
    since: Instant,
    readings: u32,
    written_kw: f64,
    reading_kw: f64,
}

/// One reading of the battery under a command, as this check needs it.
pub(crate) struct Observed {
    /// The setpoint the device was last written (None: nothing held).
    pub(crate) written_kw: Option<f64>,
    pub(crate) reading_kw: Option<f64>,
    pub(crate) grid_kw: Option<f64>,
    /// The lowest grid power the command allows (the margin, or minus the permit).
    pub(crate) floor_kw: f64,
}

#[derive(Default)]
pub(crate) struct UnheldSetpoint {
    run: Option<Run>,
    /// Once found, for the rest of the command.
    found: Option<String>,
}

fn steady(a: f64, b: f64) -> bool {
    (a - b).abs() <= STEADY_KW.max(STEADY_SHARE * b.abs())
}

impl UnheldSetpoint {
    /// Why the command must not be followed, or None.
    pub(crate) fn observe(&mut self, o: &Observed, at: Instant) -> Option<String> {
        if self.found.is_some() {
            return self.found.clone();
        }
        let (Some(w), Some(r), Some(g)) = (o.written_kw, o.reading_kw, o.grid_kw) else {
            self.run = None;
            return None;
        };
        let over = r - w > OVER_KW.max(OVER_SHARE * w.abs());
        let exporting = o.floor_kw - g > EXPORT_KW;
        if !(over && exporting) {
            self.run = None;
            return None;
        }
        match &mut self.run {
            Some(run) if run.written_kw == w && steady(r, run.reading_kw) => {
                run.readings += 1;
                run.reading_kw = r;
            }
            _ => {
                self.run = Some(Run {
                    since: at,
                    readings: 1,
                    written_kw: w,
                    reading_kw: r,
                });
                return None;
            }
        }
        let run = self.run.as_ref()?;
        if run.readings < READINGS || at.saturating_duration_since(run.since) < SPAN {
            return None;
        }
        self.found = Some(format!(
            "battery reads {r:.1} kW against its setpoint {w:.1} kW while the grid is at {g:.1} kW, under its floor {:.1} kW: its reading includes power the setpoint does not control (PV on a hybrid inverter's DC bus?) or it does not follow its setpoint; not followed again in this command (a hybrid needs a profile whose battery_power is the battery's own power)",
            o.floor_kw
        ));
        self.found.clone()
    }

    /// A new command: start again.
    pub(crate) fn reset(&mut self) {
        self.run = None;
        self.found = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn seen(w: f64, r: f64, g: f64) -> Observed {
        Observed {
            written_kw: Some(w),
            reading_kw: Some(r),
            grid_kw: Some(g),
            floor_kw: 0.5,
        }
    }

    #[test]
    fn a_steady_excess_while_exporting_is_found_and_kept_for_the_command() {
        let t0 = Instant::now();
        let mut u = UnheldSetpoint::default();
        // Hybrid: setpoint 29.5, reading 39.5 (10 kW DC PV), grid −9.5.
        for s in 0..5 {
            assert_eq!(u.observe(&seen(29.5, 39.5, -9.5), at(t0, s)), None, "{s} s");
        }
        let why = u
            .observe(&seen(29.5, 39.5, -9.5), at(t0, 5))
            .expect("found");
        assert!(
            why.contains("39.5 kW against its setpoint 29.5 kW"),
            "{why}"
        );
        // Handed back, nothing held: still not followed in this command.
        let idle = Observed {
            written_kw: None,
            ..seen(0.0, 30.0, 0.0)
        };
        assert!(u.observe(&idle, at(t0, 6)).is_some());
        u.reset();
        assert_eq!(u.observe(&idle, at(t0, 7)), None);
    }

    #[test]
    fn a_ramp_a_tracking_battery_or_import_is_not() {
        let t0 = Instant::now();
        // Ramping down towards 5 kW at 2 kW a second while the site exports.
        let mut u = UnheldSetpoint::default();
        for s in 0..8 {
            let r = 20.0 - 2.0 * s as f64;
            assert_eq!(u.observe(&seen(5.0, r, 5.5 - r), at(t0, s)), None);
        }
        // At its setpoint, exporting through AC PV it cannot absorb: not this.
        let mut u = UnheldSetpoint::default();
        for s in 0..8 {
            assert_eq!(u.observe(&seen(-5.0, -5.0, -3.0), at(t0, s)), None);
        }
        // Above its setpoint but the site imports: no export to stop.
        let mut u = UnheldSetpoint::default();
        for s in 0..8 {
            assert_eq!(u.observe(&seen(-7.5, -4.0, 4.0), at(t0, s)), None);
        }
    }
}
