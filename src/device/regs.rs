//! Registers bound to a device: a profile's `RegSpec` resolved to an address, type and
//! scale (SunSpec points through discovery and their scale factors), plus the checked read
//! and the checked write (clamp, range-check, write, read back, compare).

use super::DeviceError;
use super::client::{Function, ModbusClient};
use super::codec::{self, RegType, WordOrder};
use super::profile::{Addressing, RegSpec};
use super::sunspec::{self, SunSpecMap};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResolvedReg {
    pub(crate) label: String,
    pub(crate) unit: Option<u8>,
    pub(crate) function: Function,
    pub(crate) addr: u16,
    pub(crate) ty: RegType,
    pub(crate) order: WordOrder,
    /// raw × scale = value in the canonical unit (before `negate`), with the scale factor
    /// as it was when bound.
    pub(crate) scale: f64,
    /// A SunSpec point's scale factor: read again with every read and before every write
    /// (SPEC §2.13), so a device that changes it live is never read or written 10× off.
    pub(crate) sf: Option<ScaleFactor>,
    pub(crate) negate: bool,
    /// SunSpec sentinels (0x8000, 0xFFFF, ...) mean "not implemented".
    pub(crate) sunspec: bool,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    pub(crate) value: Option<f64>,
    /// Read together and added (per-phase meters).
    pub(crate) plus: Vec<ResolvedReg>,
}

/// Bind a spec to the device. `Ok(None)`: the device does not offer it (model missing, too
/// short, or its scale factor unimplemented). Transport errors are `Err`.
pub(crate) async fn resolve(
    client: &mut ModbusClient,
    addressing: Addressing,
    map: Option<&SunSpecMap>,
    spec: &RegSpec,
) -> Result<Option<ResolvedReg>, DeviceError> {
    let Some(mut r) = resolve_one(client, addressing, map, spec).await? else {
        return Ok(None);
    };
    for extra in &spec.plus {
        match resolve_one(client, addressing, map, extra).await? {
            Some(x) => r.plus.push(x),
            None => return Ok(None),
        }
    }
    Ok(Some(r))
}

async fn resolve_one(
    client: &mut ModbusClient,
    addressing: Addressing,
    map: Option<&SunSpecMap>,
    spec: &RegSpec,
) -> Result<Option<ResolvedReg>, DeviceError> {
    let mut r = ResolvedReg {
        label: spec.label(),
        unit: spec.unit,
        function: spec.function,
        addr: 0,
        ty: spec.ty.unwrap_or(RegType::U16),
        order: spec.word_order,
        scale: spec.scale.unwrap_or(1.0),
        negate: spec.negate,
        sunspec: addressing == Addressing::Sunspec,
        min: spec.min,
        max: spec.max,
        value: spec.value,
        plus: Vec::new(),
        sf: None,
    };
    match addressing {
        Addressing::Fixed => {
            r.addr = spec.address.unwrap_or(0);
            Ok(Some(r))
        }
        Addressing::Sunspec => {
            let (Some(map), Some(model), Some(point)) = (map, spec.model, spec.point.as_deref())
            else {
                return Ok(None);
            };
            let Some(def) = sunspec::point(model, point) else {
                return Ok(None);
            };
            let Some(addr) = map.address(def) else {
                return Ok(None);
            };
            r.addr = addr;
            r.ty = def.ty;
            r.order = WordOrder::Big;
            r.function = Function::Holding;
            if let Some(sf_name) = def.sf {
                let Some(sf_def) = sunspec::point(model, sf_name) else {
                    return Ok(None);
                };
                let Some(sf_addr) = map.address(sf_def) else {
                    return Ok(None);
                };
                let w = client.read(r.unit, Function::Holding, sf_addr, 1).await?;
                let sf = ScaleFactor {
                    addr: sf_addr,
                    base: r.scale,
                };
                let Some(scale) = sf.scale(w[0]) else {
                    return Ok(None);
                };
                r.scale = scale;
                r.sf = Some(sf);
            }
            Ok(Some(r))
        }
    }
}

/// Where a point's SunSpec scale factor lives, and the profile's own multiplier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScaleFactor {
    pub(crate) addr: u16,
    pub(crate) base: f64,
}

