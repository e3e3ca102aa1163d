//! The simulated site, one tick at a time: the battery follows its mode within power
//! limits and a ramp, SoC integrates power over capacity, grid = load − battery, and a
//! remote command that is not refreshed within its reversion timeout lapses.
//!
//! Normal mode is self-consumption: the battery covers the net site load (load − PV) down
//! to 0 kW grid, discharging for a deficit and charging from a PV surplus (within its
//! limits and 0–100 % SoC).
//! Remote control:
//! - model 124 with StorCtl_Mod ≠ 0: self-consumption inside the window
//!   [−InWRte %, +OutWRte %] of WChaMax (bit 0 activates the charge limit InWRte, bit 1 the
//!   discharge limit OutWRte). OutWRte = p, InWRte = −p pins the battery at p % discharge.
//!   Reverts (StorCtl_Mod := 0) InOutWRte_RvrtTms seconds after the last control write.
//! - model 704 with WSetEna = 1: hold WSet watts (WSetMod 1) or WSetPct % (WSetMod 0),
//!   positive = discharge. WSet is the inverter's AC output: with DC-coupled PV
//!   (`pv_coupling = "dc"`, a hybrid inverter) the battery makes up WSet less the PV. Reverts (WSetEna := WSetEnaRvrt) WSetRvrtTms seconds after the
//!   last control write.

use super::map::Image;
pub use crate::config::NormalMode;
use crate::config::PvCoupling;
use crate::config::SimConfig;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Self-consumption.
    Normal,
    Remote124,
    Remote704,
    /// Victron face: holding a non-zero ESS grid setpoint (register 2700).
    VictronSetpoint,
}

impl Mode {
    /// Words for the `leap-edge sim` state line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Remote124 => "remote (model 124)",
            Mode::Remote704 => "remote (model 704)",
            Mode::VictronSetpoint => "remote (Victron ESS setpoint)",
        }
    }
}

pub(crate) struct Physics {
    pub(crate) capacity_kwh: f64,
    pub(crate) max_kw: f64,
    pub(crate) ramp_kw_per_s: f64,
    pub(crate) soc_pct: f64,
    pub(crate) battery_kw: f64,
    pub(crate) target_kw: f64,
    pub(crate) load_kw: f64,
    /// On-site generation (kW, ≥ 0).
    pub(crate) pv_kw: f64,
    /// Where that generation connects: on the battery inverter's DC bus it is part of the
    /// inverter's AC output (model 103 W) and of a model 704 setpoint.
    pub(crate) coupling: PvCoupling,
    pub(crate) mode: Mode,
    pub(crate) last_124_write: Option<Instant>,
    pub(crate) last_704_write: Option<Instant>,
    pub(crate) reversions: u64,
    /// What the battery does in normal operation (`[sim] normal`).
    pub(crate) normal: NormalMode,
    /// The site meter's energy accumulators (SunSpec 203 TotWhImp/TotWhExp), Wh.
    pub(crate) import_wh: f64,
    pub(crate) export_wh: f64,
}

impl Physics {
    /// At start: idle battery at `initial_soc_pct`, in normal operation.
    pub(crate) fn initial(cfg: &SimConfig, load_kw: f64, pv_kw: f64) -> Physics {
        Physics {
            capacity_kwh: cfg.capacity_kwh,
            max_kw: cfg.max_power_kw,
            ramp_kw_per_s: cfg.ramp_kw_per_s,
            soc_pct: cfg.initial_soc_pct,
            battery_kw: 0.0,
            target_kw: 0.0,
            load_kw,
            pv_kw,
            coupling: cfg.pv_coupling,
            mode: Mode::Normal,
            last_124_write: None,
            last_704_write: None,
            reversions: 0,
            normal: cfg.normal,
            // A meter in service has counted before: start well away from zero.
            import_wh: 1_234_567.0,
            export_wh: 7_654.0,
        }
    }
}

impl Physics {
    pub(crate) fn grid_kw(&self) -> f64 {
        self.net_load_kw() - self.battery_kw
    }

    /// PV on the battery inverter's DC bus (0 when it has its own inverter).
    fn dc_pv_kw(&self) -> f64 {
        match self.coupling {
            PvCoupling::Ac => 0.0,
            PvCoupling::Dc => self.pv_kw,
        }
    }

    /// The battery inverter's AC output: the battery, plus DC-coupled PV.
    pub(crate) fn inverter_ac_kw(&self) -> f64 {
        self.battery_kw + self.dc_pv_kw()
    }

    /// What the site draws before the battery: consumption less generation.
    pub(crate) fn net_load_kw(&self) -> f64 {
        self.load_kw - self.pv_kw
    }

