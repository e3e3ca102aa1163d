//! The control law: one pure function from (command, time, latest telemetry, battery
//! limits, site settings) to a battery setpoint. No I/O and the clock passed in, so every
//! SPEC §2.9 rule is unit- and property-tested here; the loop around it only reads, calls
//! [`decide`] and writes.
//!
//! The setpoint is the battery's discharge power itself, not a reduction against a
//! modelled baseline: an award of 10 kW is 10 kW of discharge. A battery that would have
//! been charging in normal operation therefore over-delivers against Leap's baseline; a
//! baseline model would be needed to net that out.

use crate::config::SiteConfig;
use crate::device::Telemetry;
use crate::model::{Cap, Command, Strategy, Target};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Battery limits as far as they are known: the device's report and the configured
/// nameplate, the smaller winning (see [`Limits::merge`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub(crate) struct Limits {
    pub(crate) max_discharge_kw: Option<f64>,
    pub(crate) max_charge_kw: Option<f64>,
    pub(crate) capacity_kwh: Option<f64>,
}

impl Limits {
    /// A configured nameplate may be a site-specific derating below what the device
    /// reports, and a device may report less than its nameplate when hot or degraded:
    /// the smaller known value is the safe one.
    pub(crate) fn merge(reported: &Telemetry, nameplate: Limits) -> Limits {
        Limits {
            max_discharge_kw: min_known(reported.max_discharge_kw, nameplate.max_discharge_kw),
            max_charge_kw: min_known(reported.max_charge_kw, nameplate.max_charge_kw),
            capacity_kwh: min_known(reported.capacity_kwh, nameplate.capacity_kwh),
        }
    }
}

