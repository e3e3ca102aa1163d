//! A battery with simple physics for the loop's tests (the Modbus simulator is exercised
//! by the integration tests): SoC integrates power, grid = load − battery, the device
//! reverts to normal when not refreshed, and failures can be switched on.

use crate::device::{Battery, DeviceError, Telemetry};
use crate::seam::BoxFuture;
use std::sync::{Arc, Mutex};
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Read,
    Set { kw: f64, reversion_secs: u32 },
    Release,
}

#[derive(Debug)]
pub(crate) struct FakeState {
    pub(crate) soc_pct: f64,
    pub(crate) capacity_kwh: f64,
    pub(crate) max_kw: f64,
    pub(crate) load_kw: f64,
    pub(crate) battery_kw: f64,
    pub(crate) remote_until: Option<Instant>,
    pub(crate) reversions: u32,
    pub(crate) down: bool,
    /// Calls never answer (a device that accepted the connection and went silent).
    pub(crate) hang: bool,
    /// Setpoints get exception 0x03 (a device refusing the value); releases still work.
    pub(crate) refuse: bool,
    /// Releases get exception 0x04 (a device that also refuses the hand-back).
    pub(crate) refuse_release: bool,
    /// Setpoints get exception 0x06 (busy: not a refusal); readings and releases work.
    pub(crate) busy_writes: bool,
    /// Readings come without the site meter's power (a meter point that stopped answering).
    pub(crate) no_grid: bool,
    pub(crate) calls: Vec<(Instant, Call)>,
    updated: Instant,
}

impl FakeState {
    fn advance(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.remote_until
            && now >= until
        {
            // Integrate up to the reversion, then normal (idle) operation.
            self.integrate(until);
            self.remote_until = None;
            self.battery_kw = 0.0;
            self.reversions += 1;
        }
        self.integrate(now);
    }

    fn integrate(&mut self, to: Instant) {
        let h = (to - self.updated).as_secs_f64() / 3600.0;
        self.soc_pct -= self.battery_kw * h / self.capacity_kwh * 100.0;
        self.updated = to;
    }

    pub(crate) fn remote(&self) -> bool {
        self.remote_until.is_some_and(|u| Instant::now() < u)
    }

    pub(crate) fn writes(&self) -> Vec<(Instant, f64)> {
        self.calls
            .iter()
            .filter_map(|(t, c)| match c {
                Call::Set { kw, .. } => Some((*t, *kw)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn releases(&self) -> Vec<Instant> {
        self.calls
            .iter()
            .filter(|(_, c)| *c == Call::Release)
            .map(|(t, _)| *t)
            .collect()
    }
}

pub(crate) struct FakeBattery {
    pub(crate) state: Arc<Mutex<FakeState>>,
}

impl FakeBattery {
    pub(crate) fn new(soc_pct: f64, load_kw: f64) -> FakeBattery {
        FakeBattery {
            state: Arc::new(Mutex::new(FakeState {
                soc_pct,
                capacity_kwh: 100.0,
                max_kw: 50.0,
                load_kw,
                battery_kw: 0.0,
                remote_until: None,
                reversions: 0,
                down: false,
                hang: false,
                refuse: false,
                refuse_release: false,
                busy_writes: false,
                no_grid: false,
                calls: Vec::new(),
                updated: Instant::now(),
            })),
        }
    }

    fn op<T: Send + 'static>(
        &self,
        call: Call,
        f: impl FnOnce(&mut FakeState) -> T,
    ) -> BoxFuture<'static, Result<T, DeviceError>> {
        let r = self.apply(call, f);
        if self.state.lock().unwrap().hang {
            return Box::pin(std::future::pending());
        }
        Box::pin(async move { r })
    }

    fn apply<T>(&self, call: Call, f: impl FnOnce(&mut FakeState) -> T) -> Result<T, DeviceError> {
        let mut s = self.state.lock().unwrap();
        s.advance();
        if s.down {
            return Err(DeviceError::Connect {
                device: "fake".into(),
                addr: "127.0.0.1:1".into(),
                reason: "connection refused".into(),
            });
        }
        s.calls.push((Instant::now(), call));
        Ok(f(&mut s))
    }
}

impl Battery for FakeBattery {
    fn name(&self) -> &str {
        "fake"
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Telemetry, DeviceError>> {
        self.op(Call::Read, |s| Telemetry {
            soc_pct: Some(s.soc_pct),
            battery_kw: Some(s.battery_kw),
            grid_kw: (!s.no_grid).then_some(s.load_kw - s.battery_kw),
            capacity_kwh: Some(s.capacity_kwh),
            max_discharge_kw: Some(s.max_kw),
            max_charge_kw: Some(s.max_kw),
            ..Telemetry::default()
        })
    }

    fn set_power(
        &mut self,
        kw: f64,
        reversion_secs: u32,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        let (refuse, busy) = {
            let s = self.state.lock().unwrap();
            (s.refuse, s.busy_writes)
        };
        if refuse || busy {
            let code = if refuse {
                "0x03"
            } else {
                "0x06 (ServerDeviceBusy)"
            };
            return Box::pin(async {
                Err(DeviceError::Exception {
                    device: "fake".into(),
                    op: "write".into(),
                    code: code.into(),
                })
            });
        }
        self.op(Call::Set { kw, reversion_secs }, |s| {
            s.battery_kw = kw.clamp(-s.max_kw, s.max_kw);
            s.remote_until = Some(Instant::now() + Duration::from_secs(reversion_secs.into()));
        })
    }

    fn release(&mut self) -> BoxFuture<'_, Result<(), DeviceError>> {
        if self.state.lock().unwrap().refuse_release {
            return Box::pin(async {
                Err(DeviceError::Exception {
                    device: "fake".into(),
                    op: "release".into(),
                    code: "0x04".into(),
                })
            });
        }
        self.op(Call::Release, |s| {
            s.battery_kw = 0.0;
            s.remote_until = None;
        })
    }
}
