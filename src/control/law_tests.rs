//! Unit tests of the control law, one per SPEC §2.9 rule (properties: `law_props`).

use super::law::*;
use crate::config::SiteConfig;
use crate::device::Telemetry;
use crate::model::{Cap, Command, Strategy, Target};
use chrono::{DateTime, Duration, TimeZone, Utc};

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 5, 18, 0, 0).unwrap()
}

pub(super) fn cmd(target: Target, cap: Cap) -> Command {
    Command {
        target,
        cap,
        ..Command::award("ev-1", 0.0, t0() + Duration::hours(1))
    }
}

/// A full battery (90 %, 100 kWh, 50 kW) on a 30 kW site, battery idle.
pub(super) fn tel(grid: f64, battery: f64) -> Telemetry {
    Telemetry {
        soc_pct: Some(90.0),
        battery_kw: Some(battery),
        grid_kw: Some(grid),
        capacity_kwh: Some(100.0),
        max_discharge_kw: Some(50.0),
        max_charge_kw: Some(50.0),
        ..Telemetry::default()
    }
}

pub(super) fn limits(t: &Telemetry) -> Limits {
    Limits::merge(t, Limits::default())
}

fn run(c: &Command, t: &Telemetry) -> Decision {
    decide(c, t0(), t, limits(t), &SiteConfig::default())
}

#[test]
fn an_award_within_every_limit_is_delivered_as_is() {
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(30.0, 0.0));
    assert_eq!(d.setpoint_kw, 10.0);
    assert_eq!(d.bound, Bound::Target);
    assert_eq!(d.shortfall_kw, 0.0);
    assert_eq!(d.flags, Flags::default());
}

#[test]
fn up_to_site_load_keeps_grid_import_at_the_margin() {
    // Load 8 kW (grid 2 + battery 6): the battery may cover 7.5 kW, leaving 0.5 kW import.
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(2.0, 6.0));
    assert!((d.setpoint_kw - 7.5).abs() < 1e-9, "{d:?}");
    assert_eq!(d.site_load_kw, 8.0);
    assert_eq!(d.bound, Bound::SiteLoad);
    assert!(d.flags.cap_limited);
    assert!((d.shortfall_kw - 2.5).abs() < 1e-9);
}

#[test]
fn a_load_below_the_margin_means_no_discharge_and_no_charge_from_the_grid() {
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(0.2, 0.0));
    assert_eq!(d.setpoint_kw, 0.0);
    assert!(!d.flags.absorbing_surplus && !d.flags.export_unavoidable);
    // The site exports 3 kW while the battery discharges 1 kW: a 2 kW surplus, which the
    // battery absorbs, plus the margin (SPEC §2.13).
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(-3.0, 1.0));
    assert!((d.setpoint_kw + 2.5).abs() < 1e-9, "{d:?}");
}

#[test]
fn spec_2_13_surplus_is_absorbed_not_exported() {
    // 20 kW load, 30 kW PV, the battery charging 10 kW in self-consumption, grid 0: an
    // up-to-site-load award must not stop the charging (the site would export 10 kW).
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(0.0, -10.0));
    assert!((d.setpoint_kw + 10.5).abs() < 1e-9, "{d:?}");
    assert_eq!(d.bound, Bound::SiteLoad);
    assert!(
        d.flags.absorbing_surplus && !d.flags.export_unavoidable,
        "{d:?}"
    );
    assert_eq!(d.shortfall_kw, 10.0);
    // Under a permit the battery absorbs only what is beyond it.
    let mut c = cmd(Target::Kw(10.0), Cap::GridExportsAllowed);
    c.export_allowed_kw = 4.0;
    let d = run(&c, &tel(0.0, -10.0));
    assert!((d.setpoint_kw + 6.0).abs() < 1e-9, "{d:?}");
}

