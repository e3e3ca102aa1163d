//! Semantic checks of a parsed profile: every register is addressable under the profile's
//! addressing, SunSpec points exist (and are writable where written), writes carry values,
//! reads do not.

use super::{Addressing, ControlSpec, PowerSpec, Profile, RegSpec};
use crate::device::client::Function;
use crate::device::sunspec;

/// Semantic checks: every register is addressable under the profile's addressing, SunSpec
/// points exist, writes carry values, reads do not.
pub fn check(p: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    let reads = [
        ("soc", &p.read.soc),
        ("battery_power", &p.read.battery_power),
        ("grid_power", &p.read.grid_power),
        ("capacity", &p.read.capacity),
        ("max_charge", &p.read.max_charge),
        ("max_discharge", &p.read.max_discharge),
        ("grid_import_energy", &p.read.grid_import_energy),
        ("grid_export_energy", &p.read.grid_export_energy),
    ];
    for (name, list) in reads {
        for (i, r) in list.iter().enumerate() {
            check_reg(
                p.addressing,
                &format!("read.{name}[{i}]"),
                r,
                Use::Read,
                &mut out,
            );
        }
    }
    if p.read.soc.is_empty() {
        out.push("read.soc lists no register (the controller needs the state of charge)".into());
    }
    if p.control.is_empty() {
        out.push("no [[control]] method: the battery could never be commanded".into());
    }
    for (ci, c) in p.control.iter().enumerate() {
        let at = format!("control[{ci}] ({})", c.label);
        check_control(p, c, &at, &mut out);
    }
    out
}

/// How the controller uses a register, which decides what the profile must say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read for telemetry or a reference; no `value`.
    Read,
    /// An enter/leave write of the profile's fixed `value`.
    Fixed,
    /// Written by the controller with a value it computes (power setpoint, reversion
    /// timeout): must be writable, carries no `value`.
    Computed,
}

impl Use {
    fn written(self) -> bool {
        self != Use::Read
    }
}

fn check_control(p: &Profile, c: &ControlSpec, at: &str, out: &mut Vec<String>) {
    for (i, r) in c.enter.iter().enumerate() {
        check_reg(
            p.addressing,
            &format!("{at}.enter[{i}]"),
            r,
            Use::Fixed,
            out,
        );
    }
    for (i, r) in c.leave.iter().enumerate() {
        check_reg(
            p.addressing,
            &format!("{at}.leave[{i}]"),
            r,
            Use::Fixed,
            out,
        );
    }
    if c.leave.is_empty() {
        // A grid setpoint too: without a release write the device keeps regulating to the
        // last setpoint, computed for a dispatch, after the dispatch ends.
        out.push(format!(
            "{at}: `leave` is empty: the battery could not be released"
        ));
    }
    if let Some(r) = &c.reversion {
        // SPEC §2.10: the reversion timeout is written with every command.
        check_reg(
            p.addressing,
            &format!("{at}.reversion"),
            r,
            Use::Computed,
            out,
        );
    }
    check_power(p, &c.power, at, out);
}

/// The power registers of one control method: the setpoints are written, a percent
/// window's reference is read.
fn check_power(p: &Profile, power: &PowerSpec, at: &str, out: &mut Vec<String>) {
    let mut reg = |name: String, r: &RegSpec, u: Use| {
        check_reg(p.addressing, &format!("{at}.power.{name}"), r, u, out);
    };
    match power {
        PowerSpec::PercentWindow {
            discharge,
            charge,
            reference,
        } => {
            reg("discharge".into(), discharge, Use::Computed);
            reg("charge".into(), charge, Use::Computed);
            for (i, r) in reference.iter().enumerate() {
                reg(format!("reference[{i}]"), r, Use::Read);
            }
        }
        PowerSpec::Watts { setpoint } => reg("setpoint".into(), setpoint, Use::Computed),
        PowerSpec::GridSetpoint { setpoint } => {
            reg("setpoint".into(), setpoint, Use::Computed);
            if p.read.grid_power.is_empty() || p.read.battery_power.is_empty() {
                out.push(format!(
                    "{at}: grid-setpoint control needs read.grid_power and read.battery_power"
                ));
            }
        }
    }
}

fn check_reg(addr: Addressing, at: &str, r: &RegSpec, u: Use, out: &mut Vec<String>) {
    let write = u.written();
    match addr {
        Addressing::Sunspec => match (r.model, &r.point) {
            (Some(m), Some(pt)) => {
                match sunspec::point(m, pt) {
                    None => out.push(format!(
                        "{at}: SunSpec point {m}.{pt} is not one leap-edge knows"
                    )),
                    Some(d) if write && !d.writable => out.push(format!(
                        "{at}: SunSpec point {m}.{pt} is read-only, but the controller writes it: \
                         name a writable point"
                    )),
                    Some(_) => {}
                }
                if r.address.is_some() || r.ty.is_some() {
                    out.push(format!("{at}: give model+point OR address+type, not both"));
                }
            }
            _ => out.push(format!(
                "{at}: a SunSpec profile names registers by model and point"
            )),
        },
        Addressing::Fixed => {
            if r.address.is_none() || r.ty.is_none() {
                out.push(format!("{at}: a fixed profile needs address and type"));
            }
            if r.model.is_some() || r.point.is_some() {
                out.push(format!("{at}: model/point need addressing = \"sunspec\""));
            }
            if write && r.function == Function::Input {
                out.push(format!("{at}: input registers cannot be written"));
            }
        }
    }
    if !r.plus.is_empty() && write {
        out.push(format!("{at}: `plus` only belongs in reads"));
    }
    for (i, extra) in r.plus.iter().enumerate() {
        if !extra.plus.is_empty() {
            out.push(format!("{at}.plus[{i}]: `plus` cannot nest"));
        }
        check_reg(addr, &format!("{at}.plus[{i}]"), extra, Use::Read, out);
    }
    match (u, r.value.is_some()) {
        (Use::Fixed, false) => out.push(format!("{at}: a write needs `value`")),
        (Use::Read | Use::Computed, true) => {
            out.push(format!("{at}: `value` only belongs in enter/leave writes"))
        }
        _ => {}
    }
    if r.scale == Some(0.0) || r.scale.is_some_and(|s| !s.is_finite()) {
        out.push(format!("{at}: scale must be a finite non-zero number"));
    }
    if let (Some(lo), Some(hi)) = (r.min, r.max)
        && lo > hi
    {
        out.push(format!("{at}: min {lo} > max {hi}"));
    }
}
