//! The simulator's register image: a SunSpec map (`SunS`, models 1, 103, 124, 704, 713,
//! 203, end marker) laid out from a base address, with typed access to points by model
//! and name through the same point table the driver uses.

use super::SimOptions;
use crate::config::SimConfig;
use crate::device::codec::{self, RegType, WordOrder};
use crate::device::sunspec::{self, END, MARKER, ModelEntry, SunSpecMap};

/// Model id and length L (registers after ID and L), from the SunSpec JSON.
const MODELS: [(u16, u16); 6] = [
    (1, 66),
    (103, 50),
    (124, 24),
    (704, 65),
    (713, 7),
    (203, 105),
];

pub(crate) struct Image {
    pub(crate) map: SunSpecMap,
    regs: Vec<u16>,
}

impl Image {
    /// `with_124` / `with_704` leave a control model out, to exercise the driver's fallback.
    pub(crate) fn new(base: u16, with_124: bool, with_704: bool) -> Image {
        let mut regs = vec![MARKER[0], MARKER[1]];
        let mut models = Vec::new();
        for (id, len) in MODELS {
            if (id == 124 && !with_124) || (id == 704 && !with_704) {
                continue;
            }
            models.push(ModelEntry {
                id,
                addr: base.wrapping_add(regs.len() as u16),
                len,
            });
            regs.push(id);
            regs.push(len);
            regs.extend(std::iter::repeat_n(0u16, len as usize));
        }
        regs.extend([END, 0]);
        Image {
            map: SunSpecMap { base, models },
            regs,
        }
    }

    /// The image at start: identity strings, scale factors sized to the configured
    /// powers (`max_site_kw`: the largest |W| the meter can see), nameplate ratings.
    pub(crate) fn initial(cfg: &SimConfig, opts: SimOptions, max_site_kw: f64) -> Image {
        let mut img = Image::new(cfg.base_address, opts.model_124, opts.model_704);
        img.set_string(1, 2, 16, "leap-edge");
        img.set_string(1, 18, 16, "site-simulator");
        img.set_string(1, 42, 8, env!("CARGO_PKG_VERSION"));
        img.set_string(1, 50, 16, "SIM-0001");
        img.set_raw(1, "DA", cfg.unit_id as i64);
        let w_sf = sf_for(max_site_kw * 1000.0);
        img.set_raw(103, "W_SF", w_sf as i64);
        img.set_raw(203, "W_SF", w_sf as i64);
        img.set_raw(203, "TotWh_SF", 0);
        let wmax_sf = sf_for(cfg.max_power_kw * 1000.0);
        img.set_raw(124, "WChaMax_SF", wmax_sf as i64);
        img.set(124, "WChaMax", cfg.max_power_kw * 1000.0);
        img.set_raw(124, "ChaState_SF", -1);
        img.set_raw(124, "MinRsvPct_SF", 0);
        img.set_raw(124, "InOutWRte_SF", -2);
        img.set(124, "OutWRte", 100.0);
        img.set(124, "InWRte", 100.0);
        img.set_raw(
            704,
            "WSet_SF",
            sf_for(cfg.max_power_kw * 1000.0 * 1.5) as i64,
        );
        // Tenths of a percent, as inverters commonly report it.
        img.set_raw(704, "WSetPct_SF", -1);
        img.set_raw(704, "WSetMod", 1);
        let wh_sf = sf_for(cfg.capacity_kwh * 1000.0);
        img.set_raw(713, "WH_SF", wh_sf as i64);
        img.set_raw(713, "Pct_SF", -1);
        img.set(713, "WHRtg", cfg.capacity_kwh * 1000.0);
        img.set(713, "SoH", 100.0);
        img
    }

    fn index(&self, addr: u16, count: u16) -> Option<std::ops::Range<usize>> {
        let start = addr.checked_sub(self.map.base)? as usize;
        let end = start + count as usize;
        (end <= self.regs.len() && count > 0).then_some(start..end)
    }

    pub(crate) fn read(&self, addr: u16, count: u16) -> Option<Vec<u16>> {
        self.index(addr, count).map(|r| self.regs[r].to_vec())
    }

