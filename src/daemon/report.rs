//! Builds the typed status report ([`crate::admin::state`]) from the daemon's live parts:
//! dispatch's commands, the overrides, and each control loop's last decision and reading.

use crate::admin::state::{
    CommandReport, DaemonState, DeviceReport, LastNotification, Limit, MeterReport, OverrideReport,
    StatusReport,
};
use crate::config::Config;
use crate::control::MeterStatus;
use crate::dispatch::overrides::Override;
use crate::dispatch::status::DispatchSnapshot;
use crate::plan::Interval;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

pub(super) struct Inputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) now: DateTime<Utc>,
    /// Housekeeping's last answer, not a fresh check (SPEC §2.11).
    pub(crate) clock_synchronised: Option<bool>,
    pub(crate) listen: std::net::SocketAddr,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) last: Option<crate::store::query::LastNotification>,
    pub(crate) snap: DispatchSnapshot,
    pub(crate) overrides: BTreeMap<String, Override>,
    pub(crate) live: Vec<MeterStatus>,
}

pub(super) fn build(i: Inputs<'_>) -> StatusReport {
    let meters = i
        .config
        .meters
        .iter()
        .map(|m| {
            let d = i.snap.meters.get(&m.id);
            let live = i.live.iter().find(|l| l.meter_id == m.id);
            MeterReport {
                meter_id: m.id.clone(),
                name: m.name.clone(),
                device: m.device.clone(),
                // A dry run shows as "dry-run: …" where a command would.
                command: d
                    .and_then(|d| d.command.as_ref().or(d.dry_run.as_ref()))
                    .map(command),
                manual_override: i.overrides.get(&m.id).map(|o| OverrideReport {
                    action: super::admin_handler::wire(o.action),
                    until: o.until,
                }),
                device_state: live.map(device),
                last_error: d.and_then(|d| d.last_error.clone()),
                active_timeslot: None,
                last_audit: None,
            }
        })
        .collect();
    StatusReport {
        daemon: DaemonState::Running,
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        pid: Some(std::process::id()),
        started_at: Some(i.started_at),
        uptime_secs: Some((i.now - i.started_at).num_seconds()),
        now: i.now,
        clock_synchronised: i.clock_synchronised,
        last_notification: i.last.map(|l| LastNotification {
            id: l.id,
            received_at: l.received_at,
            peer: l.peer,
        }),
        listen: Some(i.listen.to_string()),
        next_boundary: i.snap.next_boundary,
        plan_error: i.snap.plan_error,
        unmapped_meters: i.snap.unmapped_meters,
        tunnel: None,
        last_run: None,
        meters,
        leap: None,
        uplink: None,
        storage_error: None,
    }
}

fn command(iv: &Interval) -> CommandReport {
    let c = &iv.command;
    CommandReport {
        kind: c.kind,
        event_id: c.event_id.clone(),
        mode: c.mode,
        target: c.target,
        performance_compensation_cap: c.cap,
        start: iv.start,
        end: iv.end,
    }
}

fn device(m: &MeterStatus) -> DeviceReport {
    let t = m.last_telemetry.unwrap_or_default();
    let following = m.command.is_some();
    let d = m.last_decision.filter(|_| following);
    DeviceReport {
        soc_pct: t.soc_pct,
        battery_kw: t.battery_kw,
        grid_kw: t.grid_kw,
        requested_kw: d.and_then(|d| d.requested_kw),
        setpoint_kw: d.map(|d| d.setpoint_kw),
        limited_by: d.and_then(|d| limit_of(d.bound)),
        max_discharge_kw: t.max_discharge_kw,
        max_charge_kw: t.max_charge_kw,
        released: m.released,
        consecutive_errors: m.consecutive_errors,
        last_error: m.last_error.clone(),
        last_telemetry_at: m.last_telemetry_at,
        blind: m.blind.clone().filter(|_| following),
        export_unavoidable: m.export_unavoidable(),
        no_reversion: m.no_reversion,
    }
}

/// The control law's bound in the admin contract's words (converted here, at the edge, so
/// the contract does not depend on the law); None when the request itself governs.
pub(super) fn limit_of(b: crate::control::Bound) -> Option<Limit> {
    use crate::control::Bound;
    match b {
        Bound::Target | Bound::Unbounded => None,
        Bound::SiteLoad => Some(Limit::ExportMargin),
        Bound::Nomination => Some(Limit::Nomination),
        Bound::MaxDischarge | Bound::MaxCharge => Some(Limit::BatteryRating),
        Bound::Energy => Some(Limit::StoredEnergy),
        Bound::Reserve => Some(Limit::ReserveSoc),
        Bound::SocUnknown => Some(Limit::SocUnknown),
        Bound::Full => Some(Limit::Full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16.5: `status` carries housekeeping's cached clock answer; it does not check
    /// again (a `timedatectl` process per request where `adjtimex` is refused).
    #[test]
    fn the_clock_state_is_the_cached_answer_not_a_fresh_check() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
        let config = Config::parse_str(text, std::path::Path::new("t.toml")).unwrap();
        let now = Utc::now();
        // The opposite of what this machine would answer now.
        let cached = match crate::clock::synchronised() {
            Some(false) => Some(true),
            _ => Some(false),
        };
        let report = build(Inputs {
            config: &config,
            now,
            clock_synchronised: cached,
            listen: "127.0.0.1:1".parse().unwrap(),
            started_at: now,
            last: None,
            snap: DispatchSnapshot::default(),
            overrides: BTreeMap::new(),
            live: Vec::new(),
        });
        assert_eq!(report.clock_synchronised, cached);
    }
}
