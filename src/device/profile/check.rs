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
                false,
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

fn check_control(p: &Profile, c: &ControlSpec, at: &str, out: &mut Vec<String>) {
    for (i, r) in c.enter.iter().enumerate() {
        check_reg(p.addressing, &format!("{at}.enter[{i}]"), r, true, out);
    }
    for (i, r) in c.leave.iter().enumerate() {
        check_reg(p.addressing, &format!("{at}.leave[{i}]"), r, true, out);
    }
    if c.leave.is_empty() && !matches!(c.power, PowerSpec::GridSetpoint { .. }) {
        out.push(format!(
            "{at}: `leave` is empty: the battery could not be released"
        ));
    }
    if let Some(r) = &c.reversion {
        check_reg(p.addressing, &format!("{at}.reversion"), r, false, out);
    }
    match &c.power {
        PowerSpec::PercentWindow {
            discharge,
            charge,
            reference,
        } => {
            check_reg(
                p.addressing,
                &format!("{at}.power.discharge"),
                discharge,
                false,
                out,
            );
            check_reg(
                p.addressing,
                &format!("{at}.power.charge"),
                charge,
                false,
                out,
            );
            for (i, r) in reference.iter().enumerate() {
                check_reg(
                    p.addressing,
                    &format!("{at}.power.reference[{i}]"),
                    r,
                    false,
                    out,
                );
            }
        }
        PowerSpec::Watts { setpoint } => check_reg(
            p.addressing,
            &format!("{at}.power.setpoint"),
            setpoint,
            false,
            out,
        ),
        PowerSpec::GridSetpoint { setpoint } => {
            check_reg(
                p.addressing,
                &format!("{at}.power.setpoint"),
                setpoint,
                false,
                out,
            );
            if p.read.grid_power.is_empty() || p.read.battery_power.is_empty() {
                out.push(format!(
                    "{at}: grid-setpoint control needs read.grid_power and read.battery_power"
                ));
            }
        }
    }
}

fn check_reg(addr: Addressing, at: &str, r: &RegSpec, write: bool, out: &mut Vec<String>) {
    match addr {
        Addressing::Sunspec => match (r.model, &r.point) {
            (Some(m), Some(pt)) => {
                match sunspec::point(m, pt) {
                    None => out.push(format!(
                        "{at}: SunSpec point {m}.{pt} is not one leap-edge knows"
                    )),
                    Some(d) if write && !d.writable => {
                        out.push(format!("{at}: SunSpec point {m}.{pt} is read-only"))
                    }
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
        check_reg(addr, &format!("{at}.plus[{i}]"), extra, false, out);
    }
    if write != r.value.is_some() {
        out.push(if write {
            format!("{at}: a write needs `value`")
        } else {
            format!("{at}: `value` only belongs in enter/leave writes")
        });
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