    pub(crate) fn write_raw(&mut self, addr: u16, words: &[u16]) -> bool {
        match self.index(addr, words.len() as u16) {
            Some(r) => {
                self.regs[r].copy_from_slice(words);
                true
            }
            None => false,
        }
    }

    /// The writable point covering `addr`, if any.
    pub(crate) fn writable_point_at(&self, addr: u16) -> Option<&'static sunspec::PointDef> {
        sunspec::POINTS.iter().find(|d| {
            d.writable
                && self
                    .map
                    .address(d)
                    .is_some_and(|a| addr >= a && addr < a + d.ty.words())
        })
    }

    fn loc(&self, model: u16, name: &str) -> Option<(u16, &'static sunspec::PointDef)> {
        let d = sunspec::point(model, name)?;
        Some((self.map.address(d)?, d))
    }

    fn sf(&self, d: &sunspec::PointDef) -> f64 {
        d.sf.and_then(|n| self.loc(d.model, n))
            .and_then(|(a, _)| self.read(a, 1))
            .map_or(1.0, |w| codec::pow10(w[0] as i16))
    }

    /// A point's value with its scale factor applied; `None` when the model is absent.
    pub(crate) fn get(&self, model: u16, name: &str) -> Option<f64> {
        let (a, d) = self.loc(model, name)?;
        let w = self.read(a, d.ty.words())?;
        let raw = codec::decode(&w, d.ty, WordOrder::Big).ok()?;
        Some(raw * self.sf(d))
    }

    /// Store a value (scaled by the point's scale factor, saturated to its type).
    pub(crate) fn set(&mut self, model: u16, name: &str, value: f64) {
        let Some((a, d)) = self.loc(model, name) else {
            return;
        };
        let (lo, hi) = d.ty.raw_range();
        let raw = (value / self.sf(d)).clamp(lo, hi);
        if let Ok(w) = codec::encode(raw, d.ty, WordOrder::Big) {
            self.write_raw(a, &w);
        }
    }

    /// Change a scale factor as a device does live: every point it scales keeps its value,
    /// stored again under the new factor in the same step.
    pub(crate) fn rescale(&mut self, model: u16, sf_name: &str, sf: i16) {
        let scaled: Vec<(&'static str, f64)> = sunspec::POINTS
            .iter()
            .filter(|d| d.model == model && d.sf == Some(sf_name))
            .filter_map(|d| Some((d.name, self.get(model, d.name)?)))
            .collect();
        self.set_raw(model, sf_name, i64::from(sf));
        for (name, value) in scaled {
            self.set(model, name, value);
        }
    }

    /// Store a raw register value (scale factors, enums).
    pub(crate) fn set_raw(&mut self, model: u16, name: &str, raw: i64) {
        let Some((a, d)) = self.loc(model, name) else {
            return;
        };
        let w = match d.ty {
            RegType::I16 => vec![raw as i16 as u16],
            _ => codec::encode(raw as f64, d.ty, WordOrder::Big).unwrap_or_default(),
        };
        self.write_raw(a, &w);
    }

    /// Whether a read of `count` registers at `addr` touches the point.
    pub(crate) fn overlaps(&self, model: u16, name: &str, addr: u16, count: u16) -> bool {
        self.loc(model, name).is_some_and(|(a, d)| {
            let (lo, hi) = (u32::from(addr), u32::from(addr) + u32::from(count));
            u32::from(a) < hi && lo < u32::from(a) + u32::from(d.ty.words())
        })
    }

    pub(crate) fn raw(&self, model: u16, name: &str) -> Option<i64> {
        let (a, d) = self.loc(model, name)?;
        let w = self.read(a, d.ty.words())?;
        codec::decode(&w, d.ty, WordOrder::Big)
            .ok()
            .map(|v| v as i64)
    }

    pub(crate) fn set_string(&mut self, model: u16, offset: u16, regs: usize, s: &str) {
        if let Some(m) = self.map.model(model) {
            let w = sunspec::encode_string(s, regs);
            self.write_raw(m.addr + offset, &w);
        }
    }
}

/// The smallest scale factor ≥ 0 that fits `max_abs` into an int16.
pub(crate) fn sf_for(max_abs: f64) -> i16 {
    let mut sf = 0i16;
    while max_abs / codec::pow10(sf) > 32767.0 && sf < 6 {
        sf += 1;
    }
    sf
}
