//! The Modbus battery: a profile bound to one device. Connects lazily (a device that is
//! down at start must not stop the daemon), discovers the SunSpec map and picks, for each
//! reading and for control, the first alternative the device offers; this is redone after
//! every reconnect. Implements [`Battery`] for the control loop.

mod ops;

use super::DeviceError;
use super::client::{ModbusClient, SharedState};
use super::profile::{self, Addressing, ControlSpec, PowerSpec, Profile};
use super::regs::{self, ResolvedReg};
use super::sunspec::{self, SunSpecMap};
use crate::config::DeviceConfig;
use std::path::Path;
use std::time::Duration;

/// SPEC §2.13: scale factors (and the rest of the binding) are re-read at least this
/// often, not only after a reconnect: a device may change a scale factor at run time.
const REBIND_EVERY: Duration = Duration::from_secs(60);
/// How soon a binding that passed over a point for an exception that may pass (a meter
/// behind a gateway answering 0x0B for a while) is tried again: the point may answer by
/// then, and until it is bound the loop cannot read it even when the meter is back.
const REBIND_UNSURE: Duration = Duration::from_secs(5);

/// The registers a connected device was bound to (scale factors resolved), and when.
struct Binding {
    generation: u64,
    at: std::time::Instant,
    /// A point was passed over for an exception that may pass: rebind after `REBIND_UNSURE`.
    unsure: bool,
    soc: Option<ResolvedReg>,
    battery: Option<ResolvedReg>,
    grid: Option<ResolvedReg>,
    grid_import: Option<ResolvedReg>,
    grid_export: Option<ResolvedReg>,
    capacity_kwh: Option<f64>,
    max_charge_kw: Option<f64>,
    max_discharge_kw: Option<f64>,
    control: Result<Control, String>,
    /// The SunSpec chain as discovered (None: fixed addresses).
    map: Option<SunSpecMap>,
}

struct Control {
    label: String,
    enter: Vec<ResolvedReg>,
    leave: Vec<ResolvedReg>,
    reversion: Option<ResolvedReg>,
    power: Power,
}

#[derive(Clone)]
enum Power {
    Window {
        discharge: ResolvedReg,
        charge: ResolvedReg,
        full_scale_w: f64,
    },
    Watts(ResolvedReg),
    Grid(ResolvedReg),
}

enum BindFail {
    Device(DeviceError),
    Unfit(String),
}

impl From<DeviceError> for BindFail {
    fn from(e: DeviceError) -> Self {
        BindFail::Device(e)
    }
}

async fn need(
    c: &mut ModbusClient,
    addressing: Addressing,
    map: Option<&SunSpecMap>,
    s: &profile::RegSpec,
) -> Result<ResolvedReg, BindFail> {
    regs::resolve(c, addressing, map, s)
        .await?
        .ok_or_else(|| BindFail::Unfit(format!("device lacks {}", s.label())))
}

pub struct ModbusBattery {
    name: String,
    profile: Profile,
    cfg: DeviceConfig,
    client: ModbusClient,
    bound: Option<Binding>,
    /// The registers that hand the battery back, from the last successful binding: a
    /// release must not depend on a rebinding that a dead meter point can fail.
    last_leave: Option<Vec<ResolvedReg>>,
    /// The release registers of a control method a rebind replaced (a point of it read as
    /// unusable this time, so the next method in the profile fits): the battery may still
    /// be under that method's remote control. Written before the next command and with
    /// every release until one succeeds.
    replaced_leave: Vec<ResolvedReg>,
    /// The discharge bound (%) a charge/discharge window was last set to (None: unknown,
    /// then read from the device), to order the next two writes so the window is never
    /// empty between them. A release leaves the rates as they were.
    window_pct: Option<f64>,
}

/// Build the battery for `[devices.NAME]`. Loads and checks the profile now; connects on
/// first use.
pub fn open(
    name: &str,
    cfg: &DeviceConfig,
    devices_dir: &Path,
) -> Result<ModbusBattery, DeviceError> {
    let path = devices_dir.join(format!("{}.toml", cfg.profile));
    let profile = profile::load(&path).map_err(|e| DeviceError::Profile {
        device: name.to_string(),
        reason: e.to_string(),
    })?;
    if profile.template {
        return Err(DeviceError::Profile {
            device: name.to_string(),
            reason: format!(
                "{} is a template: copy it to devices/<vendor>.toml, fill in the vendor's registers, set `template = false` and point devices.{name}.profile at the copy",
                path.display()
            ),
        });
    }
    Ok(ModbusBattery::new(name, profile, cfg))
}

impl ModbusBattery {
    pub fn new(name: &str, profile: Profile, cfg: &DeviceConfig) -> Self {
        let addr = if cfg.host.contains(':') && !cfg.host.starts_with('[') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        let client = ModbusClient::new(
            name,
            &addr,
            cfg.unit_id,
            Duration::from_millis(cfg.timeout_ms),
        );
        if let Ok(mut s) = client.state().lock() {
            s.profile = cfg.profile.clone();
        }
        ModbusBattery {
            name: name.to_string(),
            profile,
            cfg: cfg.clone(),
            client,
            bound: None,
            last_leave: None,
            replaced_leave: Vec::new(),
            window_pct: None,
        }
    }

