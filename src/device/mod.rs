//! Devices: battery inverters and site meters over Modbus TCP, described by profiles in
//! `devices/*.toml`. This file is the interface the control loop drives; the Modbus client,
//! profile loading and SunSpec discovery live in the sibling modules.

pub(crate) mod client;
pub(crate) mod codec;
pub(crate) mod driver;
pub mod probe;
pub mod profile;
pub(crate) mod regs;
pub(crate) mod sunspec;

pub use driver::{ModbusBattery, open};
pub use probe::{ProbeReport, probe};

use crate::seam::BoxFuture;
use serde::Serialize;

/// One reading of a site's battery and meter. Signs: battery discharge and grid import are
/// positive. Any value a device cannot give is `None`; the controller then falls back to
/// its conservative assumptions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Telemetry {
    pub soc_pct: Option<f64>,
    pub battery_kw: Option<f64>,
    pub grid_kw: Option<f64>,
    pub capacity_kwh: Option<f64>,
    pub max_discharge_kw: Option<f64>,
    pub max_charge_kw: Option<f64>,
    /// The site meter's energy accumulators, Wh (imported from / exported to the grid).
    pub grid_import_wh: Option<f64>,
    pub grid_export_wh: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    #[error("{device}: cannot connect to {addr}: {reason}")]
    Connect {
        device: String,
        addr: String,
        reason: String,
    },
    #[error("{device}: {op} timed out after {ms} ms (connection dropped, will reconnect)")]
    Timeout { device: String, op: String, ms: u64 },
    #[error("{device}: {op} failed: {reason}")]
    Io {
        device: String,
        op: String,
        reason: String,
    },
    #[error("{device}: {op}: Modbus exception {code}")]
    Exception {
        device: String,
        op: String,
        code: String,
    },
    #[error("{device}: wrote {wrote} to {point} but read back {read}")]
    ReadBack {
        device: String,
        point: String,
        wrote: String,
        read: String,
    },
    #[error("{device}: value {value} for {point} is outside {min}..={max}")]
    Range {
        device: String,
        point: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{device}: profile problem: {reason}")]
    Profile { device: String, reason: String },
}

impl DeviceError {
    /// The device answered but did not take what was written (an exception, a read-back
    /// that differs, a value out of range, a profile that cannot command it), as opposed to
    /// a connection that failed: writing the same again next period will not help.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Exception { .. } => !self.is_passing(),
            Self::ReadBack { .. } | Self::Range { .. } | Self::Profile { .. } => true,
            _ => false,
        }
    }

    /// A Modbus exception that says "not now" rather than "no": 0x05 acknowledge (still
    /// working), 0x06 server busy, 0x0A/0x0B a gateway's path or target not answering (an
    /// RTU device behind a TCP gateway, a passing bus fault). Tried again next period like
    /// a timeout, not treated as a refusal that hands the battery back for 30 s (unless
    /// the next write fails too: the control loop's `UNWRITTEN_LIMIT`).
    /// 0x05/0x06: the device is there and busy. Unlike a gateway's 0x0A/0x0B, which may
    /// also mean that nobody answers at that unit id (a point listed on a unit the site
    /// does not have), this says nothing about whether a point exists.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Exception { code, .. } => ["0x05", "0x06"].iter().any(|p| code.starts_with(p)),
            _ => false,
        }
    }

    /// 0x04 "server device failure": the device could not read or write that point now,
    /// which does not say it has no such point.
    pub(crate) fn is_device_failure(&self) -> bool {
        matches!(self, Self::Exception { code, .. } if code.starts_with("0x04"))
    }

    pub fn is_passing(&self) -> bool {
        match self {
            Self::Exception { code, .. } => ["0x05", "0x06", "0x0A", "0x0B"]
                .iter()
                .any(|p| code.starts_with(p)),
            _ => false,
        }
    }
}

/// What the control loop needs from a battery. Implementations put every call under a
/// timeout and reconnect after a failure; the loop just retries on its next period.
pub trait Battery: Send {
    fn name(&self) -> &str;

    /// Whatever a reading needs first and is not part of its age: connecting, discovery and
    /// scale factors (redone after a reconnect and once a minute). The control loop calls
    /// it before it starts timing a reading (SPEC §2.13 stale).
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), DeviceError>> {
        Box::pin(async { Ok(()) })
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Telemetry, DeviceError>>;

    /// Enter remote control (if needed) and hold `kw` (positive = discharge, negative =
    /// charge), with the device reverting to normal by itself after `reversion_secs` unless
    /// the command is written again.
    fn set_power(&mut self, kw: f64, reversion_secs: u32)
    -> BoxFuture<'_, Result<(), DeviceError>>;

    /// `set_power` from the control loop, with the reading it has just checked (SPEC
    /// §2.13). A device steered through a grid target (Victron ESS) works that target out
    /// from this reading: a fresh one, taken at the write, would pass no range check, and
    /// a glitch in it (a stuck register's −32 kW) would be written as the grid target the
    /// device then holds — an export the law never chose. Others ignore the reading.
    fn set_power_on(
        &mut self,
        kw: f64,
        reversion_secs: u32,
        _reading: &Telemetry,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        self.set_power(kw, reversion_secs)
    }

    /// Leave remote control: the battery returns to its own (self-consumption) mode.
    fn release(&mut self) -> BoxFuture<'_, Result<(), DeviceError>>;

    /// What `set_power(kw)` would hold the device to, in kW, given a reading just taken.
    /// It is `kw` itself unless the device is steered through a grid target (Victron ESS):
    /// that target is worked out from the site's load at write time, so it must be written
    /// again when the load moves, not only when `kw` does.
    fn held_target(&self, kw: f64, _reading: &Telemetry) -> f64 {
        kw
    }

    /// True when the device is steered through a grid target and holds the grid there
    /// itself (Victron ESS): its battery then moves while the grid stays put, by design.
    fn regulates_grid(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceError;

    #[test]
    fn a_busy_or_unreachable_target_is_not_a_refusal() {
        let e = |code: &str| DeviceError::Exception {
            device: "bess".into(),
            op: "write".into(),
            code: code.into(),
        };
        for passing in [
            "0x06 (ServerDeviceBusy)",
            "0x0B (GatewayTargetDevice)",
            "0x0A (GatewayPathUnavailable)",
            "0x05 (Acknowledge)",
        ] {
            assert!(
                !e(passing).is_refusal() && e(passing).is_passing(),
                "{passing}"
            );
        }
        for refused in [
            "0x01 (IllegalFunction)",
            "0x02 (IllegalDataAddress)",
            "0x03 (IllegalDataValue)",
            "0x04 (ServerDeviceFailure)",
        ] {
            assert!(
                e(refused).is_refusal() && !e(refused).is_passing(),
                "{refused}"
            );
        }
    }
}