fn min_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let ok = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
    match (ok(a), ok(b)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The constraint that set the setpoint (the smallest upper bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bound {
    /// The award itself.
    Target,
    /// No export / site export limit: bounded by site load.
    SiteLoad,
    /// `limit_kw` (nomination).
    Nomination,
    /// The battery's maximum discharge power.
    MaxDischarge,
    /// Stored energy spread over the time left.
    Energy,
    /// At or below the reserve state of charge.
    Reserve,
    /// State of charge unknown: the reserve cannot be guarded.
    SocUnknown,
    /// The battery's maximum charge power (manual charge only).
    MaxCharge,
    /// The battery is full (manual charge only).
    Full,
    /// Nothing bounded it (maximum requested, no limits known).
    Unbounded,
}

/// Why the setpoint is what it is; shown in status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Flags {
    /// SoC at or below the reserve: discharge stopped (SPEC §2.9).
    pub reserve_reached: bool,
    /// Stored energy above the reserve cannot hold the target to `until`: spread evenly.
    pub energy_limited: bool,
    /// No site-meter reading: `fallback_site_load_kw` assumed.
    pub(crate) using_fallback_load: bool,
    /// Site load, export limit or nomination held the setpoint below the target.
    pub cap_limited: bool,
    /// The battery's maximum discharge held the setpoint below the target.
    pub(crate) power_limited: bool,
    /// No SoC reading: discharge withheld because the reserve cannot be guarded.
    pub(crate) soc_unknown: bool,
    /// No capacity known: energy spreading not possible (the reserve still stops it).
    pub(crate) capacity_unknown: bool,
    /// SPEC §2.13: the setpoint is a charge that absorbs on-site generation the site
    /// would otherwise export (not charging from the grid).
    pub absorbing_surplus: bool,
    /// SPEC §2.13: even the most the battery can absorb (charge limit, full battery)
    /// leaves the site exporting: the site's generation, not the dispatch.
    pub export_unavoidable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// Battery setpoint, discharge positive. Negative during a dispatch only to absorb
    /// on-site generation under the site's export bound (SPEC §2.13), or for a manual
    /// charge override.
    pub(crate) setpoint_kw: f64,
    /// What the command asked for; None = the maximum within the cap.
    pub(crate) requested_kw: Option<f64>,
    /// How much of the requested power (in magnitude) is not delivered; 0 for a maximum.
    pub shortfall_kw: f64,
    /// Site load (kW) the decision used: measured, or the fallback.
    pub site_load_kw: f64,
    pub bound: Bound,
    pub flags: Flags,
}

/// SPEC §2.9: what the battery should discharge now to follow `cmd`.
pub(crate) fn decide(
    cmd: &Command,
    now: DateTime<Utc>,
    tel: &Telemetry,
    limits: Limits,
    site: &SiteConfig,
) -> Decision {
    let (requested_kw, spread) = match (cmd.target, cmd.strategy) {
        (Target::Setpoint(kw), _) if finite_or_zero(kw) < 0.0 => {
            return charge(-kw, tel, limits, site);
        }
        // A technician's exact power: not spread over time, but the reserve and the
        // no-export rule still hold.
        (Target::Setpoint(kw), _) => (Some(finite_or_zero(kw)), false),
        // SPEC §2.9 `maximize` over-performs up to the cap; Maximum = energy_kw null.
        (_, Strategy::Maximize) | (Target::Maximum, _) => (None, true),
        (Target::Kw(kw), Strategy::Award) => (Some(finite_or_zero(kw).max(0.0)), true),
    };
    let inputs = Inputs {
        cmd,
        now,
        tel,
        limits,
        site,
    };
    let mut flags = Flags::default();
    let (site_load_kw, fallback) = site_load(tel, site);
    flags.using_fallback_load = fallback;
    let mut best = inputs.power_bound(requested_kw, site_load_kw);
    inputs.soc_bound(&mut best, spread, &mut flags);
    let (setpoint_kw, bound) = inputs.absorb(best, site_load_kw, &mut flags);
    flags.mark_bound(bound);
    // A charge delivers none of a discharge award, and no less than none.
    let shortfall_kw = requested_kw.map_or(0.0, |r| (r - setpoint_kw.max(0.0)).max(0.0));
    Decision {
        setpoint_kw,
        requested_kw,
        shortfall_kw,
        site_load_kw,
        bound,
        flags,
    }
}

/// The smallest upper bound on the discharge found so far, and what set it.
struct Tightest {
    kw: f64,
    bound: Bound,
}

impl Tightest {
    fn bound_by(&mut self, limit: f64, why: Bound) {
        if limit < self.kw {
            (self.kw, self.bound) = (limit, why);
        }
    }
}

/// The arguments of [`decide`], so its steps share them without long parameter lists.
struct Inputs<'a> {
    cmd: &'a Command,
    now: DateTime<Utc>,
    tel: &'a Telemetry,
    limits: Limits,
    site: &'a SiteConfig,
}