    /// Live connection state for status and metrics.
    pub fn state(&self) -> SharedState {
        self.client.state()
    }

    fn profile_err(&self, reason: String) -> DeviceError {
        DeviceError::Profile {
            device: self.name.clone(),
            reason,
        }
    }

    async fn bind(&mut self) -> Result<&Binding, DeviceError> {
        let fresh = self.client.is_connected()
            && self.bound.as_ref().is_some_and(|b| {
                let every = if b.unsure {
                    REBIND_UNSURE
                } else {
                    REBIND_EVERY
                };
                b.generation == self.client.generation() && b.at.elapsed() < every
            });
        if !fresh {
            self.bound = None;
            let b = self.discover_and_bind().await?;
            if let Ok(c) = &b.control {
                let points = |l: &[ResolvedReg]| -> Vec<(Option<u8>, u16)> {
                    l.iter().map(|r| (r.unit, r.addr)).collect()
                };
                if let Some(old) = self.last_leave.take()
                    && points(&old) != points(&c.leave)
                {
                    tracing::warn!(device = %self.name, now = %c.label,
                        "the control method changed at a rebind: the previous one's release registers are written before the next command");
                    for r in old {
                        // Only where the chain still has that point: a model that moved
                        // would put the write into another model's register.
                        if still_there(&r, b.map.as_ref())
                            && !points(&self.replaced_leave).contains(&(r.unit, r.addr))
                        {
                            self.replaced_leave.push(r);
                        }
                    }
                }
                self.last_leave = Some(c.leave.clone());
            }
            self.bound = Some(b);
        }
        Ok(self.bound.as_ref().expect("bound above"))
    }

    async fn discover_and_bind(&mut self) -> Result<Binding, DeviceError> {
        let addressing = self.profile.addressing;
        let map = match addressing {
            Addressing::Sunspec => {
                Some(sunspec::discover(&mut self.client, self.cfg.base_address).await?)
            }
            Addressing::Fixed => None,
        };
        let m = map.as_ref();
        if m.is_some_and(SunSpecMap::meters_ambiguous) {
            tracing::warn!(device = %self.name,
                "the SunSpec chain holds several devices with meters (models {:?}): which is the site's grid meter cannot be told, so no meter point is read and dispatches are not followed; give the site meter a fixed-address profile",
                m.map(SunSpecMap::ids).unwrap_or_default());
        }
        let c = &mut self.client;
        let read = self.profile.read.clone();
        let mut unsure = false;
        let u = &mut unsure;
        let soc = regs::resolve_first(c, addressing, m, &read.soc, u).await?;
        let battery = regs::resolve_first(c, addressing, m, &read.battery_power, u).await?;
        let grid = regs::resolve_first(c, addressing, m, &read.grid_power, u).await?;
        let grid_import =
            regs::resolve_first(c, addressing, m, &read.grid_import_energy, u).await?;
        let grid_export =
            regs::resolve_first(c, addressing, m, &read.grid_export_energy, u).await?;
        let capacity = regs::resolve_first(c, addressing, m, &read.capacity, u).await?;
        let max_ch = regs::resolve_first(c, addressing, m, &read.max_charge, u).await?;
        let max_dis = regs::resolve_first(c, addressing, m, &read.max_discharge, u).await?;
        let positive_kw =
            |v: Option<(ResolvedReg, f64)>, div: f64| v.map(|(_, x)| x / div).filter(|x| *x > 0.0);
        let max_charge_kw = positive_kw(max_ch, 1000.0).or(self.cfg.max_charge_kw);
        let max_discharge_kw = positive_kw(max_dis, 1000.0).or(self.cfg.max_discharge_kw);
        let control = self.first_control(m, max_charge_kw).await?;
        let bound = Binding {
            generation: self.client.generation(),
            at: std::time::Instant::now(),
            unsure,
            soc: soc.map(|x| x.0),
            battery: battery.map(|x| x.0),
            grid: grid.map(|x| x.0),
            grid_import: grid_import.map(|x| x.0),
            grid_export: grid_export.map(|x| x.0),
            capacity_kwh: positive_kw(capacity, 1000.0).or(self.cfg.capacity_kwh),
            max_charge_kw,
            max_discharge_kw,
            control,
            map: None,
        };
        self.publish(&bound, map.as_ref());
        Ok(Binding { map, ..bound })
    }

    /// The first of the profile's control methods the device offers, or why none fits.
    async fn first_control(
        &mut self,
        m: Option<&SunSpecMap>,
        max_charge_kw: Option<f64>,
    ) -> Result<Result<Control, String>, DeviceError> {
        let mut why = Vec::new();
        for spec in self.profile.control.clone() {
            match self.bind_control(m, &spec, max_charge_kw).await {
                Ok(ctl) => return Ok(Ok(ctl)),
                Err(BindFail::Unfit(reason)) => why.push(format!("{}: {reason}", spec.label)),
                Err(BindFail::Device(e)) => return Err(e),
            }
        }
        if why.is_empty() {
            return Ok(Err("the profile lists no control method".to_string()));
        }
        Ok(Err(why.join("; ")))
    }

