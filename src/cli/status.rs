//! `leap-edge status`: one screen for a technician. Asks the running daemon over the admin
//! socket for its typed [`StatusReport`]; when the daemon is down, fills the same report
//! from the configuration and the database (active timeslots, last audit entry per meter)
//! and says how the daemon was last run. `--watch` refreshes it (see [`super::watch`]).

use super::output::Format;
use super::text::Zone;
use super::{exit, status_view};
use crate::admin::state::{
    ActiveTimeslot, AuditSummary, DaemonState, LastNotification, MeterReport, StatusReport,
};
use crate::admin::{AdminClient, ClientError};
use crate::config::Config;
use crate::plan::{self, PlanConfig, PlanInput};
use crate::store::{self, audit, query};
use chrono::Utc;

/// Exit code when the daemon is not running (as LSB `status` uses).
pub(crate) const NOT_RUNNING: u8 = 3;

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// Print the status report as one JSON document (the admin socket's own type).
    #[arg(long)]
    pub(crate) json: bool,
    /// Full meter ids, device names, event ids and errors (wider than 80 columns).
    #[arg(long)]
    pub(crate) wide: bool,
    /// Times in local time (honours TZ) instead of UTC.
    #[arg(long)]
    pub(crate) local: bool,
    /// Keep refreshing: in place on a terminal, one line per change when piped.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) interval: u64,
}

pub(super) fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.watch {
        return super::watch::status(&rt, config, args);
    }
    let report = rt.block_on(gather(config))?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    if format == Format::Json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let view = status_view::View {
            wide: args.wide,
            zone: Zone::from_flag(args.local),
            color: super::output::stdout_colour(format),
        };
        for line in status_view::render(&report, config, &view) {
            crate::outln!("{line}");
        }
    }
    Ok(code(&report))
}

pub(crate) fn code(r: &StatusReport) -> u8 {
    match r.daemon {
        DaemonState::Running => exit::OK,
        DaemonState::NotRunning => NOT_RUNNING,
    }
}

/// The daemon's report, or the database's when it is down.
pub(crate) async fn gather(config: &Config) -> anyhow::Result<StatusReport> {
    match AdminClient::new(&config.admin.socket).status().await {
        Ok(mut r) => {
            r.tunnel = Some(tunnel());
            Ok(r)
        }
        Err(ClientError::NotRunning(_)) => Ok(down(config)),
        Err(e) => Err(e.into()),
    }
}

fn down(config: &Config) -> StatusReport {
    let now = Utc::now();
    let path = &config.storage.path;
    // A database that exists but cannot be read must not look like an empty one.
    // Said once: a database that cannot be read fails every query alike.
    let said = std::cell::Cell::new(false);
    let unreadable = |e: &dyn std::fmt::Display| {
        if !said.replace(true) {
            say_unreadable(path, e);
        }
    };
    let conn = match store::open_read_only(path) {
        Ok(c) => Some(c),
        Err(e) if path.exists() => {
            unreadable(&e);
            None
        }
        Err(_) => None,
    };
    let last = conn
        .as_ref()
        .and_then(|c| said_if_err(query::last_notification(c), &unreadable).flatten());
    let slots = conn
        .as_ref()
        .and_then(|c| said_if_err(query::all_timeslots(c), &unreadable))
        .unwrap_or_default();
    // What governs now is what the daemon would follow: the plan's precedence (SPEC §2.8),
    // test policies and cancellations, not a rule of its own here.
    let pc = PlanConfig::from_config(config);
    let plan = plan::plan(&PlanInput {
        timeslots: &slots,
        config: &pc,
        from: now,
        to: now + chrono::Duration::seconds(1),
    });
    let meters = config
        .meters
        .iter()
        .map(|m| down_meter(m, &slots, &plan, conn.as_ref(), now, &unreadable))
        .collect();
    StatusReport {
        daemon: DaemonState::NotRunning,
        version: None,
        pid: None,
        started_at: None,
        uptime_secs: None,
        now,
        clock_synchronised: crate::clock::synchronised(),
        last_notification: last.map(|l| LastNotification {
            id: l.id,
            received_at: l.received_at,
            peer: l.peer,
        }),
        listen: None,
        next_boundary: None,
        plan_error: None,
        unmapped_meters: Vec::new(),
        tunnel: Some(tunnel()),
        last_run: crate::runlock::read(&crate::runlock::path_for(&config.storage.path)),
        meters,
        leap: None,
        uplink: None,
        storage_error: None,
    }
}

/// The value, or None with the error said.
fn said_if_err<T>(
    r: Result<T, store::StoreError>,
    unreadable: &dyn Fn(&dyn std::fmt::Display),
) -> Option<T> {
    r.map_err(|e| unreadable(&e)).ok()
}

