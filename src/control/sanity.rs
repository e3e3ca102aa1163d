//! SPEC §2.13 "blind is not safe": whether the readings a decision depends on can be
//! trusted. Pure, so every rule is unit-tested; the loop hands the battery back to normal
//! operation (the device's own logic) whenever this returns a reason.
//!
//! A decision depends on the state of charge always (the reserve, a full battery), and on
//! the site meter and the battery's power always: the site's load is their sum, and without
//! it the law can keep neither the no-export margin nor an export permit. Values a healthy device cannot report are treated like missing ones: a stuck
//! register (32 767 W) would otherwise read as a huge load and drive the battery at full
//! power into export.

use super::law::{Limits, allowed_export_kw};
use crate::config::SiteConfig;
use crate::device::Telemetry;
use crate::model::Command;
use std::time::Duration;

/// Battery power may exceed its rating by this share before the reading counts as wrong
/// (inverters overshoot briefly, ratings are rounded).
const RATING_SLACK: f64 = 0.25;
/// And by this much in absolute terms (small batteries, meter resolution).
const RATING_SLACK_KW: f64 = 1.0;

/// Why the readings cannot be trusted for `cmd`, or None when they can.
pub(crate) fn blind_reason(
    cmd: &Command,
    tel: &Telemetry,
    limits: Limits,
    site: &SiteConfig,
) -> Option<String> {
    match tel.soc_pct {
        None => return Some("no state-of-charge reading".into()),
        Some(s) if !s.is_finite() || !(0.0..=100.0).contains(&s) => {
            return Some(format!("state of charge {s} % is outside 0–100 %"));
        }
        Some(_) => {}
    }
    // Site load is grid + battery: both readings, under every cap. Without the site meter
    // an export permit cannot be kept either (PV may already export), and an assumed load
    // in place of either reading let the battery discharge into export unnoticed.
    match tel.grid_kw {
        None if allowed_export_kw(cmd) == 0.0 => {
            return Some("no site-meter reading under a no-export bound".into());
        }
        None => {
            return Some("no site-meter reading: the export permit cannot be kept".into());
        }
        Some(g) => {
            if let Some(why) = grid_problem(g, site) {
                return Some(why);
            }
        }
    }
    match tel.battery_kw {
        None => Some("no battery power reading: the site's load cannot be computed".into()),
        Some(b) => battery_problem(b, limits),
    }
}

/// Why a site-meter reading cannot be what the site does, if it cannot.
fn grid_problem(g: f64, site: &SiteConfig) -> Option<String> {
    if !g.is_finite() {
        return Some("site-meter reading is not a number".into());
    }
    let service = site.service_kw.filter(|s| *s > 0.0)?;
    (g.abs() > service).then(|| {
        format!(
            "site-meter reading {g:.1} kW is beyond the site's service size ({service} kW, [site] service_kw)"
        )
    })
}

/// Why a battery power reading cannot be what the battery does, if it cannot.
fn battery_problem(b: f64, limits: Limits) -> Option<String> {
    if !b.is_finite() {
        return Some("battery power reading is not a number".into());
    }
    let rating = limits
        .max_discharge_kw
        .into_iter()
        .chain(limits.max_charge_kw)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))?;
    (b.abs() > rating * (1.0 + RATING_SLACK) + RATING_SLACK_KW).then(|| {
        format!("battery power reading {b:.1} kW is beyond the battery's rating ({rating} kW)")
    })
}

/// Issue 14 under SPEC §2.13: what of a reading may go into interval data. A power value a
/// healthy device cannot report (not a number, beyond the service size or the battery's
/// rating) is left out, so its interval is a gap, not a stuck register's 327 kW counted as
/// consumption and uploaded to Leap as final. The same rules as for control, with or
/// without a dispatch.
pub(crate) fn recordable(tel: &Telemetry, limits: Limits, site: &SiteConfig) -> Telemetry {
    let mut t = *tel;
    t.grid_kw = t.grid_kw.filter(|g| grid_problem(*g, site).is_none());
    t.battery_kw = t
        .battery_kw
        .filter(|b| battery_problem(*b, limits).is_none());
    t
}