    fn publish(&self, b: &Binding, map: Option<&SunSpecMap>) {
        let mut points: Vec<String> = Vec::new();
        for (what, r) in [
            ("soc", &b.soc),
            ("battery_power", &b.battery),
            ("grid_power", &b.grid),
            ("grid_import_energy", &b.grid_import),
            ("grid_export_energy", &b.grid_export),
        ] {
            points.push(format!(
                "{what}={}",
                r.as_ref().map_or("none".into(), |r| r.label.clone())
            ));
        }
        let control = match &b.control {
            Ok(c) => Some(c.label.clone()),
            Err(e) => {
                tracing::warn!(device = %self.name, reason = %e, "no usable control method");
                None
            }
        };
        tracing::info!(device = %self.name, control = control.as_deref().unwrap_or("none"), points = %points.join(", "), "device bound");
        if let Ok(mut s) = self.client.state().lock() {
            s.sunspec_base = map.map(|m| m.base);
            s.models = map.map(|m| m.ids()).unwrap_or_default();
            s.control = control;
            s.points = points;
        }
    }

    /// The registers that hand the battery back, of every control method the device offers,
    /// resolved without the reading points: for a release when a reading point does not
    /// answer and nothing was bound before (a fresh `leap-edge release` beside a meter that
    /// times out). Every method's, since which one a crashed daemon used is not known here.
    async fn leave_registers(&mut self) -> Result<Vec<ResolvedReg>, DeviceError> {
        let addressing = self.profile.addressing;
        let map = match addressing {
            Addressing::Sunspec => {
                Some(sunspec::discover(&mut self.client, self.cfg.base_address).await?)
            }
            Addressing::Fixed => None,
        };
        let mut leave = Vec::new();
        for spec in self.profile.control.clone() {
            let mut regs = Vec::new();
            for s in &spec.leave {
                match need(&mut self.client, addressing, map.as_ref(), s).await {
                    Ok(r) => regs.push(r),
                    Err(BindFail::Unfit(_)) => {
                        regs.clear();
                        break;
                    }
                    Err(BindFail::Device(e)) => return Err(e),
                }
            }
            leave.extend(regs);
        }
        if leave.is_empty() {
            return Err(self.profile_err(
                "cannot release the battery: no control method's release registers are on this device".into(),
            ));
        }
        Ok(leave)
    }

    /// `Err(Unfit)`: this control method does not fit the device (try the next one).
    async fn bind_control(
        &mut self,
        map: Option<&SunSpecMap>,
        spec: &ControlSpec,
        max_charge_kw: Option<f64>,
    ) -> Result<Control, BindFail> {
        let addressing = self.profile.addressing;
        let c = &mut self.client;
        let mut enter = Vec::new();
        for s in &spec.enter {
            enter.push(need(c, addressing, map, s).await?);
        }
        let mut leave = Vec::new();
        for s in &spec.leave {
            leave.push(need(c, addressing, map, s).await?);
        }
        let reversion = match &spec.reversion {
            Some(s) => Some(need(c, addressing, map, s).await?),
            None => None,
        };
        let power = match &spec.power {
            PowerSpec::PercentWindow {
                discharge,
                charge,
                reference,
            } => {
                let discharge = need(c, addressing, map, discharge).await?;
                let charge = need(c, addressing, map, charge).await?;
                // Not counted as unsure: without it the configured maximum stands in.
                let dev_w = regs::resolve_first(c, addressing, map, reference, &mut false)
                    .await?
                    .map(|x| x.1)
                    .filter(|w| *w > 0.0);
                let full_scale_w =
                    dev_w.or(max_charge_kw.map(|k| k * 1000.0)).ok_or_else(|| {
                        BindFail::Unfit(
                            "no reference power for 100 % (device reports none; set max_charge_kw)"
                                .into(),
                        )
                    })?;
                Power::Window {
                    discharge,
                    charge,
                    full_scale_w,
                }
            }
            PowerSpec::Watts { setpoint } => {
                Power::Watts(need(c, addressing, map, setpoint).await?)
            }
            PowerSpec::GridSetpoint { setpoint } => {
                Power::Grid(need(c, addressing, map, setpoint).await?)
            }
        };
        Ok(Control {
            label: spec.label.clone(),
            enter,
            leave,
            reversion,
            power,
        })
    }
}

/// Whether a register bound from an earlier discovery is still that point in `map` (the
/// chain now discovered): a SunSpec point ("124.StorCtl_Mod") at the same address, or any
/// fixed-address register.
fn still_there(r: &ResolvedReg, map: Option<&SunSpecMap>) -> bool {
    let Some(map) = map else { return true };
    r.label
        .split_once('.')
        .and_then(|(m, p)| sunspec::point(m.parse().ok()?, p))
        .and_then(|def| map.address(def))
        == Some(r.addr)
}