/// A database that exists but cannot be read must not look like an empty one.
fn say_unreadable(path: &std::path::Path, e: &dyn std::fmt::Display) {
    let e = e.to_string();
    // The group hint only where it can help: a busy file or another schema needs
    // something else, which the error itself names.
    let hint = if e.contains("ermission") || e.contains("unable to open") {
        " (run with sudo or as a member of the leap-edge group)"
    } else {
        ""
    };
    eprintln!(
        "leap-edge: cannot read {}: {e}; what follows lacks it, so \"none\" there means unknown{hint}",
        path.display()
    );
}

/// One configured meter as the database sees it: a timeslot active now, the last audit entry.
fn down_meter(
    m: &crate::config::MeterConfig,
    slots: &[crate::model::StoredTimeslot],
    plan: &plan::Plan,
    conn: Option<&rusqlite::Connection>,
    now: chrono::DateTime<Utc>,
    unreadable: &dyn Fn(&dyn std::fmt::Display),
) -> MeterReport {
    let governing = plan.command_at(&m.id, now).map(|iv| &iv.command);
    let active = governing
        .and_then(|c| {
            slots
                .iter()
                .find(|s| s.timeslot.kind == c.kind && s.timeslot.event_id == c.event_id)
        })
        .map(|s| ActiveTimeslot {
            kind: s.timeslot.kind,
            event_id: s.timeslot.event_id.clone(),
            start_time: s.timeslot.start_time,
            end_time: s.timeslot.end_time,
            energy_kw: s.timeslot.energy_kw.kw(),
            test: s.timeslot.is_communication_test() || s.timeslot.integration_test_notification,
        });
    let filter = audit::AuditFilter {
        meter: Some(m.id.clone()),
        limit: Some(1),
        ..Default::default()
    };
    let last_audit = conn
        .and_then(|c| said_if_err(audit::query(c, &filter), unreadable))
        .and_then(|rows| rows.into_iter().next())
        .map(|r| AuditSummary {
            at: r.at,
            action: r.action,
            event_id: r.event_id,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
        });
    MeterReport {
        meter_id: m.id.clone(),
        name: m.name.clone(),
        device: m.device.clone(),
        command: None,
        manual_override: None,
        device_state: None,
        last_error: None,
        active_timeslot: active,
        last_audit,
    }
}

/// The unit starts only with this file (`ConditionPathExists=`).
const TUNNEL_ENV: &str = "/etc/leap-edge/tunnel.env";
/// An ssh that has kept its forward this long is connected: with `ExitOnForwardFailure`
/// a refused login, host key or port ends it within seconds, and autossh starts another.
const TUNNEL_SETTLED_SECS: f64 = 10.0;

/// The tunnel runs as its own systemd unit (systemd/leap-edge-tunnel.service); the CLI,
/// unsandboxed, asks systemd about it. "not installed" when the unit is absent, "not
/// configured" without its environment file (a site Leap reaches another way).
pub(crate) fn tunnel() -> String {
    let installed = [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|d| {
        std::path::Path::new(d)
            .join("leap-edge-tunnel.service")
            .exists()
    });
    if !installed {
        return "not installed".into();
    }
    if !std::path::Path::new(TUNNEL_ENV).exists() {
        return format!("not configured (no {TUNNEL_ENV})");
    }
    match systemctl(&["is-active", "leap-edge-tunnel.service"]).as_str() {
        "active" => match ssh_age_secs() {
            Some(age) if age >= TUNNEL_SETTLED_SECS => {
                format!("up (ssh connected {})", super::text::duration(age as i64))
            }
            Some(age) => format!(
                "DOWN? ssh restarted {age:.0} s ago; `journalctl -u leap-edge-tunnel` says why"
            ),
            None => "up? (leap-edge-tunnel.service active; its ssh not found)".into(),
        },
        "" => "unknown (systemctl unavailable)".into(),
        other => format!("DOWN, leap-edge-tunnel.service {other}: Leap cannot reach us"),
    }
}

fn systemctl(args: &[&str]) -> String {
    std::process::Command::new("systemctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// How long autossh's current ssh has run, from /proc (readable by any user).
fn ssh_age_secs() -> Option<f64> {
    let main = systemctl(&["show", "-P", "MainPID", "leap-edge-tunnel.service"]);
    let children = std::fs::read_to_string(format!("/proc/{main}/task/{main}/children")).ok()?;
    let ssh = children.split_whitespace().next()?;
    let stat = std::fs::read_to_string(format!("/proc/{ssh}/stat")).ok()?;
    // Field 22 (start time, clock ticks after boot), counted after the ")" of the name.
    let started: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let hz = 100.0; // USER_HZ: 100 on every Linux ABI leap-edge builds for
    Some((uptime - started / hz).max(0.0))
}