    /// Apply reversion timeouts, pick the mode and target, move the battery.
    /// `grid_setpoint_kw`: the Victron face's ESS grid setpoint, when it is enabled.
    pub(crate) fn step(
        &mut self,
        img: &mut Image,
        now: Instant,
        dt_s: f64,
        grid_setpoint_kw: Option<f64>,
    ) {
        self.revert_lapsed(img, now);
        let max = self.max_kw;
        let (mode, target) = if img.raw(704, "WSetEna") == Some(1) {
            let t = if img.raw(704, "WSetMod") == Some(0) {
                img.get(704, "WSetPct").unwrap_or(0.0) / 100.0 * max
            } else {
                img.get(704, "WSet").unwrap_or(0.0) / 1000.0
            };
            (Mode::Remote704, t - self.dc_pv_kw())
        } else if let Some(bits) = img.raw(124, "StorCtl_Mod").filter(|b| *b != 0) {
            let wmax = img.get(124, "WChaMax").unwrap_or(max * 1000.0) / 1000.0;
            let mut lo = -max;
            let mut hi = max;
            if bits & 1 != 0 {
                lo = -img.get(124, "InWRte").unwrap_or(100.0) / 100.0 * wmax;
            }
            if bits & 2 != 0 {
                hi = img.get(124, "OutWRte").unwrap_or(100.0) / 100.0 * wmax;
            }
            // An inverted window pins the battery at its discharge limit.
            let t = if lo > hi {
                hi
            } else {
                self.net_load_kw().clamp(lo, hi)
            };
            (Mode::Remote124, t)
        } else if let Some(sp) = grid_setpoint_kw.filter(|sp| *sp != 0.0) {
            (Mode::VictronSetpoint, self.net_load_kw() - sp)
        } else {
            let own = match self.normal {
                NormalMode::SelfConsumption => self.net_load_kw(),
                NormalMode::Idle => 0.0,
            };
            (Mode::Normal, own)
        };
        self.mode = mode;
        let mut target = target.clamp(-max, max);
        if (self.soc_pct <= 0.0 && target > 0.0) || (self.soc_pct >= 100.0 && target < 0.0) {
            target = 0.0;
        }
        self.target_kw = target;
        let step = self.ramp_kw_per_s * dt_s;
        self.battery_kw += (target - self.battery_kw).clamp(-step, step);
        // A full or empty battery stops at once, whatever the ramp.
        if (self.soc_pct <= 0.0 && self.battery_kw > 0.0)
            || (self.soc_pct >= 100.0 && self.battery_kw < 0.0)
        {
            self.battery_kw = 0.0;
        }
        // The meter counts what flowed over this step, import and export apart.
        let grid_wh = self.grid_kw() * 1000.0 * dt_s / 3600.0;
        if grid_wh > 0.0 {
            self.import_wh += grid_wh;
        } else {
            self.export_wh -= grid_wh;
        }
        if self.capacity_kwh > 0.0 {
            self.soc_pct -= self.battery_kw * dt_s / 3600.0 / self.capacity_kwh * 100.0;
            self.soc_pct = self.soc_pct.clamp(0.0, 100.0);
        }
    }

    fn revert_lapsed(&mut self, img: &mut Image, now: Instant) {
        let lapsed = |last: Option<Instant>, secs: Option<i64>| match (last, secs) {
            (Some(t), Some(s)) if s > 0 => now.duration_since(t).as_secs_f64() >= s as f64,
            _ => false,
        };
        if img.raw(124, "StorCtl_Mod").is_some_and(|b| b != 0)
            && lapsed(self.last_124_write, img.raw(124, "InOutWRte_RvrtTms"))
        {
            img.set_raw(124, "StorCtl_Mod", 0);
            self.reversions += 1;
            tracing::info!("sim: model 124 command not refreshed, back to self-consumption");
        }
        if img.raw(704, "WSetEna") == Some(1)
            && lapsed(self.last_704_write, img.raw(704, "WSetRvrtTms"))
        {
            let back = img.raw(704, "WSetEnaRvrt").unwrap_or(0);
            img.set_raw(704, "WSetEna", back);
            self.reversions += 1;
            tracing::info!("sim: model 704 setpoint not refreshed, reverted");
        }
        if let (Some(t), Some(s)) = (self.last_704_write, img.raw(704, "WSetRvrtTms")) {
            let rem = (s as f64 - now.duration_since(t).as_secs_f64()).max(0.0);
            img.set_raw(704, "WSetRvrtRem", rem.ceil() as i64);
        }
    }

