//! Shared helpers for the device tests: a simulator on 127.0.0.1:0 and a device config
//! pointing at it, using the profiles shipped in `devices/`.
#![allow(dead_code)]

use leap_edge::config::{DeviceConfig, SimConfig};
use leap_edge::device::{DeviceError, ModbusBattery};
use leap_edge::sim::{self, SimHandle, SimOptions};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::common::devices_dir;

pub fn sim_cfg() -> SimConfig {
    SimConfig {
        load: "constant:30".into(),
        capacity_kwh: 100.0,
        max_power_kw: 50.0,
        initial_soc_pct: 80.0,
        ramp_kw_per_s: 100.0,
        ..SimConfig::default()
    }
}

pub async fn start_sim_with(cfg: SimConfig, opts: SimOptions) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn_with(&cfg, listener, opts).unwrap()
}

pub async fn start_sim() -> SimHandle {
    start_sim_with(sim_cfg(), SimOptions::default()).await
}

pub fn device_cfg(profile: &str, addr: SocketAddr, timeout_ms: u64) -> DeviceConfig {
    DeviceConfig {
        profile: profile.into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        unit_id: 1,
        base_address: None,
        timeout_ms,
        reversion_secs: 30,
        max_discharge_kw: None,
        max_charge_kw: None,
        capacity_kwh: None,
    }
}

pub fn battery(addr: SocketAddr) -> ModbusBattery {
    leap_edge::device::open("bess", &device_cfg("sunspec", addr, 1000), &devices_dir()).unwrap()
}

pub use crate::common::eventually;

/// Retry an operation (the client pauses between failed connects) until it succeeds.
pub async fn retry<T>(
    limit: Duration,
    mut op: impl AsyncFnMut() -> Result<T, DeviceError>,
) -> Result<T, DeviceError> {
    let end = Instant::now() + limit;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
