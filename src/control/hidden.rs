//! Generation the battery's power reading includes but its setpoint does not move (SPEC
//! §2.9 no export, on the sites partners have).
//!
//! On a hybrid inverter with PV on its DC bus, the reading a profile offers as battery
//! power (the inverter's AC output: SunSpec 701/103 W) is battery plus PV, while a storage
//! command (SunSpec 124 OutWRte/InWRte) sets the battery alone. The law's site load, grid
//! plus that reading, then counts the PV as load, and an event bounded by the site load
//! exports the PV less the margin for as long as it runs.
//!
//! The estimate is the reading's excess over the setpoint last written, taken when the
//! battery has settled: the same setpoint written and the reading unchanged since the
//! reading before. A battery still ramping to a new setpoint reads off it too, so between
//! settled readings the estimate only rises, and only by as much as the grid is below its
//! floor (the margin, or the export permit) right then: the site is exporting, and a
//! lower setpoint (more import) is the safe side. A ramp that lags above its setpoint
//! costs at most that much delivery until the battery settles; a ramp up never lowers
//! the estimate, which would export.
//! Where the reading is what the command sets (an AC setpoint such as SunSpec 704, or a
//! battery inverter without DC PV), the excess stays near 0 and nothing changes.

/// Readings this close are the same battery state (meter noise, rounding)…
const SETTLED_KW: f64 = 0.2;
/// …or this share of the reading, on large batteries.
const SETTLED_SHARE: f64 = 0.02;
/// An excess below this is noise or conversion loss, not generation.
const NOISE_KW: f64 = 0.1;

/// Per battery, kept while the loop runs: PV on a DC bus belongs to the site, so a later
/// event starts from what an earlier one learned.
#[derive(Debug, Default)]
pub(crate) struct HiddenGeneration {
    kw: f64,
    /// The setpoint written and the reading, at the previous observation.
    last: Option<(f64, f64)>,
}

impl HiddenGeneration {
    /// The current estimate, kW (≥ 0).
    pub(crate) fn kw(&self) -> f64 {
        self.kw
    }

    /// A reading taken while the device holds `written_kw` (discharge positive), with the
    /// grid `below_floor_kw` under the lowest import the command allows (0 when above it).
    /// Returns the new estimate.
    pub(crate) fn observe(
        &mut self,
        written_kw: f64,
        measured_kw: f64,
        below_floor_kw: f64,
    ) -> f64 {
        if !(written_kw.is_finite() && measured_kw.is_finite()) {
            self.last = None;
            return self.kw;
        }
        let excess = measured_kw - written_kw;
        let excess = if excess < NOISE_KW { 0.0 } else { excess };
        let settled = self.last.is_some_and(|(w, m)| {
            w == written_kw && (measured_kw - m).abs() <= SETTLED_KW.max(SETTLED_SHARE * m.abs())
        });
        if settled {
            self.kw = excess;
        } else if excess > self.kw && below_floor_kw > 0.0 {
            self.kw = excess.min(self.kw + below_floor_kw);
        }
        self.last = Some((written_kw, measured_kw));
        self.kw
    }

    /// Nothing held (released, dry run, a failed write or reading): the next reading has
    /// no setpoint to be compared with.
    pub(crate) fn no_setpoint(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulated hybrid's physics, one control period a step: the battery reaches the
    /// setpoint within the period; the reading is battery plus `pv`.
    struct Hybrid {
        load: f64,
        pv: f64,
        battery: f64,
    }

    impl Hybrid {
        fn grid(&self) -> f64 {
            self.load - self.pv - self.battery
        }
        fn reading(&self) -> f64 {
            self.battery + self.pv
        }
    }

    #[test]
    fn dc_pv_is_learned_from_the_first_reading_after_a_write() {
        let mut h = HiddenGeneration::default();
        let mut site = Hybrid {
            load: 30.0,
            pv: 10.0,
            battery: 20.0,
        };
        let margin = 0.5;
        let below = |s: &Hybrid| (margin - s.grid()).max(0.0);
        let mut written: Option<f64> = None;
        for _ in 0..6 {
            let hidden = match written {
                Some(w) => h.observe(w, site.reading(), below(&site)),
                None => h.kw(),
            };
            let setpoint = site.grid() + site.reading() - hidden - margin;
            site.battery = setpoint;
            written = Some(setpoint);
        }
        assert_eq!(h.kw(), 10.0);
        assert!((site.grid() - margin).abs() < 1e-9, "grid {}", site.grid());
        // Clouds: the PV falls to 4 kW. Once the reading has settled the estimate follows
        // it down, and the battery covers the 6 kW the PV no longer does.
        site.pv = 4.0;
        for _ in 0..3 {
            let hidden = h.observe(written.unwrap(), site.reading(), below(&site));
            let setpoint = site.grid() + site.reading() - hidden - margin;
            site.battery = setpoint;
            written = Some(setpoint);
        }
        assert!((h.kw() - 4.0).abs() < 1e-9, "{h:?}");
        assert!((site.grid() - margin).abs() < 1e-9, "grid {}", site.grid());
    }

    #[test]
    fn a_battery_without_dc_pv_leaves_it_at_zero() {
        let mut h = HiddenGeneration::default();
        // Tracking its setpoint, a little below it (conversion loss) or within noise.
        for (w, m) in [(10.0, 10.0), (10.0, 9.7), (10.0, 10.05), (-5.0, -5.0)] {
            assert_eq!(h.observe(w, m, 1.0), 0.0, "{w} {m}");
        }
    }

    #[test]
    fn a_lagging_ramp_raises_it_only_by_the_export_seen_until_it_settles() {
        let mut h = HiddenGeneration::default();
        h.observe(20.0, 20.0, 0.0);
        // The setpoint drops to 5; a slow battery still reads 12. With the grid at or
        // above its floor that is lag, not export: nothing taken.
        assert_eq!(h.observe(5.0, 12.0, 0.0), 0.0);
        // Still ramping (11 kW), the grid 2 kW under its floor: 2 kW taken, not the whole
        // 6 kW excess.
        assert_eq!(h.observe(5.0, 11.0, 2.0), 2.0);
        // Still moving (8 kW): not settled, the estimate holds.
        assert_eq!(h.observe(5.0, 8.0, 0.0), 2.0);
        // Arrived and unchanged from the reading before? 5.1 against 8: not yet.
        assert_eq!(h.observe(5.0, 5.1, 0.0), 2.0);
        assert_eq!(h.observe(5.0, 5.05, 0.0), 0.0);
        // A ramp up (reading below the setpoint) never raises it.
        assert_eq!(h.observe(15.0, 9.0, 3.0), 0.0);
    }

    #[test]
    fn no_setpoint_means_no_settled_comparison() {
        let mut h = HiddenGeneration::default();
        h.observe(10.0, 13.0, 0.0);
        h.observe(10.0, 13.0, 0.0);
        assert_eq!(h.kw(), 3.0);
        h.no_setpoint();
        // After a release the first reading cannot be "settled" against the old one.
        assert_eq!(h.observe(10.0, 10.0, 0.0), 3.0);
        assert_eq!(h.observe(10.0, 10.0, 0.0), 0.0);
    }
}