/// Modbus reads at most 125 registers; SunSpec keeps a point and its scale factor in one
/// model, well within that.
const MAX_READ: u32 = 125;

impl ScaleFactor {
    /// The scale for this raw scale-factor word; `None` when unimplemented or implausible.
    fn scale(self, word: u16) -> Option<f64> {
        let sf = word as i16;
        (word != 0x8000 && (-10..=10).contains(&sf)).then(|| self.base * codec::pow10(sf))
    }

    /// The words of `r` and its scale, in one request when they are close (one snapshot
    /// of the device: a value never meets the other scale factor). `None`: unimplemented.
    async fn read_with(
        self,
        client: &mut ModbusClient,
        r: &ResolvedReg,
    ) -> Result<Option<(Vec<u16>, f64)>, DeviceError> {
        let n = r.ty.words();
        let lo = r.addr.min(self.addr);
        let end = (u32::from(r.addr) + u32::from(n)).max(u32::from(self.addr) + 1);
        let span = end - u32::from(lo);
        let count = span as u16;
        let together = if span <= MAX_READ && !client.refused_span(r.unit, lo, count) {
            match client.read(r.unit, r.function, lo, count).await {
                Ok(all) => {
                    let at = |a: u16| usize::from(a - lo);
                    let value = all[at(r.addr)..at(r.addr) + usize::from(n)].to_vec();
                    Some((value, all[at(self.addr)]))
                }
                // A device that refuses a register between the two: read them apart, from
                // now on for this connection when the refusal is about the registers
                // (illegal function, address or value), not a busy or absent device.
                Err(DeviceError::Exception { code, .. }) => {
                    if ["0x01", "0x02", "0x03"].iter().any(|c| code.starts_with(c)) {
                        client.note_refused_span(r.unit, lo, count);
                    }
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let (words, word) = match together {
            Some(both) => both,
            None => {
                let sf = client.read(r.unit, Function::Holding, self.addr, 1).await?;
                (client.read(r.unit, r.function, r.addr, n).await?, sf[0])
            }
        };
        Ok(self.scale(word).map(|scale| (words, scale)))
    }
}

/// The scale to write `r` with now: its scale factor read again (or the fixed one).
async fn scale_now(client: &mut ModbusClient, r: &ResolvedReg) -> Result<f64, DeviceError> {
    let Some(sf) = r.sf else {
        return Ok(r.scale);
    };
    let w = client.read(r.unit, Function::Holding, sf.addr, 1).await?;
    sf.scale(w[0]).ok_or_else(|| DeviceError::Io {
        device: client.device().to_string(),
        op: format!("read the scale factor of {}", r.label),
        reason: format!(
            "it now reads {:#06x} (not implemented or outside -10..=10); nothing written",
            w[0]
        ),
    })
}

/// Read a value in its canonical unit (with its `plus` registers added); `None` when the
/// device marks any part unimplemented.
pub(crate) async fn read_value(
    client: &mut ModbusClient,
    r: &ResolvedReg,
) -> Result<Option<f64>, DeviceError> {
    let Some(mut total) = read_single(client, r).await? else {
        return Ok(None);
    };
    for extra in &r.plus {
        match read_single(client, extra).await? {
            Some(v) => total += v,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

async fn read_single(
    client: &mut ModbusClient,
    r: &ResolvedReg,
) -> Result<Option<f64>, DeviceError> {
    let (words, scale) = match r.sf {
        Some(sf) => match sf.read_with(client, r).await? {
            Some(read) => read,
            None => return Ok(None),
        },
        None => (
            client
                .read(r.unit, r.function, r.addr, r.ty.words())
                .await?,
            r.scale,
        ),
    };
    if r.sunspec && codec::is_sunspec_unimplemented(&words, r.ty, r.order) {
        return Ok(None);
    }
    let raw = codec::decode(&words, r.ty, r.order).map_err(|e| DeviceError::Io {
        device: client.device().to_string(),
        op: format!("decode {}", r.label),
        reason: e.to_string(),
    })?;
    let v = raw * scale;
    Ok(Some(if r.negate { -v } else { v }))
}

/// First alternative the device offers and answers with an implemented value.
/// `unsure` is set when an alternative was passed over for an exception that may pass
/// (0x04 device failure, a gateway's 0x0A/0x0B): that point may be there after all, and
/// the binding should be tried again soon rather than hold the next alternative (or none)
/// for a minute.
pub(crate) async fn resolve_first(
    client: &mut ModbusClient,
    addressing: Addressing,
    map: Option<&SunSpecMap>,
    specs: &[RegSpec],
    unsure: &mut bool,
) -> Result<Option<(ResolvedReg, f64)>, DeviceError> {
    for spec in specs {
        let Some(r) = resolve(client, addressing, map, spec).await? else {
            continue;
        };
        match read_value(client, &r).await {
            Ok(Some(v)) => return Ok(Some((r, v))),
            // "Busy" says nothing about whether the point exists: binding fails and is
            // tried again, rather than the next alternative (another meter, another sign)
            // bound for a minute.
            Err(e) if e.is_busy() => return Err(e),
            Err(e @ DeviceError::Exception { .. }) => {
                *unsure |= e.is_passing() || e.is_device_failure();
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Clamp to the register's declared range, refuse what its type cannot hold, write, read
/// back and compare. Returns the value actually written (after clamping).
pub(crate) async fn write_value(
    client: &mut ModbusClient,
    r: &ResolvedReg,
    value: f64,
) -> Result<f64, DeviceError> {
    let device = client.device().to_string();
    let scale = scale_now(client, r).await?;
    let (lo, hi) = r.ty.raw_range();
    let (elo, ehi) = eng_range(r, scale, lo, hi);
    if !value.is_finite() {
        return Err(DeviceError::Range {
            device,
            point: r.label.clone(),
            value,
            min: elo,
            max: ehi,
        });
    }
    let clamped = value.clamp(r.min.unwrap_or(f64::MIN), r.max.unwrap_or(f64::MAX));
    if clamped != value {
        tracing::warn!(device = %device, point = %r.label, value, clamped, "value clamped to the register's range");
    }
    let signed = if r.negate { -clamped } else { clamped };
    let words = codec::encode(signed / scale, r.ty, r.order).map_err(|_| DeviceError::Range {
        device: device.clone(),
        point: r.label.clone(),
        value: clamped,
        min: elo,
        max: ehi,
    })?;
    // The error names the point and the value, not only raw words at an address: it goes
    // into the audit log's `refused` row and `status`, which technicians read.
    client
        .write(r.unit, r.addr, &words)
        .await
        .map_err(|e| naming(e, &format!("write {} = {clamped}", r.label)))?;
    let back = client
        .read(r.unit, r.function, r.addr, r.ty.words())
        .await?;
    if back != words {
        let show = |w: &[u16]| {
            codec::decode(w, r.ty, r.order)
                .map(|raw| format!("{}", raw * scale))
                .unwrap_or_else(|_| format!("{w:?}"))
        };
        return Err(DeviceError::ReadBack {
            device,
            point: r.label.clone(),
            wrote: show(&words),
            read: show(&back),
        });
    }
    Ok(clamped)
}

/// The engineering range a register can take (for error messages).
fn eng_range(r: &ResolvedReg, scale: f64, lo: f64, hi: f64) -> (f64, f64) {
    let (a, b) = (lo * scale, hi * scale);
    let (a, b) = if r.negate { (-b, -a) } else { (a, b) };
    let (a, b) = (a.min(b), a.max(b));
    (r.min.map_or(a, |m| m.max(a)), r.max.map_or(b, |m| m.min(b)))
}

/// `e` with `what` (the point and value) in front of its operation.
fn naming(e: DeviceError, what: &str) -> DeviceError {
    match e {
        DeviceError::Timeout { device, op, ms } => DeviceError::Timeout {
            device,
            op: format!("{what} ({op})"),
            ms,
        },
        DeviceError::Io { device, op, reason } => DeviceError::Io {
            device,
            op: format!("{what} ({op})"),
            reason,
        },
        DeviceError::Exception { device, op, code } => DeviceError::Exception {
            device,
            op: format!("{what} ({op})"),
            code,
        },
        other => other,
    }
}
