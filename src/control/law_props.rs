//! Property tests of the control law: for any command, reading and site setting, the
//! setpoint never exports beyond what is allowed, never exceeds a limit, never charges
//! during a dispatch and never takes the battery below its reserve.

use super::law::*;
use super::law_tests::{cmd, limits, t0};
use crate::config::SiteConfig;
use crate::device::Telemetry;
use crate::model::{Cap, Command, Strategy, Target};
use chrono::Duration;
use proptest::prelude::*;
use proptest::strategy::Strategy as PStrategy;

fn any_cap() -> impl PStrategy<Value = Cap> {
    prop_oneof![
        Just(Cap::UpToNomination),
        Just(Cap::UpToSiteLoad),
        Just(Cap::GridExportsAllowed)
    ]
}

fn any_command() -> impl PStrategy<Value = Command> {
    (
        prop_oneof![Just(Target::Maximum), (0.0..200.0f64).prop_map(Target::Kw)],
        any_cap(),
        proptest::option::of(0.0..100.0f64),
        prop_oneof![Just(0.0), 0.0..50.0f64],
        0.0..3.0f64,
        prop_oneof![Just(Strategy::Award), Just(Strategy::Maximize)],
        -60i64..600,
    )
        .prop_map(|(target, cap, limit_kw, export, margin, strategy, mins)| {
            let mut c = cmd(target, cap);
            c.limit_kw = limit_kw;
            c.export_allowed_kw = export;
            c.import_margin_kw = margin;
            c.strategy = strategy;
            c.until = t0() + Duration::minutes(mins);
            c
        })
}

fn any_telemetry() -> impl PStrategy<Value = Telemetry> {
    (
        proptest::option::of(0.0..100.0f64),
        proptest::option::of(-50.0..50.0f64),
        proptest::option::of(-60.0..200.0f64),
        proptest::option::of(1.0..500.0f64),
        proptest::option::of(0.0..100.0f64),
    )
        .prop_map(|(soc, battery, grid, cap, max)| Telemetry {
            soc_pct: soc,
            battery_kw: battery,
            grid_kw: grid,
            capacity_kwh: cap,
            max_discharge_kw: max,
            max_charge_kw: max,
            ..Telemetry::default()
        })
}

proptest! {
    #[test]
    fn every_rule_holds_for_any_input(
        c in any_command(),
        t in any_telemetry(),
        reserve in 0.0..50.0f64,
        fallback in 0.0..20.0f64,
    ) {
        let site = SiteConfig {
            reserve_soc_pct: reserve,
            fallback_site_load_kw: fallback,
            ..SiteConfig::default()
        };
        let l = limits(&t);
        let d = decide(&c, t0(), &t, l, &site);
        let sp = d.setpoint_kw;
        prop_assert!(sp.is_finite(), "{d:?}");
        let load = match (t.grid_kw, t.battery_kw) {
            (Some(g), Some(b)) => g + b,
            _ => fallback,
        };
        let no_export = c.cap == Cap::UpToSiteLoad || c.export_allowed_kw == 0.0;
        // SPEC §2.13: a charge only absorbs a surplus (never from the grid): at most the
        // surplus plus the margin, within the charge limit, never into a full battery.
        if sp < 0.0 {
            prop_assert!(load < 0.0, "charged without a surplus: {d:?}");
            let margin = if no_export { c.import_margin_kw } else { 0.0 };
            prop_assert!(-sp <= -load + margin + 1e-9, "{d:?}");
            if let Some(m) = l.max_charge_kw { prop_assert!(-sp <= m + 1e-9, "{d:?}"); }
            prop_assert!(t.soc_pct.is_none_or(|s| s < 100.0), "{d:?}");
        }
        // Export that remains is flagged as the site's, and only then.
        let allowed = if no_export { 0.0 } else { c.export_allowed_kw };
        let export_after = sp - load;
        if d.flags.export_unavoidable {
            prop_assert!(export_after > allowed, "{d:?}");
        } else {
            prop_assert!(export_after <= allowed + 0.05 + 1e-9 || load >= 0.0 || sp > 0.0, "{d:?}");
        }
        // Never above the nomination, the battery's power, or the award.
        if let Some(limit) = c.limit_kw { prop_assert!(sp <= limit + 1e-9); }
        if let Some(max) = l.max_discharge_kw { prop_assert!(sp <= max + 1e-9); }
        if let (Target::Kw(kw), Strategy::Award) = (c.target, c.strategy) {
            prop_assert!(sp <= kw + 1e-9);
        }
        // Never export beyond what is allowed, given the measured (or assumed) load:
        // the grid after the change is load − setpoint.
        if sp > 0.0 {
            let grid_after = load - sp;
            if no_export {
                prop_assert!(grid_after >= c.import_margin_kw - 1e-9, "{d:?}");
            } else {
                prop_assert!(grid_after >= -c.export_allowed_kw - 1e-9, "{d:?}");
            }
        }
        // Never below the reserve: no discharge at/below it or without SoC, and never
        // faster than the energy above it lasts to the end.
        match t.soc_pct {
            None => prop_assert!(sp <= 0.0),
            Some(soc) if soc <= reserve => prop_assert!(sp <= 0.0),
            Some(soc) => {
                let hours = (c.until - t0()).num_seconds() as f64 / 3600.0;
                if let (Some(cap), true) = (l.capacity_kwh, hours > 0.0) {
                    let above = (soc - reserve) / 100.0 * cap;
                    prop_assert!(sp * hours <= above + 1e-6, "{d:?}");
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn a_manual_setpoint_never_exports_never_crosses_the_reserve(
        kw in -80.0..80.0f64,
        t in any_telemetry(),
        margin in 0.0..3.0f64,
        reserve in 0.0..50.0f64,
    ) {
        let mut c = cmd(Target::Setpoint(kw), Cap::UpToSiteLoad);
        c.import_margin_kw = margin;
        let site = SiteConfig { reserve_soc_pct: reserve, ..SiteConfig::default() };
        let l = limits(&t);
        let d = decide(&c, t0(), &t, l, &site);
        let sp = d.setpoint_kw;
        prop_assert!(sp.is_finite());
        // Same sign as asked, never more than asked.
        prop_assert!(sp.abs() <= kw.abs() + 1e-9 && sp * kw >= 0.0, "{d:?}");
        if sp > 0.0 {
            let load = match (t.grid_kw, t.battery_kw) {
                (Some(g), Some(b)) => g + b,
                _ => 0.0,
            };
            prop_assert!(load - sp >= margin - 1e-9, "{d:?}");
            prop_assert!(t.soc_pct.is_some_and(|s| s > reserve), "{d:?}");
        }
        if let (true, Some(max)) = (sp < 0.0, l.max_charge_kw) {
            prop_assert!(-sp <= max + 1e-9);
        }
    }
}
