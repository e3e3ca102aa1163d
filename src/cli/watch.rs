//! Live views: `status --watch` (redrawn in place on a terminal, one line per change when
//! piped, like `journalctl -f`) and `history --follow` (new audit entries as they are
//! written). Both run until interrupted.

use super::status::StatusArgs;
use super::status_view::{self, View, command_words, override_words};
use super::text::Zone;
use super::{exit, status};
use crate::admin::state::{DaemonState, StatusReport};
use crate::config::Config;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

pub(crate) fn status(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    args: &StatusArgs,
) -> anyhow::Result<u8> {
    let zone = Zone::from_flag(args.local);
    let every = Duration::from_secs(args.interval);
    let terminal = std::io::stdout().is_terminal() && !args.json;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut failing: Option<String> = None;
    loop {
        // A daemon shutting down, busy past the socket's 10 s, or at its connection limit:
        // one line when it starts and the watch goes on (a piped log must not end there).
        let report = match rt.block_on(status::gather(config)) {
            Ok(r) => {
                failing = None;
                r
            }
            // What waiting cannot fix ends the watch, as before: no permission on the
            // socket, a daemon of another version.
            Err(e) if !passing(&e) => return Err(why_not(e)),
            Err(e) => {
                let e = super::text::clean(&e.to_string());
                if failing.as_ref() != Some(&e) {
                    eprintln!(
                        "{} leap-edge: the daemon does not answer: {e}; still watching",
                        zone.time(chrono::Utc::now())
                    );
                    failing = Some(e);
                }
                std::thread::sleep(every);
                continue;
            }
        };
        if args.json {
            // One compact document per refresh: a stream a script can read line by line.
            crate::outln!("{}", serde_json::to_string(&report)?);
        } else if terminal {
            let view = View {
                wide: args.wide,
                zone,
                color: super::output::stdout_colour(super::output::Format::Text),
            };
            let mut screen = String::from("\x1b[H\x1b[2J");
            for line in status_view::render(&report, config, &view) {
                screen.push_str(&line);
                screen.push('\n');
            }
            screen.push_str(&format!(
                "\nevery {} s, {}; Ctrl-C to stop",
                args.interval,
                zone.time(report.now)
            ));
            print_raw(&screen);
        } else {
            for (key, line) in summary(&report) {
                if seen.get(&key) != Some(&line) {
                    crate::outln!("{} {line}", zone.time(report.now));
                    seen.insert(key, line);
                }
            }
        }
        std::thread::sleep(every);
    }
}

/// An answer that does not decode comes from another version: said so, as for a one-shot
/// `status`, rather than as a socket error.
fn why_not(e: anyhow::Error) -> anyhow::Error {
    use crate::admin::ClientError;
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Io { error, .. }) if error.kind() == std::io::ErrorKind::InvalidData => {
            anyhow::Error::new(ClientError::Mismatch("status"))
        }
        _ => e,
    }
}

/// A daemon that does not answer now (busy, at its connection limit, shutting down).
fn passing(e: &anyhow::Error) -> bool {
    use crate::admin::ClientError;
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Timeout) => true,
        // An answer that does not decode is another version's, not a busy daemon.
        Some(ClientError::Io { error, .. }) => error.kind() != std::io::ErrorKind::InvalidData,
        Some(ClientError::Refused(why)) => why.contains("busy"),
        _ => false,
    }
}

fn print_raw(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(exit::OK.into());
    }
}