impl Inputs<'_> {
    /// The bounds on power alone: the award, the site's export bound, the nomination and
    /// the battery's maximum discharge.
    fn power_bound(&self, requested_kw: Option<f64>, site_load_kw: f64) -> Tightest {
        let mut best = match requested_kw {
            Some(kw) => Tightest {
                kw,
                bound: Bound::Target,
            },
            None => Tightest {
                kw: f64::INFINITY,
                bound: Bound::Unbounded,
            },
        };
        best.bound_by(site_bound(self.cmd, site_load_kw), Bound::SiteLoad);
        if let Some(l) = self.cmd.limit_kw.filter(|l| l.is_finite()) {
            // SPEC §2.9 up-to-nomination: no pay beyond the nomination.
            best.bound_by(l.max(0.0), Bound::Nomination);
        }
        if let Some(m) = self.limits.max_discharge_kw {
            best.bound_by(m, Bound::MaxDischarge);
        }
        best
    }

    /// The bounds from stored energy: the reserve (SPEC §2.9: never crossed) and, when
    /// `spread`, the energy above it spread evenly to `until`.
    fn soc_bound(&self, best: &mut Tightest, spread: bool, flags: &mut Flags) {
        let reserve = self.site.reserve_soc_pct;
        match (
            self.tel.soc_pct.filter(|s| s.is_finite()),
            self.limits.capacity_kwh,
        ) {
            (None, _) => {
                // Without SoC the reserve cannot be guarded.
                flags.soc_unknown = true;
                best.bound_by(0.0, Bound::SocUnknown);
            }
            (Some(soc), _) if soc <= reserve => {
                flags.reserve_reached = true;
                best.bound_by(0.0, Bound::Reserve);
            }
            (Some(soc), Some(cap_kwh)) => {
                let kw = spread_kw(soc, cap_kwh, reserve, self.cmd.until, self.now);
                if let (Some(kw), true) = (kw, spread) {
                    best.bound_by(kw, Bound::Energy);
                }
            }
            (Some(_), None) => flags.capacity_unknown = spread,
        }
    }

    /// SPEC §2.13: the setpoint from the tightest bound, lowered below 0 only to absorb
    /// a surplus (see [`absorb_floor`]). Returns the setpoint and the bound that set it.
    fn absorb(&self, best: Tightest, site_load_kw: f64, flags: &mut Flags) -> (f64, Bound) {
        let Tightest {
            kw: limit,
            mut bound,
        } = best;
        let absorb = absorb_floor(self.cmd, self.tel, self.limits, bound, site_load_kw);
        let floor = absorb.map_or(0.0, |a| a.0);
        let setpoint_kw = if limit.is_finite() {
            limit.max(floor)
        } else {
            0.0
        };
        flags.absorbing_surplus = setpoint_kw < 0.0;
        if let Some((floor, why)) = absorb
            && limit < floor
        {
            bound = why;
            // Export (not just import below the margin) remains: the site's generation.
            let export_kw = setpoint_kw - site_load_kw;
            flags.export_unavoidable =
                export_kw > allowed_export_kw(self.cmd) + EXPORT_TOLERANCE_KW;
        }
        (setpoint_kw, bound)
    }
}

impl Flags {
    /// The flag that names the kind of bound that held the setpoint.
    fn mark_bound(&mut self, bound: Bound) {
        match bound {
            Bound::SiteLoad | Bound::Nomination => self.cap_limited = true,
            // Absorbing a surplus: the charge limit or a full battery is what bounds it.
            Bound::MaxCharge | Bound::Full => self.cap_limited = true,
            Bound::MaxDischarge => self.power_limited = true,
            Bound::Energy => self.energy_limited = true,
            _ => {}
        }
    }
}

/// A manual charge of `want_kw` (> 0), the only negative setpoint. Charging raises grid
/// import, so neither the no-export rule nor the reserve can be broken by it; the
/// battery's charge power and a full battery bound it.
fn charge(want_kw: f64, tel: &Telemetry, limits: Limits, site: &SiteConfig) -> Decision {
    let mut flags = Flags::default();
    let (site_load_kw, fallback) = site_load(tel, site);
    flags.using_fallback_load = fallback;
    let (mut kw, mut bound) = (want_kw, Bound::Target);
    if let Some(m) = limits.max_charge_kw.filter(|m| *m < kw) {
        (kw, bound) = (m, Bound::MaxCharge);
        flags.power_limited = true;
    }
    if tel.soc_pct.is_some_and(|s| s >= 100.0) {
        (kw, bound) = (0.0, Bound::Full);
    }
    Decision {
        setpoint_kw: -kw,
        requested_kw: Some(-want_kw),
        shortfall_kw: want_kw - kw,
        site_load_kw,
        bound,
        flags,
    }
}

/// Grid readings and bounds this close are the same (meter noise, rounding).
const EXPORT_TOLERANCE_KW: f64 = 0.05;

