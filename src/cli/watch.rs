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
                color: true,
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
    for m in &r.meters {
        let command = match (&m.manual_override, &m.command) {
            (Some(o), _) => override_words(o),
            (None, Some(c)) => format!("{} (event {})", command_words(c), c.event_id),
            (None, None) => "normal".into(),
        };
        let mut line = format!("meter {}: {command}", m.meter_id);
        if let Some(l) = m.device_state.as_ref().and_then(|d| d.limited_by) {
            line.push_str(&format!("; limited by {}", l.describe()));
        }
        // The state, not the message: an error's text changes with every retry.
        if m.last_error.is_some() {
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
        assert_eq!(summary(&report(None)).len(), 1, "no uplink, no line");
        let mut u = BrokerConnection {
            url: "mqtts://broker:8883".into(),
            connected: true,
            since: Utc::now(),
            last_error: None,
            last_error_at: None,
            connections: 1,
            refused: None,
        };
        let up = summary(&report(Some(u.clone())));
        assert_eq!(
            up[1],
            (
                "uplink".into(),
                "MQTT uplink connected: mqtts://broker:8883".into()
            )
        );
        u.since -= Duration::seconds(90);
        assert_eq!(
            summary(&report(Some(u.clone()))),
            up,
            "time alone is no change"
        );
        u.connected = false;
        u.last_error = Some("connection reset".into());
        let down = summary(&report(Some(u)));
        assert_eq!(
            down[1].1,
            "MQTT uplink NOT CONNECTED (see status): mqtts://broker:8883"
        );
    }
}