/// The site-wide alarms `status` shows in red, each as a state (its text changes with every
/// retry): a pipe must record when the site cannot store or dispatch Leap's notifications.
fn site_problems(r: &StatusReport) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // With the daemon down, what it reports is unknown, not fine.
    let running = r.daemon == DaemonState::Running;
    let mut say = |key: &str, problem: Option<bool>, text: &str| {
        let state = match problem {
            None if !running => "unknown (daemon not running)",
            None => "unknown",
            Some(true) => text,
            Some(false) => "ok",
        };
        out.push((key.to_string(), format!("{key}: {state}")));
    };
    let from_daemon = |problem: bool| running.then_some(problem);
    say(
        "storage",
        from_daemon(r.storage_error.is_some()),
        "FAILING: notifications are not stored (see status)",
    );
    say(
        "plan",
        from_daemon(r.plan_error.is_some()),
        "ERROR (see status)",
    );
    // Known on this machine whether or not the daemon runs.
    say(
        "clock",
        r.clock_synchronised.map(|s| !s),
        "NOT SYNCHRONISED (see status)",
    );
    let unmapped = match (running, r.unmapped_meters.as_slice()) {
        (false, _) => "unknown (daemon not running)".to_string(),
        (true, []) => "none".to_string(),
        (true, ids) => format!("NOT DISPATCHED, no [[meters]] entry: {}", ids.join(", ")),
    };
    out.push((
        "unmapped".to_string(),
        super::text::clean(&format!("unmapped meter ids: {unmapped}")),
    ));
    // From systemd, whether or not the daemon runs; its "up" names a duration that moves.
    if let Some(t) = r.tunnel.as_deref() {
        let state = if t.starts_with("DOWN") || t.starts_with("up?") {
            "DOWN (see status)"
        } else if t.starts_with("up") {
            "up"
        } else {
            t
        };
        let line = format!("reverse tunnel: {state}");
        out.push(("reverse tunnel".to_string(), super::text::clean(&line)));
    }
    out
}