#[test]
fn spec_2_13_export_beyond_the_charge_limit_or_a_full_battery_is_flagged() {
    // Surplus 60 kW, the battery charges at most 50 kW: 10 kW export is the site's.
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &tel(-60.0, 0.0));
    assert_eq!(d.setpoint_kw, -50.0);
    assert_eq!(d.bound, Bound::MaxCharge);
    assert!(
        d.flags.export_unavoidable && d.flags.absorbing_surplus,
        "{d:?}"
    );
    let mut full = tel(-5.0, 0.0);
    full.soc_pct = Some(100.0);
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &full);
    assert_eq!(d.setpoint_kw, 0.0);
    assert_eq!(d.bound, Bound::Full);
    assert!(
        d.flags.export_unavoidable && !d.flags.absorbing_surplus,
        "{d:?}"
    );
}

#[test]
fn maximum_under_no_export_goes_to_site_load_less_margin() {
    let d = run(&cmd(Target::Maximum, Cap::UpToSiteLoad), &tel(30.0, 0.0));
    assert!((d.setpoint_kw - 29.5).abs() < 1e-9);
    assert_eq!(d.requested_kw, None);
}

#[test]
fn maximize_strategy_over_performs_an_award_up_to_the_cap() {
    let mut c = cmd(Target::Kw(10.0), Cap::UpToSiteLoad);
    c.strategy = Strategy::Maximize;
    let d = run(&c, &tel(30.0, 0.0));
    assert!((d.setpoint_kw - 29.5).abs() < 1e-9);
}

#[test]
fn grid_exports_allowed_exports_up_to_the_site_permit() {
    let mut c = cmd(Target::Maximum, Cap::GridExportsAllowed);
    c.export_allowed_kw = 5.0;
    // Load 30: discharge up to 35 (5 kW export), no margin applies.
    let d = run(&c, &tel(30.0, 0.0));
    assert!((d.setpoint_kw - 35.0).abs() < 1e-9);
    assert_eq!(d.bound, Bound::SiteLoad);
}

#[test]
fn an_export_limit_of_zero_wins_over_grid_exports_allowed() {
    let c = cmd(Target::Maximum, Cap::GridExportsAllowed);
    let d = run(&c, &tel(30.0, 0.0));
    assert!((d.setpoint_kw - 29.5).abs() < 1e-9);
}

#[test]
fn up_to_site_load_never_exports_even_if_the_command_says_it_may() {
    let mut c = cmd(Target::Maximum, Cap::UpToSiteLoad);
    c.export_allowed_kw = 5.0;
    let d = run(&c, &tel(30.0, 0.0));
    assert!((d.setpoint_kw - 29.5).abs() < 1e-9);
}

#[test]
fn scenario_22_maximize_never_exceeds_the_nomination() {
    let mut c = cmd(Target::Kw(8.0), Cap::UpToNomination);
    c.limit_kw = Some(10.0);
    c.strategy = Strategy::Maximize;
    let d = run(&c, &tel(30.0, 0.0));
    assert_eq!(d.setpoint_kw, 10.0);
    assert_eq!(d.bound, Bound::Nomination);
    assert!(d.flags.cap_limited);
}

#[test]
fn max_discharge_power_bounds_the_setpoint() {
    let mut t = tel(80.0, 0.0);
    t.max_discharge_kw = Some(20.0);
    let d = run(&cmd(Target::Kw(30.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 20.0);
    assert!(d.flags.power_limited);
}

#[test]
fn a_configured_nameplate_below_the_report_wins() {
    let t = tel(80.0, 0.0);
    let nameplate = Limits {
        max_discharge_kw: Some(12.0),
        max_charge_kw: None,
        capacity_kwh: Some(500.0),
    };
    let l = Limits::merge(&t, nameplate);
    assert_eq!(l.max_discharge_kw, Some(12.0));
    assert_eq!(l.max_charge_kw, Some(50.0));
    assert_eq!(l.capacity_kwh, Some(100.0));
    let only_config = Limits {
        capacity_kwh: Some(40.0),
        ..Limits::default()
    };
    assert_eq!(
        Limits::merge(&Telemetry::default(), only_config),
        only_config
    );
}

#[test]
fn at_the_reserve_discharge_stops_and_the_shortfall_is_flagged() {
    let mut t = tel(30.0, 10.0);
    t.soc_pct = Some(10.0);
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 0.0);
    assert!(d.flags.reserve_reached);
    assert_eq!(d.bound, Bound::Reserve);
    assert_eq!(d.shortfall_kw, 10.0);
}

#[test]
fn without_soc_the_reserve_cannot_be_guarded_so_nothing_is_discharged() {
    let mut t = tel(30.0, 0.0);
    t.soc_pct = None;
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 0.0);
    assert!(d.flags.soc_unknown);
}