/// A reading that took longer than two control periods describes a site that may have
/// changed since: stale.
pub(crate) fn stale_reason(took: Duration, period: Duration) -> Option<String> {
    (took > period * 2).then(|| {
        format!(
            "reading took {} ms, more than two control periods ({} ms)",
            took.as_millis(),
            (period * 2).as_millis()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::law_tests::{cmd, limits, tel};
    use crate::model::{Cap, Target};

    fn why(c: &Command, t: &Telemetry, site: &SiteConfig) -> Option<String> {
        blind_reason(c, t, limits(t), site)
    }

    #[test]
    fn missing_or_impossible_readings_are_blind() {
        let c = cmd(Target::Kw(10.0), Cap::UpToSiteLoad);
        let site = SiteConfig {
            service_kw: Some(100.0),
            ..SiteConfig::default()
        };
        assert_eq!(why(&c, &tel(30.0, 0.0), &site), None);
        let mut t = tel(30.0, 0.0);
        t.soc_pct = None;
        assert!(why(&c, &t, &site).unwrap().contains("state-of-charge"));
        t.soc_pct = Some(101.0);
        assert!(why(&c, &t, &site).unwrap().contains("outside 0–100"));
        let mut t = tel(30.0, 0.0);
        t.grid_kw = None;
        assert!(why(&c, &t, &site).unwrap().contains("site-meter"));
        // A stuck register: 32 767 W on a 100 kW service is fine, 327.67 kW is not.
        assert_eq!(why(&c, &tel(32.767, 0.0), &site), None);
        assert!(
            why(&c, &tel(327.67, 0.0), &site)
                .unwrap()
                .contains("service_kw")
        );
        // 50 kW battery reading 90 kW.
        assert!(why(&c, &tel(30.0, 90.0), &site).unwrap().contains("rating"));
        assert_eq!(why(&c, &tel(30.0, -50.0), &site), None);
    }

    #[test]
    fn interval_data_leaves_out_what_control_would_not_trust() {
        let site = SiteConfig {
            service_kw: Some(100.0),
            ..SiteConfig::default()
        };
        let fine = tel(30.0, 10.0);
        assert_eq!(recordable(&fine, limits(&fine), &site), fine);
        let stuck = tel(327.67, 90.0);
        let kept = recordable(&stuck, limits(&stuck), &site);
        assert_eq!((kept.grid_kw, kept.battery_kw), (None, None), "{kept:?}");
        assert_eq!(kept.soc_pct, stuck.soc_pct);
        let mut nan = tel(30.0, 10.0);
        nan.grid_kw = Some(f64::NAN);
        assert_eq!(recordable(&nan, limits(&nan), &site).grid_kw, None);
    }

    /// Both readings under every cap: without the meter a permit cannot be kept (PV may
    /// already export); without the battery reading the load is unknown. Before, either
    /// gap put `fallback_site_load_kw` in place of the load.
    #[test]
    fn the_site_meter_and_the_battery_reading_are_needed_under_every_cap() {
        let mut c = cmd(Target::Kw(10.0), Cap::GridExportsAllowed);
        c.export_allowed_kw = 5.0;
        let mut t = tel(30.0, 0.0);
        t.grid_kw = None;
        assert!(
            why(&c, &t, &SiteConfig::default())
                .unwrap()
                .contains("permit")
        );
        for cap in [Cap::UpToSiteLoad, Cap::GridExportsAllowed] {
            let c = cmd(Target::Kw(10.0), cap);
            let mut t = tel(-3.0, 0.0);
            t.battery_kw = None;
            let why = why(&c, &t, &SiteConfig::default());
            assert!(
                why.as_deref().is_some_and(|w| w.contains("battery power")),
                "{why:?}"
            );
        }
    }

    #[test]
    fn a_slow_reading_is_stale() {
        let p = Duration::from_millis(1000);
        assert_eq!(stale_reason(Duration::from_millis(1900), p), None);
        assert!(stale_reason(Duration::from_millis(2100), p).is_some());
    }
}