/// SPEC §2.9 said "never charge from the grid during a dispatch"; SPEC §2.13 refines it:
/// surplus is not export. The lowest setpoint allowed, and what sets it:
/// - Only the site's export bound (no export: grid import ≥ margin; or the export
///   permit) may push the setpoint below 0, and only while the site has a surplus
///   (net site load = grid + battery < 0: generation exceeds consumption). The battery
///   then charges to absorb it: with grid = load − battery, a charge of |bound| leaves
///   grid import exactly at the margin (or export exactly at the permit). The charge is
///   at most surplus + margin, so the only grid import a dispatch adds over normal
///   self-consumption is the margin the no-export rule itself requires; without a
///   surplus it never charges (that would be charging from the grid).
/// - The charge is bounded by the battery's charge limit and stops at 100 % SoC.
/// - A technician's exact setpoint keeps its sign (manual overrides are not re-aimed).
///
/// Returns (floor, the bound that sets it when the site bound is below it); None when
/// the setpoint may not go below 0.
fn absorb_floor(
    cmd: &Command,
    tel: &Telemetry,
    limits: Limits,
    bound: Bound,
    site_load_kw: f64,
) -> Option<(f64, Bound)> {
    if bound != Bound::SiteLoad || site_load_kw >= 0.0 || matches!(cmd.target, Target::Setpoint(_))
    {
        return None;
    }
    if tel.soc_pct.is_some_and(|s| s >= 100.0) {
        return Some((0.0, Bound::Full));
    }
    Some(match limits.max_charge_kw {
        Some(m) => (-m, Bound::MaxCharge),
        None => (f64::NEG_INFINITY, Bound::SiteLoad),
    })
}

/// The export the command allows (kW, ≥ 0): 0 under any no-export cap.
pub(crate) fn allowed_export_kw(cmd: &Command) -> f64 {
    let export = finite_or_zero(cmd.export_allowed_kw).max(0.0);
    if cmd.cap == Cap::UpToSiteLoad || export == 0.0 {
        0.0
    } else {
        export
    }
}

/// The lowest grid power (import positive) the command allows: the no-export margin, or
/// minus the export permit.
pub(crate) fn grid_floor_kw(cmd: &Command) -> f64 {
    match allowed_export_kw(cmd) {
        0.0 => finite_or_zero(cmd.import_margin_kw).max(0.0),
        export => -export,
    }
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// Site load = grid import + battery discharge, both measured. Without both readings the
/// configured fallback is used: it is meant to be at or below the lowest plausible load,
/// so the no-export bound stays conservative.
fn site_load(tel: &Telemetry, site: &SiteConfig) -> (f64, bool) {
    match (tel.grid_kw, tel.battery_kw) {
        (Some(g), Some(b)) if g.is_finite() && b.is_finite() => (g + b, false),
        _ => (finite_or_zero(site.fallback_site_load_kw).max(0.0), true),
    }
}

/// The most the battery may discharge given the site load and the cap.
fn site_bound(cmd: &Command, load_kw: f64) -> f64 {
    let export = finite_or_zero(cmd.export_allowed_kw).max(0.0);
    if cmd.cap == Cap::UpToSiteLoad || export == 0.0 {
        // SPEC §2.9 no export: keep grid import ≥ margin. With grid = load − battery this
        // is the OpenEMS balancing law battery_new = grid + battery − margin.
        load_kw - finite_or_zero(cmd.import_margin_kw).max(0.0)
    } else {
        // SPEC §2.9 grid-exports-allowed: export up to the site's permit.
        load_kw + export
    }
}

/// SPEC §2.9: the even rate that takes the battery exactly to the reserve at `until`.
/// None when the timeslot has ended (nothing to spread over).
fn spread_kw(
    soc_pct: f64,
    capacity_kwh: f64,
    reserve_pct: f64,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let hours = (until - now).num_milliseconds() as f64 / 3_600_000.0;
    if hours <= 0.0 {
        return None;
    }
    let above_kwh = (soc_pct - reserve_pct).max(0.0) / 100.0 * capacity_kwh;
    Some(above_kwh / hours)
}