#[test]
fn scarce_energy_is_spread_evenly_until_the_end() {
    // 20 % of 100 kWh with a 10 % reserve: 10 kWh over 2 h = 5 kW, not 10 kW for 1 h.
    let mut t = tel(30.0, 0.0);
    t.soc_pct = Some(20.0);
    let mut c = cmd(Target::Kw(10.0), Cap::UpToSiteLoad);
    c.until = t0() + Duration::hours(2);
    let d = run(&c, &t);
    assert!((d.setpoint_kw - 5.0).abs() < 1e-9, "{d:?}");
    assert!(d.flags.energy_limited);
    assert_eq!(d.bound, Bound::Energy);
    // Half an hour before the end the same energy may go faster.
    let d = decide(
        &c,
        c.until - Duration::minutes(30),
        &t,
        limits(&t),
        &SiteConfig::default(),
    );
    assert_eq!(d.setpoint_kw, 10.0);
    assert!(!d.flags.energy_limited);
}

#[test]
fn unknown_capacity_skips_spreading_but_is_flagged() {
    let mut t = tel(30.0, 0.0);
    t.soc_pct = Some(11.0);
    t.capacity_kwh = None;
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 10.0);
    assert!(d.flags.capacity_unknown);
}

#[test]
fn without_a_site_meter_reading_the_fallback_load_is_assumed() {
    let mut t = tel(30.0, 0.0);
    t.grid_kw = None;
    let site = SiteConfig {
        fallback_site_load_kw: 4.0,
        ..SiteConfig::default()
    };
    let d = decide(
        &cmd(Target::Kw(10.0), Cap::UpToSiteLoad),
        t0(),
        &t,
        limits(&t),
        &site,
    );
    assert!((d.setpoint_kw - 3.5).abs() < 1e-9);
    assert!(d.flags.using_fallback_load);
    assert_eq!(d.site_load_kw, 4.0);
    // Default fallback 0: nothing is discharged blind under a no-export cap.
    let d = run(&cmd(Target::Kw(10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 0.0);
}

#[test]
fn a_manual_discharge_is_exact_but_keeps_the_reserve_and_no_export() {
    // Scarce energy: a dispatch would spread it, a manual setpoint is not spread.
    let mut t = tel(30.0, 0.0);
    t.soc_pct = Some(11.0);
    let d = run(&cmd(Target::Setpoint(8.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 8.0);
    // No export: load 5 kW caps it at 4.5.
    let d = run(
        &cmd(Target::Setpoint(8.0), Cap::UpToSiteLoad),
        &tel(5.0, 0.0),
    );
    assert!((d.setpoint_kw - 4.5).abs() < 1e-9);
    t.soc_pct = Some(9.0);
    let d = run(&cmd(Target::Setpoint(8.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 0.0);
    assert!(d.flags.reserve_reached);
}

#[test]
fn a_manual_charge_is_bounded_by_charge_power_and_a_full_battery() {
    let d = run(
        &cmd(Target::Setpoint(-10.0), Cap::UpToSiteLoad),
        &tel(30.0, 0.0),
    );
    assert_eq!(d.setpoint_kw, -10.0);
    assert_eq!(d.requested_kw, Some(-10.0));
    let mut t = tel(30.0, 0.0);
    t.max_charge_kw = Some(4.0);
    let d = run(&cmd(Target::Setpoint(-10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, -4.0);
    assert_eq!(d.shortfall_kw, 6.0);
    assert!(d.flags.power_limited);
    t.soc_pct = Some(100.0);
    let d = run(&cmd(Target::Setpoint(-10.0), Cap::UpToSiteLoad), &t);
    assert_eq!(d.setpoint_kw, 0.0);
    assert_eq!(d.bound, Bound::Full);
    // Hold: 0 kW.
    let d = run(
        &cmd(Target::Setpoint(0.0), Cap::UpToSiteLoad),
        &tel(30.0, 0.0),
    );
    assert_eq!(d.setpoint_kw, 0.0);
}
