//! `leap-edge devices probe HOST[:PORT]`: the first thing a technician runs on site.
//! Discovers the SunSpec map, reads the identity (model 1) and shows which points the
//! controller would use with the shipped SunSpec profile, with their current values.

use super::client::{Function, ModbusClient};
use super::driver::ModbusBattery;
use super::profile;
use super::sunspec::{self, SunSpecMap};
use super::{DeviceError, Telemetry};
use crate::config::DeviceConfig;
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The SunSpec profile shipped in `devices/sunspec.toml`, built in so probing needs no files.
pub(crate) const SUNSPEC_PROFILE: &str = include_str!("../../devices/sunspec.toml");

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Identity {
    pub manufacturer: String,
    pub(crate) model: String,
    pub(crate) options: String,
    pub(crate) version: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbedModel {
    pub id: u16,
    pub(crate) name: &'static str,
    pub address: u16,
    pub(crate) length: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    pub address: String,
    pub unit_id: u8,
    pub sunspec_base: u16,
    pub models: Vec<ProbedModel>,
    pub identity: Option<Identity>,
    /// The `[[control]]` method leap-edge would use; `None`: none fits.
    pub control: Option<String>,
    /// `soc=713.SoC`, ...: the points read for each value.
    pub(crate) points: Vec<String>,
    pub(crate) telemetry: Option<Telemetry>,
    pub(crate) telemetry_error: Option<String>,
}

pub(crate) fn model_name(id: u16) -> &'static str {
    match id {
        1 => "common (identity)",
        101..=103 => "inverter",
        111..=113 => "inverter (float)",
        120 => "nameplate",
        121 => "basic settings",
        124 => "storage control",
        201..=204 => "meter",
        211..=214 => "meter (float)",
        701 => "DER AC measurement",
        702 => "DER capacity",
        704 => "DER AC controls",
        713 => "DER storage capacity",
        714 => "DER DC measurement",
        802 => "battery",
        _ => "",
    }
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` → (host, port); port defaults to 502.
pub(crate) fn split_host_port(s: &str) -> (String, u16) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        let port = p
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(502);
        return (h.to_string(), port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().unwrap_or(502)),
        _ => (s.to_string(), 502),
    }
}

pub async fn probe(
    host_port: &str,
    unit: u8,
    timeout: Duration,
) -> Result<ProbeReport, DeviceError> {
    let (host, port) = split_host_port(host_port);
    let cfg = DeviceConfig {
        profile: "sunspec".into(),
        host,
        port,
        unit_id: unit,
        base_address: None,
        timeout_ms: timeout.as_millis() as u64,
        reversion_secs: 60,
        max_discharge_kw: None,
        max_charge_kw: None,
        capacity_kwh: None,
    };
    let mut battery_addr = format!("{}:{}", cfg.host, cfg.port);
    if cfg.host.contains(':') {
        battery_addr = format!("[{}]:{}", cfg.host, cfg.port);
    }
    let mut client = ModbusClient::new("probe", &battery_addr, unit, timeout);
    let map = sunspec::discover(&mut client, None).await?;
    let identity = read_identity(&mut client, &map).await?;
    let profile =
        profile::parse_str(SUNSPEC_PROFILE, Path::new("devices/sunspec.toml")).map_err(|e| {
            DeviceError::Profile {
                device: "probe".into(),
                reason: e.to_string(),
            }
        })?;
    let mut battery = ModbusBattery::new("probe", profile, &cfg);
    let (telemetry, telemetry_error) = match battery.read_telemetry().await {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let state = battery
        .state()
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    Ok(ProbeReport {
        address: battery_addr,
        unit_id: unit,
        sunspec_base: map.base,
        models: map
            .models
            .iter()
            .map(|m| ProbedModel {
                id: m.id,
                name: model_name(m.id),
                address: m.addr,
                length: m.len,
            })
            .collect(),
        identity,
        control: state.control,
        points: state.points,
        telemetry,
        telemetry_error,
    })
}

async fn read_identity(
    client: &mut ModbusClient,
    map: &SunSpecMap,
) -> Result<Option<Identity>, DeviceError> {
    let Some(m) = map.model(1) else {
        return Ok(None);
    };
    // Mn..SN span offsets 2..66; some devices end model 1 there (L = 65, no DA/Pad).
    if m.len < 64 {
        return Ok(None);
    }
    let w = client.read(None, Function::Holding, m.addr + 2, 64).await?;
    Ok(Some(Identity {
        manufacturer: sunspec::decode_string(&w[0..16]),
        model: sunspec::decode_string(&w[16..32]),
        options: sunspec::decode_string(&w[32..40]),
        version: sunspec::decode_string(&w[40..48]),
        serial: sunspec::decode_string(&w[48..64]),
    }))
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "device {} unit {}: SunSpec map at {}",
            self.address, self.unit_id, self.sunspec_base
        )?;
        if let Some(i) = &self.identity {
            writeln!(
                f,
                "  manufacturer {}  model {}  serial {}  version {}",
                i.manufacturer, i.model, i.serial, i.version
            )?;
        }
        writeln!(f, "  models:")?;
        for m in &self.models {
            writeln!(
                f,
                "    {:>4} at {:>5} ({:>3} registers) {}",
                m.id, m.address, m.length, m.name
            )?;
        }
        // No points published: the binding stopped before it judged the control methods.
        let unbound = self.points.is_empty() && self.telemetry_error.is_some();
        match (&self.control, unbound) {
            (Some(c), _) => writeln!(f, "  control: {c}")?,
            (None, true) => writeln!(
                f,
                "  control: NOT KNOWN: the binding failed before the control methods were checked (the reading's error is below); probe again"
            )?,
            (None, false) => writeln!(
                f,
                "  control: NONE: no control method of devices/sunspec.toml fits (needs model 124 or 704)"
            )?,
        }
        writeln!(f, "  points: {}", self.points.join(", "))?;
        if let Some(t) = &self.telemetry {
            let show = |v: Option<f64>, unit: &str| {
                v.map_or("n/a".to_string(), |x| format!("{x:.2} {unit}"))
            };
            writeln!(
                f,
                "  now: SoC {}  battery {} (discharge +)  grid {} (import +)  capacity {}  max charge {}  max discharge {}",
                show(t.soc_pct, "%"),
                show(t.battery_kw, "kW"),
                show(t.grid_kw, "kW"),
                show(t.capacity_kwh, "kWh"),
                show(t.max_charge_kw, "kW"),
                show(t.max_discharge_kw, "kW"),
            )?;
        }
        if let Some(e) = &self.telemetry_error {
            writeln!(f, "  reading failed: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.5"), ("10.0.0.5".into(), 502));
        assert_eq!(split_host_port("10.0.0.5:1502"), ("10.0.0.5".into(), 1502));
        assert_eq!(split_host_port("[::1]:1502"), ("::1".into(), 1502));
        assert_eq!(split_host_port("::1"), ("::1".into(), 502));
    }

    /// A binding that failed (a point timed out) never judged the control methods: the
    /// report must not tell a technician that an inverter with model 124 cannot be driven.
    #[test]
    fn a_failed_binding_is_not_reported_as_no_control_method() {
        let mut r = ProbeReport {
            address: "10.0.0.5:502".into(),
            unit_id: 1,
            sunspec_base: 40000,
            models: vec![],
            identity: None,
            control: None,
            points: vec![],
            telemetry: None,
            telemetry_error: Some("probe: read 2 register(s) at 40100 timed out".into()),
        };
        let text = r.to_string();
        assert!(text.contains("control: NOT KNOWN"), "{text}");
        assert!(!text.contains("NONE"), "{text}");
        // Bound (its points published), no method fits, and the reading failed after.
        r.points = vec!["soc=124.ChaState".into()];
        assert!(r.to_string().contains("control: NONE"));
        r.telemetry_error = None;
        assert!(r.to_string().contains("control: NONE"));
    }
}
