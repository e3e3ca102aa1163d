//! What the control loop calls: read the site, command a setpoint (clamped, written, read
//! back, with the reversion timeout), release to normal.

use super::{ModbusBattery, Power};
use crate::device::regs::{self, ResolvedReg};
use crate::device::{Battery, DeviceError, Telemetry};
use crate::seam::BoxFuture;

impl ModbusBattery {
    pub(crate) async fn read_telemetry(&mut self) -> Result<Telemetry, DeviceError> {
        self.bind().await?;
        let b = self.bound.as_ref().expect("bound");
        let (soc, bat, grid) = (b.soc.clone(), b.battery.clone(), b.grid.clone());
        let (imp, exp) = (b.grid_import.clone(), b.grid_export.clone());
        let mut t = Telemetry {
            capacity_kwh: b.capacity_kwh,
            max_charge_kw: b.max_charge_kw,
            max_discharge_kw: b.max_discharge_kw,
            ..Telemetry::default()
        };
        if let Some(r) = soc {
            t.soc_pct = regs::read_value(&mut self.client, &r).await?;
        }
        if let Some(r) = bat {
            t.battery_kw = regs::read_value(&mut self.client, &r)
                .await?
                .map(|w| w / 1000.0);
        }
        if let Some(r) = grid {
            t.grid_kw = regs::read_value(&mut self.client, &r)
                .await?
                .map(|w| w / 1000.0);
        }
        // Issue 14: both accumulators or neither, so an interval never mixes sources.
        if let (Some(i), Some(e)) = (imp, exp) {
            let both = async {
                let i = regs::read_value(&mut self.client, &i).await?;
                let e = regs::read_value(&mut self.client, &e).await?;
                Ok::<_, DeviceError>(i.zip(e))
            };
            match both.await {
                // SunSpec acc32 reads 0 when not implemented; a site that has imported
                // nothing at all has no meter worth the name either.
                Ok(Some((i, e))) if i == 0.0 && e == 0.0 => {}
                Ok(Some((i, e))) => {
                    t.grid_import_wh = Some(i);
                    t.grid_export_wh = Some(e);
                }
                Ok(None) => {}
                // Control does not need the counters: a device refusing them leaves the
                // interval to its estimate instead of failing the reading (which would hand
                // the battery back). A lost connection still fails it.
                Err(err) if err.is_refusal() || err.is_passing() => {
                    tracing::debug!(device = %self.name, error = %err, "energy counters unreadable");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(t)
    }

    /// SPEC §2.10: the reversion timeout is written with every command so the device hands
    /// the battery back by itself if the daemon stops refreshing.
    pub async fn command(&mut self, kw: f64, reversion_secs: u32) -> Result<(), DeviceError> {
        self.command_on(kw, reversion_secs, None).await
    }

    /// `command`, with a grid target worked out from `basis` (grid and battery kW of a
    /// reading the caller has checked) instead of from a fresh reading.
    async fn command_on(
        &mut self,
        kw: f64,
        reversion_secs: u32,
        basis: Option<(f64, f64)>,
    ) -> Result<(), DeviceError> {
        if !kw.is_finite() {
            return Err(DeviceError::Range {
                device: self.name.clone(),
                point: "power".into(),
                value: kw,
                min: f64::MIN,
                max: f64::MAX,
            });
        }
        self.bind().await?;
        // Never two methods under remote control at once: the one a rebind replaced is
        // left first.
        self.leave_replaced().await;
        let b = self.bound.as_ref().expect("bound");
        let ctl = match &b.control {
            Ok(c) => c,
            Err(reason) => {
                return Err(self.profile_err(format!("cannot command the battery: {reason}")));
            }
        };
        let lo = -b.max_charge_kw.unwrap_or(f64::INFINITY);
        let hi = b.max_discharge_kw.unwrap_or(f64::INFINITY);
        let target = kw.clamp(lo, hi);
        if target != kw {
            tracing::warn!(device = %self.name, kw, clamped = target, "setpoint clamped to the battery's limits");
        }
        let reversion = ctl.reversion.clone();
        let enter = ctl.enter.clone();
        let discharge_label = match &ctl.power {
            Power::Window { discharge, .. } => Some(discharge.label.clone()),
            _ => None,
        };
        let power = self.power_writes(ctl.power.clone(), target, basis).await?;
        // The power first: when the device refuses it, the reversion timer is not re-armed
        // (its own countdown hands the battery back) and remote control is not entered.
        let window =
            discharge_label.and_then(|l| power.iter().find(|(r, _)| r.label == l).map(|(_, v)| *v));
        // Unknown while written: half a window may have been taken.
        self.window_pct = None;
        for (r, v) in power {
            regs::write_value(&mut self.client, &r, v).await?;
        }
        self.window_pct = window;
        // Before `enter`: a device never runs under remote control without its timeout.
        if let Some(r) = reversion {
            regs::write_value(&mut self.client, &r, reversion_secs as f64).await?;
        }
        for r in enter {
            regs::write_value(&mut self.client, &r, r.value.unwrap_or(0.0)).await?;
        }
        tracing::debug!(device = %self.name, kw = target, reversion_secs, "setpoint written and read back");
        Ok(())
    }

    /// The register writes that ask the bound profile's power control for `target_kw`
    /// (already within the battery's limits). A grid setpoint is worked out from `basis`
    /// when given, else from a reading taken now.
    async fn power_writes(
        &mut self,
        power: Power,
        target_kw: f64,
        basis: Option<(f64, f64)>,
    ) -> Result<Vec<(ResolvedReg, f64)>, DeviceError> {
        let b = self.bound.as_ref().expect("bound");
        let (grid, bat) = (b.grid.clone(), b.battery.clone());
        Ok(match power {
            Power::Window {
                discharge,
                charge,
                full_scale_w,
            } => {
                let pct = (target_kw * 1000.0 / full_scale_w * 100.0).clamp(-100.0, 100.0);
                // The window is [-charge, discharge]. Moving it down, the discharge bound
                // written first would fall below the old lower bound (an empty window a
                // device may refuse): the lower bound moves first then, the upper first
                // when it moves up. Not known (a start, a failed write): the device's
                // charge bound says where the lower bound is.
                let lower = match self.window_pct {
                    Some(last) => Some(last),
                    None => regs::read_value(&mut self.client, &charge)
                        .await
                        .ok()
                        .flatten()
                        .map(|c| -c),
                };
                if lower.is_some_and(|low| pct < low) {
                    vec![(charge, -pct), (discharge, pct)]
                } else {
                    vec![(discharge, pct), (charge, -pct)]
                }
            }
            Power::Watts(r) => vec![(r, target_kw * 1000.0)],
            Power::Grid(r) => {
                if let Some((g, bt)) = basis {
                    return Ok(vec![(r, (g + bt - target_kw) * 1000.0)]);
                }
                let (Some(g), Some(bt)) = (grid, bat) else {
                    return Err(self.profile_err(
                        "grid-setpoint control needs grid and battery power readings".into(),
                    ));
                };
                // A reading the device does not give (not implemented) is not 0 W: the
                // target would be off by the site's whole load.
                let g = regs::read_value(&mut self.client, &g).await?;
                let bt = regs::read_value(&mut self.client, &bt).await?;
                let (Some(g), Some(bt)) = (g, bt) else {
                    let what = if g.is_none() { "grid" } else { "battery" };
                    return Err(self.profile_err(format!(
                        "grid-setpoint control: no {what} reading at the write; not written"
                    )));
                };
                vec![(r, g + bt - target_kw * 1000.0)]
            }
        })
    }

    /// SPEC §2.13: a release must not wait for a rebinding (discovery and every point)
    /// that the fault it answers can fail slowly, one timeout per dead point: once the
    /// device was bound, its release registers are known. Before that, the binding's; and
    /// when it fails or fits no control method, every control method's.
    pub(crate) async fn release_control(&mut self) -> Result<(), DeviceError> {
        let leave = match self.last_leave.clone() {
            Some(leave) => leave,
            None => match self.bind().await.map(|b| {
                b.control
                    .as_ref()
                    .map(|c| c.leave.clone())
                    .map_err(Clone::clone)
            }) {
                Ok(Ok(leave)) => leave,
                Ok(Err(reason)) => {
                    tracing::warn!(device = %self.name, %reason,
                        "no control method fits, releasing through every control method's release registers");
                    self.leave_registers().await?
                }
                Err(e) => {
                    tracing::warn!(device = %self.name, error = %e,
                        "binding failed, releasing through every control method's release registers");
                    self.leave_registers().await?
                }
            },
        };
        for r in leave {
            regs::write_value(&mut self.client, &r, r.value.unwrap_or(0.0)).await?;
        }
        self.leave_replaced().await;
        tracing::info!(device = %self.name, "battery released to its own mode");
        Ok(())
    }

    /// Write the release registers of a control method a rebind replaced: once, and never
    /// at the cost of the command or release it comes with (the method that replaced it
    /// works; the old one reverts by itself when the timeout last written to it lapses).
    async fn leave_replaced(&mut self) {
        for r in std::mem::take(&mut self.replaced_leave) {
            match regs::write_value(&mut self.client, &r, r.value.unwrap_or(0.0)).await {
                Ok(_) => tracing::info!(device = %self.name, point = %r.label,
                    "the replaced control method is released"),
                Err(e) => tracing::warn!(device = %self.name, point = %r.label, error = %e,
                    "cannot release the replaced control method; it reverts by itself when the timeout last written to it lapses"),
            }
        }
    }
}

impl Battery for ModbusBattery {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self) -> BoxFuture<'_, Result<(), DeviceError>> {
        Box::pin(async { self.bind().await.map(|_| ()) })
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Telemetry, DeviceError>> {
        Box::pin(self.read_telemetry())
    }

    fn set_power(
        &mut self,
        kw: f64,
        reversion_secs: u32,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        Box::pin(self.command(kw, reversion_secs))
    }

    fn set_power_on(
        &mut self,
        kw: f64,
        reversion_secs: u32,
        reading: &Telemetry,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        let basis = reading.grid_kw.zip(reading.battery_kw);
        Box::pin(self.command_on(kw, reversion_secs, basis))
    }

    fn release(&mut self) -> BoxFuture<'_, Result<(), DeviceError>> {
        Box::pin(self.release_control())
    }

    /// A grid-setpoint device is written `grid + battery - kw` (`power_writes`).
    fn held_target(&self, kw: f64, reading: &Telemetry) -> f64 {
        match (self.regulates_grid(), reading.grid_kw, reading.battery_kw) {
            (true, Some(grid), Some(battery)) => grid + battery - kw,
            _ => kw,
        }
    }

    fn regulates_grid(&self) -> bool {
        self.bound
            .as_ref()
            .and_then(|b| b.control.as_ref().ok())
            .is_some_and(|c| matches!(c.power, Power::Grid(_)))
    }
}
