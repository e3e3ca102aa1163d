//! `[sim]`: the built-in site simulator's settings (`leap-edge sim`, `sim.autostart`).

use super::schema::{default_sunspec_base, default_unit_id};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The built-in site simulator (`leap-edge sim`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Start the simulator inside `leap-edge run` (development and dry runs only).
    #[serde(default)]
    pub autostart: bool,
    #[serde(default = "default_sim_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_sunspec_base")]
    pub base_address: u16,
    #[serde(default = "default_sim_capacity_kwh")]
    pub capacity_kwh: f64,
    #[serde(default = "default_sim_max_power_kw")]
    pub max_power_kw: f64,
    #[serde(default = "default_sim_initial_soc_pct")]
    pub initial_soc_pct: f64,
    /// Ramp rate in kW per second.
    #[serde(default = "default_sim_ramp_kw_per_s")]
    pub ramp_kw_per_s: f64,
    /// Site load: `constant:KW`, `steps:KW@SECS,KW@SECS,...` or `csv:PATH`.
    #[serde(default = "default_sim_load")]
    pub load: String,
    /// The battery's own behaviour when not remote-controlled: `self-consumption` (covers
    /// the load down to 0 kW grid, and charges from a PV surplus) or `idle` (stands by).
    #[serde(default)]
    pub normal: NormalMode,
    /// On-site PV generation, same forms as `load` (default none).
    #[serde(default = "default_sim_pv")]
    pub pv: String,
    /// Where the PV connects: `ac` (its own inverter, beside the battery's) or `dc` (on the
    /// battery inverter's DC bus, a hybrid inverter: its AC output, model 103 W, is battery
    /// plus PV, and a model 704 WSet sets that AC output; model 124 still sets the battery).
    #[serde(default)]
    pub pv_coupling: PvCoupling,
    /// Site-meter fault from a moment on, for tests and drills: `exception:CODE@SECS`,
    /// `timeout@SECS` or `value:KW@SECS` (the meter reads KW, saturated to its register).
    #[serde(default)]
    pub meter_fault: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            autostart: false,
            listen: default_sim_listen(),
            unit_id: default_unit_id(),
            base_address: default_sunspec_base(),
            capacity_kwh: default_sim_capacity_kwh(),
            max_power_kw: default_sim_max_power_kw(),
            initial_soc_pct: default_sim_initial_soc_pct(),
            ramp_kw_per_s: default_sim_ramp_kw_per_s(),
            load: default_sim_load(),
            normal: NormalMode::default(),
            pv: default_sim_pv(),
            pv_coupling: PvCoupling::default(),
            meter_fault: None,
        }
    }
}

/// The simulated battery's own behaviour when nobody controls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalMode {
    /// Covers the site load down to 0 kW grid import (a home battery without PV).
    #[default]
    SelfConsumption,
    /// Stands by at 0 kW (a commercial battery kept for peaks and dispatches).
    Idle,
}

/// Where the simulated PV connects (`[sim] pv_coupling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PvCoupling {
    /// Its own inverter: the battery inverter's output is the battery alone.
    #[default]
    Ac,
    /// The battery inverter's DC bus (a hybrid inverter).
    Dc,
}

pub(crate) fn default_sim_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1502))
}
pub(crate) fn default_sim_capacity_kwh() -> f64 {
    100.0
}
pub(crate) fn default_sim_max_power_kw() -> f64 {
    50.0
}
pub(crate) fn default_sim_initial_soc_pct() -> f64 {
    80.0
}
pub(crate) fn default_sim_ramp_kw_per_s() -> f64 {
    25.0
}
pub(crate) fn default_sim_load() -> String {
    "constant:30".into()
}
pub(crate) fn default_sim_pv() -> String {
    "constant:0".into()
}