/// One line per daemon and per meter, without the values that move every second (readings,
/// uptime), so a pipe sees a line only when something a technician cares about changes.
fn summary(r: &StatusReport) -> Vec<(String, String)> {
    let daemon = match r.daemon {
        DaemonState::Running => format!(
            "daemon running (pid {})",
            r.pid.map_or("?".into(), |p| p.to_string())
        ),
        DaemonState::NotRunning => "daemon NOT RUNNING".into(),
    };
    let mut out = vec![("".to_string(), daemon)];
    out.extend(site_problems(r));
    if let Some(u) = &r.uplink {
        // Connected or not, not since when: the duration moves every second.
        let state = if u.connected {
            "connected"
        } else {
            "NOT CONNECTED (see status)"
        };
        let line = format!("MQTT uplink {state}: {}", u.url);
        out.push(("uplink".to_string(), super::text::clean(&line)));
    }
    let down = r.daemon == DaemonState::NotRunning;
    for m in &r.meters {
        let command = match (&m.manual_override, &m.command) {
            // Nobody commands it, but the battery may hold its last setpoint until its
            // reversion timeout (or, without one, until `leap-edge release`).
            _ if down => "unknown (daemon not running)".into(),
            (Some(o), _) => override_words(o),
            (None, Some(c)) => format!("{} (event {})", command_words(c), c.event_id),
            (None, None) => "normal".into(),
        };
        let mut line = format!("meter {}: {command}", m.meter_id);
        if let Some(l) = m.device_state.as_ref().and_then(|d| d.limited_by) {
            line.push_str(&format!("; limited by {}", l.describe()));
        }
        // The state, not the message: an error's text changes with every retry.
        if super::status_view::standing_dispatch_error(m).is_some() {
            line.push_str("; dispatch ERROR (see status)");
        }
        if m.device_state
            .as_ref()
            .is_some_and(|d| d.consecutive_errors > 0)
        {
            line.push_str("; device ERROR (see status)");
        }
        out.push((m.meter_id.clone(), super::text::clean(&line)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::summary;
    use crate::admin::state::{BrokerConnection, DaemonState, StatusReport};
    use chrono::{Duration, Utc};

    fn report(uplink: Option<BrokerConnection>) -> StatusReport {
        StatusReport {
            daemon: DaemonState::Running,
            version: None,
            pid: Some(42),
            started_at: None,
            uptime_secs: None,
            now: Utc::now(),
            clock_synchronised: None,
            last_notification: None,
            listen: None,
            next_boundary: None,
            plan_error: None,
            unmapped_meters: Vec::new(),
            tunnel: None,
            last_run: None,
            meters: Vec::new(),
            leap: None,
            uplink,
            storage_error: None,
        }
    }

    #[test]
    fn a_piped_watch_prints_the_uplink_when_it_connects_or_drops_not_every_second() {
        let line = |r: &StatusReport, key: &str| {
            summary(r)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, l)| l)
        };
        assert_eq!(line(&report(None), "uplink"), None, "no uplink, no line");
        let mut u = BrokerConnection {
            url: "mqtts://broker:8883".into(),
            connected: true,
            since: Utc::now(),
            last_error: None,
            last_error_at: None,
            connections: 1,
            refused: None,
            session_lost_at: None,
        };
        let up = summary(&report(Some(u.clone())));
        assert_eq!(
            line(&report(Some(u.clone())), "uplink").unwrap(),
            "MQTT uplink connected: mqtts://broker:8883"
        );
        u.since -= Duration::seconds(90);
        assert_eq!(
            summary(&report(Some(u.clone()))),
            up,
            "time alone is no change"
        );
        u.connected = false;
        u.last_error = Some("connection reset".into());
        assert_eq!(
            line(&report(Some(u)), "uplink").unwrap(),
            "MQTT uplink NOT CONNECTED (see status): mqtts://broker:8883"
        );
    }

    /// The site-wide alarms reach a piped watch when they start and when they end. Before,
    /// `status --watch | tee site.log` recorded nothing while no notification was stored.
    #[test]
    fn a_piped_watch_prints_storage_plan_clock_tunnel_and_unmapped_alarms() {
        let lines = |r: &StatusReport| -> Vec<String> {
            summary(r).into_iter().skip(1).map(|(_, l)| l).collect()
        };
        let mut r = report(None);
        r.clock_synchronised = Some(true);
        r.tunnel = Some("up (ssh connected 3 min)".into());
        assert_eq!(
            lines(&r),
            [
                "storage: ok",
                "plan: ok",
                "clock: ok",
                "unmapped meter ids: none",
                "reverse tunnel: up"
            ]
        );
        r.storage_error = Some("disk full at 10:00".into());
        r.plan_error = Some("bad".into());
        r.clock_synchronised = Some(false);
        r.tunnel = Some("DOWN, leap-edge-tunnel.service failed: Leap cannot reach us".into());
        r.unmapped_meters = vec!["m9".into()];
        let bad = lines(&r);
        assert_eq!(
            bad,
            [
                "storage: FAILING: notifications are not stored (see status)",
                "plan: ERROR (see status)",
                "clock: NOT SYNCHRONISED (see status)",
                "unmapped meter ids: NOT DISPATCHED, no [[meters]] entry: m9",
                "reverse tunnel: DOWN (see status)"
            ]
        );
        // The error's text changes with every retry; the line does not.
        r.storage_error = Some("disk full at 10:01".into());
        assert_eq!(lines(&r), bad);
        // The daemon stopped: what it reported is unknown now, not "ok".
        r.daemon = DaemonState::NotRunning;
        r.storage_error = None;
        r.tunnel = Some("not installed".into());
        r.clock_synchronised = Some(true);
        assert_eq!(
            lines(&r),
            [
                "storage: unknown (daemon not running)",
                "plan: unknown (daemon not running)",
                "clock: ok",
                "unmapped meter ids: unknown (daemon not running)",
                "reverse tunnel: not installed"
            ]
        );
    }

    /// Nobody commands the battery while the daemon is down, but it may still hold its
    /// last setpoint (until its reversion timeout, or `leap-edge release`): not "normal".
    #[test]
    fn a_piped_watch_does_not_call_a_meter_normal_while_the_daemon_is_down() {
        let lines = |r: &StatusReport| -> Vec<String> {
            summary(r).into_iter().skip(1).map(|(_, l)| l).collect()
        };
        let mut r = report(None);
        r.daemon = DaemonState::NotRunning;
        r.meters.push(crate::admin::state::MeterReport {
            meter_id: "m1".into(),
            name: None,
            device: "bess".into(),
            command: None,
            manual_override: None,
            device_state: None,
            last_error: None,
            active_timeslot: None,
            last_audit: None,
        });
        assert_eq!(
            lines(&r).last().unwrap(),
            "meter m1: unknown (daemon not running)"
        );
    }
}