    /// Publish the measured values into the register image.
    pub(crate) fn publish(&self, img: &mut Image) {
        img.set(103, "W", self.inverter_ac_kw() * 1000.0);
        img.set(203, "W", self.grid_kw() * 1000.0);
        // acc32 with TotWh_SF = 0: whole Wh, wrapping like a real counter.
        img.set_raw(
            203,
            "TotWhImp",
            (self.import_wh.floor() as i64) & 0xFFFF_FFFF,
        );
        img.set_raw(
            203,
            "TotWhExp",
            (self.export_wh.floor() as i64) & 0xFFFF_FFFF,
        );
        img.set(124, "ChaState", self.soc_pct);
        let st = if self.battery_kw > 0.05 {
            3
        } else if self.battery_kw < -0.05 {
            4
        } else {
            6
        };
        img.set_raw(124, "ChaSt", st);
        img.set(713, "SoC", self.soc_pct);
        img.set(
            713,
            "WHAvail",
            self.capacity_kwh * 1000.0 * self.soc_pct / 100.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (Physics, Image) {
        let mut img = Image::new(40000, true, true);
        img.set_raw(124, "WChaMax_SF", 0);
        img.set(124, "WChaMax", 10_000.0);
        img.set_raw(124, "InOutWRte_SF", 0);
        let p = Physics {
            capacity_kwh: 10.0,
            max_kw: 10.0,
            ramp_kw_per_s: 2.0,
            soc_pct: 50.0,
            battery_kw: 0.0,
            target_kw: 0.0,
            load_kw: 4.0,
            pv_kw: 0.0,
            coupling: PvCoupling::Ac,
            normal: NormalMode::SelfConsumption,
            mode: Mode::Normal,
            last_124_write: None,
            last_704_write: None,
            reversions: 0,
            import_wh: 0.0,
            export_wh: 0.0,
        };
        (p, img)
    }

    #[test]
    fn ramp_limits_each_step_and_soc_integrates() {
        let (mut p, mut img) = site();
        let now = Instant::now();
        p.step(&mut img, now, 1.0, None);
        assert_eq!(
            (p.mode, p.target_kw, p.battery_kw),
            (Mode::Normal, 4.0, 2.0)
        );
        p.step(&mut img, now, 1.0, None);
        assert_eq!(p.battery_kw, 4.0);
        // 2 kW then 4 kW for a second each from 10 kWh: 6 kJ·h/3600 = 1/600 of 10 kWh.
        assert!((p.soc_pct - (50.0 - 6.0 / 3600.0 / 10.0 * 100.0)).abs() < 1e-9);
        assert_eq!(p.grid_kw(), 0.0);
    }

    #[test]
    fn window_pins_the_battery_and_lapses_after_its_timeout() {
        let (mut p, mut img) = site();
        let t0 = Instant::now();
        img.set_raw(124, "StorCtl_Mod", 3);
        img.set(124, "OutWRte", -30.0);
        img.set(124, "InWRte", 30.0);
        img.set_raw(124, "InOutWRte_RvrtTms", 5);
        p.last_124_write = Some(t0);
        p.step(&mut img, t0, 10.0, None);
        assert_eq!((p.mode, p.battery_kw), (Mode::Remote124, -3.0));
        p.step(&mut img, t0 + std::time::Duration::from_secs(5), 10.0, None);
        assert_eq!((p.mode, p.reversions), (Mode::Normal, 1));
        assert_eq!(img.raw(124, "StorCtl_Mod"), Some(0));
    }

    #[test]
    fn self_consumption_charges_from_a_pv_surplus() {
        let (mut p, mut img) = site();
        p.pv_kw = 7.0;
        let now = Instant::now();
        for _ in 0..3 {
            p.step(&mut img, now, 1.0, None);
        }
        // 4 kW load, 7 kW PV: the battery takes the 3 kW surplus, the grid stays at 0.
        assert_eq!(
            (p.mode, p.battery_kw, p.grid_kw()),
            (Mode::Normal, -3.0, 0.0)
        );
        p.soc_pct = 100.0;
        p.step(&mut img, now, 1.0, None);
        assert_eq!(
            (p.battery_kw, p.grid_kw()),
            (0.0, -3.0),
            "a full battery exports"
        );
    }

    /// A hybrid inverter: the PV on its DC bus shows in its AC output (model 103 W), a
    /// model 704 WSet sets that AC output, and model 124 sets the battery alone.
    #[test]
    fn dc_coupled_pv_is_part_of_the_inverters_output() {
        let (mut p, mut img) = site();
        (p.pv_kw, p.coupling, p.ramp_kw_per_s) = (3.0, PvCoupling::Dc, 100.0);
        let now = Instant::now();
        img.set_raw(124, "StorCtl_Mod", 3);
        img.set(124, "OutWRte", 40.0);
        img.set(124, "InWRte", -40.0);
        p.step(&mut img, now, 1.0, None);
        p.publish(&mut img);
        // 4 kW of battery plus 3 kW of PV against 4 kW of load: 3 kW exported.
        assert_eq!((p.battery_kw, p.grid_kw()), (4.0, -3.0));
        assert_eq!(img.get(103, "W"), Some(7000.0));
        img.set_raw(124, "StorCtl_Mod", 0);
        img.set_raw(704, "WSetMod", 1);
        img.set_raw(704, "WSetEna", 1);
        img.set(704, "WSet", 4000.0);
        p.step(&mut img, now, 1.0, None);
        assert_eq!(
            (p.mode, p.battery_kw, p.grid_kw()),
            (Mode::Remote704, 1.0, 0.0)
        );
    }
}
