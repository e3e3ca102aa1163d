//! The status report as lines of text: 80 columns by default (meter names, short ids),
//! everything with `--wide`. Pure, so `--watch` can redraw only when something changed.

use super::table::fit;
use super::text::{self, Zone, clean, kw};
use crate::admin::OverrideAction;
use crate::admin::state::{
    CommandReport, DaemonState, DeviceReport, MeterReport, OverrideReport, StatusReport,
};
use crate::config::Config;
use crate::model::{ExecMode, Target};

pub(crate) struct View {
    pub(crate) wide: bool,
    pub(crate) zone: Zone,
    /// Red for problems (only on a terminal; never in `--watch` diffs).
    pub(crate) color: bool,
}

pub(super) fn render(r: &StatusReport, config: &Config, v: &View) -> Vec<String> {
    let mut out = header(r, config, v);
    out.push(String::new());
    // Three control periods without a reading, and never less than 10 s.
    let stale = i64::try_from(config.site.control_period_ms.saturating_mul(3) / 1000)
        .unwrap_or(i64::MAX)
        .max(STALE_READING_SECS);
    out.extend(meters(r, stale, v));
    out
}

fn alarm(v: &View, s: &str) -> String {
    if v.color {
        super::output::alarm(s)
    } else {
        s.to_string()
    }
}

/// `line` with its last cell `tail` in alarm colour (the STATE column is the last one).
fn paint_tail(line: &str, tail: &str, v: &View) -> String {
    match line.strip_suffix(tail) {
        Some(head) if v.color => format!("{head}{}", alarm(v, tail)),
        _ => line.to_string(),
    }
}

fn header(r: &StatusReport, config: &Config, v: &View) -> Vec<String> {
    let mut out = Vec::new();
    let z = v.zone;
    match r.daemon {
        DaemonState::Running => {
            out.push(format!(
                "leap-edge {}: running (pid {}) since {} ({})",
                r.version.as_deref().unwrap_or("?"),
                r.pid.map_or("?".into(), |p| p.to_string()),
                r.started_at.map_or("?".into(), |t| z.time(t)),
                text::duration(r.uptime_secs.unwrap_or(0)),
            ));
            let clock = match r.clock_synchronised {
                Some(true) => "synchronised".to_string(),
                Some(false) => alarm(v, "NOT SYNCHRONISED"),
                None => "unknown".to_string(),
            };
            out.push(format!(
                "listening on {}; clock {clock}",
                r.listen.as_deref().unwrap_or("?")
            ));
        }
        DaemonState::NotRunning => out.extend(down_lines(r, config, v)),
    }
    out.push(tunnel_line(r, config, v));
    if let Some(u) = &r.uplink {
        out.push(uplink_line(u, r.now, v));
        if let Some(at) = u.session_lost_at {
            out.push(session_lost_line(at, config.leap.api_key.is_some(), v));
        }
        if let Some(refused) = &u.refused {
            out.push(refused_line(refused, v));
        }
    }
    out.push(match &r.last_notification {
        Some(l) => format!(
            "last notification: {} from {}",
            z.text(&l.received_at),
            clean(l.peer.as_deref().unwrap_or("?"))
        ),
        None => "last notification: none stored".into(),
    });
    if let Some(e) = &r.storage_error {
        out.push(format!(
            "{}: {} (see the journal: `journalctl -u leap-edge`)",
            alarm(v, "STORAGE FAILING"),
            clean(e)
        ));
    }
    if let Some(t) = r.next_boundary {
        out.push(format!(
            "next plan boundary: {} (in {})",
            z.time(t),
            text::duration((t - r.now).num_seconds())
        ));
    }
    out.extend(plan_alarms(r, v));
    if let Some(l) = &r.leap {
        out.extend(leap_lines(l, r.now, v));
    }
    out
}

/// What keeps the plan from being followed: it could not be read, or timeslots name meters
/// this gateway does not have.
fn plan_alarms(r: &StatusReport, v: &View) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(e) = &r.plan_error {
        lines.push(format!("PLAN ERROR: {}", clean(e)));
    }
    if !r.unmapped_meters.is_empty() {
        lines
            .push("NOT DISPATCHED: timeslots for meter(s) not in [[meters]] (an id typo?):".into());
    }
    let mut out: Vec<String> = lines
        .into_iter()
        .map(|l| alarm(v, &if v.wide { l } else { fit(&l, 80) }))
        .collect();
    // Whole, one per line: a cut id cannot be told from the configured one it resembles.
    out.extend(
        r.unmapped_meters
            .iter()
            .map(|m| alarm(v, &format!("  {}", clean(m)))),
    );
    out
}

/// The reverse tunnel's unit state, from systemd (the CLI asks, not the daemon).
fn tunnel_line(r: &StatusReport, config: &Config, v: &View) -> String {
    let tunnel = match r.tunnel.as_deref().unwrap_or("unknown") {
        // A gateway on a broker needs no tunnel: say so, not only that there is none.
        "not installed" if config.uplink.mqtt.is_some() => {
            "not installed (dispatches come through the MQTT uplink)"
        }
        other => other,
    };
    let tunnel = if tunnel.starts_with("DOWN") || tunnel.starts_with("up?") {
        alarm(v, tunnel)
    } else {
        tunnel.to_string()
    };
    format!("reverse tunnel: {tunnel}")
}

/// The MQTT uplink: where relayed dispatches come from when the gateway dials a broker.
fn uplink_line(
    u: &crate::admin::state::BrokerConnection,
    now: chrono::DateTime<chrono::Utc>,
    v: &View,
) -> String {
    let when = format!(
        "since {} ({})",
        v.zone.time(u.since),
        text::duration((now - u.since).num_seconds())
    );
    let url = clean(&u.url);
    let error = u.last_error.as_deref().map(clean);
    let line = if u.connected {
        let fresh = u.last_error_at.is_some_and(|t| t >= u.since);
        match error.filter(|_| fresh) {
            Some(e) => format!("MQTT uplink: connected to {url} {when}, but {e}"),
            None => return format!("MQTT uplink: connected to {url} {when}"),
        }
    } else {
        let e = error.unwrap_or_else(|| "no answer yet".into());
        format!(
            "MQTT uplink: NOT CONNECTED to {url} {when}: {e}; relayed dispatches wait in the broker"
        )
    };
    alarm(v, &if v.wide { line } else { fit(&line, 80) })
}

/// The broker had no session for this gateway (its first connection, a session that
/// expired while the gateway was away, a broker that lost its state): parts it held for us,
/// which the relay counted delivered, are gone. Only Leap's poll finds them again.
fn session_lost_line(at: chrono::DateTime<chrono::Utc>, polls: bool, v: &View) -> String {
    let line = format!(
        "MQTT: broker had no session for us at {}: dispatches it held are gone; {}",
        v.zone.time(at),
        if polls {
            "the Leap poll looks for them"
        } else {
            "set [leap] api_key so the poll can find them"
        }
    );
    let line = if v.wide { line } else { fit(&line, 80) };
    if polls { line } else { alarm(v, &line) }
}

/// Relayed messages this gateway acknowledged without storing: dispatches Leap got a 200
/// for that never reached the plan.
fn refused_line(r: &crate::admin::state::RefusedMessages, v: &View) -> String {
    let line = format!(
        "MQTT: {} message(s) REFUSED, not stored (last {}: {})",
        r.total,
        v.zone.time(r.last_at),
        clean(&r.last_error)
    );
    alarm(v, &if v.wide { line } else { fit(&line, 80) })
}

/// Issue 13: the polling backstop (pushes that never arrived are an alarm) and the
/// `[schedule]` jobs' next fire times.
fn leap_lines(
    l: &crate::admin::state::LeapStatus,
    now: chrono::DateTime<chrono::Utc>,
    v: &View,
) -> Vec<String> {
    let mut out = Vec::new();
    let b = &l.backstop;
    if b.enabled {
        let last = b.last_success.map_or("never".into(), |t| v.zone.time(t));
        let first = b.first_seen_by_poll;
        out.push(format!(
            "Leap poll: last success {last}; {first} found only by polling"
        ));
        // Only recent ones say the push path is broken now; older ones tell of an outage
        // that is over (or of polls before `leap webhook set`).
        if let Some(newest) = b.first_seen_by_poll_newest.filter(|_| first > 0) {
            let newest = v.zone.time(newest);
            let recent = b.first_seen_by_poll_recent;
            let line = if recent > 0 {
                format!(
                    "PUSHES MISSED: {recent} in the last 7 days came only by polling (newest {newest})"
                )
            } else {
                format!("  none in the last 7 days (newest {newest})")
            };
            let line = if v.wide { line } else { fit(&line, 80) };
            out.push(if recent > 0 { alarm(v, &line) } else { line });
        }
        if let Some(e) = &b.last_error {
            let line = format!("LAST POLL FAILED: {}", clean(e));
            out.push(alarm(v, &if v.wide { line } else { fit(&line, 80) }));
        }
    } else {
        out.push("Leap poll: off (no [leap] api_key)".into());
    }
    let next: Vec<String> = l
        .schedule
        .iter()
        .map(|j| match j.next_fire {
            // Relative times keep the line within 80 columns; --json has the instants.
            Some(t) => format!("{} in {}", j.job, text::duration((t - now).num_seconds())),
            None => format!("{} never", j.job),
        })
        .collect();
    if !next.is_empty() {
        out.extend(wrap_list(
            "schedule: ",
            &next,
            if v.wide { usize::MAX } else { 80 },
        ));
    }
    out
}

/// Daemon down: say so, what the socket looks like, and how to start it again the way it
/// was last run.
fn down_lines(r: &StatusReport, config: &Config, v: &View) -> Vec<String> {
    let sock = &config.admin.socket;
    let why = if std::fs::symlink_metadata(sock).is_ok() {
        format!("stale socket {} (nothing listens)", sock.display())
    } else {
        format!("no socket at {}", sock.display())
    };
    let mut out = vec![format!(
        "leap-edge daemon: {} ({why})",
        alarm(v, "NOT RUNNING")
    )];
    if crate::runlock::held(&config.storage.path) {
        // Starting or stuck: it holds the database but does not answer.
        out[0] = format!(
            "leap-edge daemon: {} (it holds the database lock but does not answer on {})",
            alarm(v, "NOT ANSWERING"),
            sock.display()
        );
    }
    match &r.last_run {
        Some(l) => {
            let how = match &l.systemd_unit {
                Some(u) => format!("by systemd ({u})"),
                None => "by hand".into(),
            };
            out.push(format!(
                "last run {how}, pid {}, started {}",
                l.pid,
                v.zone.time(l.started_at)
            ));
            out.push(match (&l.systemd_unit, &l.config) {
                (Some(u), _) => format!("start it with `systemctl start {u}`"),
                (None, Some(c)) => format!("start it with `leap-edge --config {} run`", clean(c)),
                (None, None) => "start it with `leap-edge run`".into(),
            });
        }
        None => out.push(
            "never run on this database; start it with `systemctl start leap-edge` or `leap-edge run`"
                .into(),
        ),
    }
    out.extend(no_reversion(config, v));
    out
}

/// Devices that cannot hand the battery back by themselves: a daemon that stopped
/// mid-dispatch without its release (run by hand, killed) left them on their setpoint.
fn no_reversion(config: &Config, v: &View) -> Vec<String> {
    config
        .devices
        .iter()
        .filter(|(_, d)| {
            let path = config.devices_dir.join(format!("{}.toml", d.profile));
            crate::device::profile::load(&path).is_ok_and(|p| !p.reverts_by_itself())
        })
        .map(|(name, _)| {
            alarm(
                v,
                &format!(
                    "device {name} has no reversion timeout: if the daemon stopped mid-dispatch without handing back, it holds its last setpoint until `leap-edge release`"
                ),
            )
        })
        .collect()
}

fn meters(r: &StatusReport, stale_secs: i64, v: &View) -> Vec<String> {
    if r.meters.is_empty() {
        return vec!["No meters configured.".into()];
    }
    let mut lines = Vec::new();
    let capture = |headers: &[&str], rows: &[Vec<String>]| table_lines(headers, rows);
    if r.daemon == DaemonState::NotRunning {
        let mut rows: Vec<Vec<String>> = r.meters.iter().map(|m| down_row(m, r, v)).collect();
        if !v.wide {
            fit_first_column(&mut rows, 80);
        }
        let h = ["METER", "ACTIVE NOW (database)", "LAST AUDIT"];
        lines.extend(capture(&h, &rows));
        return lines;
    }
    let mut rows: Vec<Vec<String>> = r.meters.iter().map(|m| row(m, r, v)).collect();
    if !v.wide {
        fit_first_column(&mut rows, 80);
    }
    let h: &[&str] = if v.wide {
        &[
            "METER", "NAME", "DEVICE", "COMMAND", "EVENT", "UNTIL", "SOC", "BATTERY", "GRID",
            "STATE",
        ]
    } else {
        &[
            "METER", "COMMAND", "UNTIL", "SOC", "BATTERY", "GRID", "STATE",
        ]
    };
    let table = capture(h, &rows);
    lines.extend(table.into_iter().enumerate().map(|(i, line)| {
        // Coloured after the layout: the table escapes and measures plain text.
        let state = i.checked_sub(1).and_then(|i| rows[i].last());
        match state {
            Some(s) if s.starts_with("BLIND") || s.starts_with("EXPORTS") => {
                paint_tail(&line, s, v)
            }
            _ => line,
        }
    }));
    for m in &r.meters {
        lines.extend(notes(m, (r.now, stale_secs), v));
    }
    lines
}

fn meter_label(m: &MeterReport, v: &View) -> String {
    match (&m.name, v.wide) {
        (Some(n), false) => n.clone(),
        _ => m.meter_id.clone(),
    }
}

/// The meter column gets what the other columns leave of `width` (at least 9 characters).
fn fit_first_column(rows: &mut [Vec<String>], width: usize) {
    let Some(n) = rows.first().map(Vec::len) else {
        return;
    };
    let others: usize = (1..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .sum::<usize>()
        + 2 * (n - 1);
    let room = width.saturating_sub(others).max(9);
    for r in rows.iter_mut() {
        r[0] = fit(&r[0], room);
    }
}

fn row(m: &MeterReport, r: &StatusReport, v: &View) -> Vec<String> {
    let (command, until, event) = match (&m.manual_override, &m.command) {
        (Some(o), _) => (override_words(o), Some(o.until), "manual".to_string()),
        (None, Some(c)) => (command_words(c), Some(c.end), c.event_id.clone()),
        (None, None) => ("normal".to_string(), None, "-".into()),
    };
    let until = until.map_or("-".into(), |t| until_text(t, r, v));
    let d = m.device_state.as_ref();
    let soc = d
        .and_then(|d| d.soc_pct)
        .map_or("-".into(), |s| format!("{s:.0}%"));
    // Issue 9: blind and unavoidable export come first: they say why a command is not
    // being followed; the notes below the table say more.
    let mut state = match d {
        None => "-".to_string(),
        Some(d) if d.blind.is_some() => "BLIND".into(),
        Some(d) if d.export_unavoidable => "EXPORTS".into(),
        Some(d) if d.consecutive_errors > 0 => "ERROR".into(),
        Some(_) => "ok".into(),
    };
    if d.is_some_and(|d| d.no_reversion) {
        state.push('*');
    }
    let batt = kw(d.and_then(|d| d.battery_kw));
    let grid = kw(d.and_then(|d| d.grid_kw));
    if v.wide {
        vec![
            meter_label(m, v),
            m.name.clone().unwrap_or("-".into()),
            m.device.clone(),
            command,
            event,
            until,
            soc,
            batt,
            grid,
            state,
        ]
    } else {
        vec![
            meter_label(m, v),
            fit(&command, 26),
            until,
            soc,
            fit(&batt, 8),
            fit(&grid, 8),
            state,
        ]
    }
}

/// Time of day when within a day, else the full time.
fn until_text(t: chrono::DateTime<chrono::Utc>, r: &StatusReport, v: &View) -> String {
    let short = v.zone.short(t, r.now);
    if v.wide || (t - r.now).num_hours() >= 24 {
        v.zone.time(t)
    } else if short.len() <= 8 {
        short
    } else {
        // Tomorrow: the weekday says so (`--for 23h` must not read as past) and keeps the
        // table in 80 columns, which the full date and zone did not.
        v.zone.weekday_time(t)
    }
}

fn down_row(m: &MeterReport, r: &StatusReport, v: &View) -> Vec<String> {
    let active = m.active_timeslot.as_ref().map_or("none".to_string(), |a| {
        let what = a.energy_kw.map_or("maximum".into(), |k| kw(Some(k)));
        let test = if a.test { " (test)" } else { "" };
        let id = if v.wide {
            format!(" {}", a.event_id)
        } else {
            String::new()
        };
        format!("{what}{test}{id} until {}", v.zone.short(a.end_time, r.now))
    });
    let audit = m.last_audit.as_ref().map_or("none".to_string(), |a| {
        let outcome = if a.outcome == "ok" {
            String::new()
        } else {
            format!(" ({})", a.outcome)
        };
        format!("{} {}{outcome}", v.zone.text(&a.at), a.action)
    });
    if v.wide {
        vec![meter_label(m, v), active, audit]
    } else {
        vec![meter_label(m, v), fit(&active, 28), fit(&audit, 34)]
    }
}

/// Below the table: requested vs achieved with the binding limit, and errors.
fn notes(
    m: &MeterReport,
    (now, stale_secs): (chrono::DateTime<chrono::Utc>, i64),
    v: &View,
) -> Vec<String> {
    let mut out = Vec::new();
    let label = if v.wide {
        meter_label(m, v)
    } else {
        fit(&meter_label(m, v), 20)
    };
    let max = if v.wide { usize::MAX } else { 80 };
    if let Some(d) = &m.device_state
        && (m.command.is_some() || m.manual_override.is_some())
        && d.setpoint_kw.is_some()
    {
        let asked = d
            .requested_kw
            .map_or("the maximum".to_string(), |k| kw(Some(k)));
        let line = match d.limited_by {
            Some(l) => format!(
                "{label}: asked {asked}, setpoint {}: limited by {}",
                kw(d.setpoint_kw),
                l.describe()
            ),
            None => format!("{label}: asked {asked}, setpoint {}", kw(d.setpoint_kw)),
        };
        out.push(fit(&line, max));
    }
    out.extend(safety_notes(
        m.device_state.as_ref(),
        (now, stale_secs),
        &label,
        v,
        max,
    ));
    // A device error is shown while errors go on; one the device recovered from is history.
    let device_err = m
        .device_state
        .as_ref()
        .filter(|d| d.consecutive_errors > 0)
        .and_then(|d| d.last_error.as_ref());
    let err = standing_dispatch_error(m).or(device_err);
    if let Some(e) = err {
        out.push(fit(
            &format!("{label}: {} {}", alarm(v, "error:"), clean(e)),
            max,
        ));
    }
    out
}

/// The meter's dispatch error, unless it is a command the loop handed back at its first
/// step ("not applied: …", the readings untrusted then) and follows by itself now: that
/// error stays on the apply row until the next dispatch row, and shown in red for the rest
/// of the timeslot it would say the battery is not following while it is.
pub(crate) fn standing_dispatch_error(m: &crate::admin::state::MeterReport) -> Option<&String> {
    let following = m
        .device_state
        .as_ref()
        .is_some_and(|d| !d.released && d.blind.is_none());
    standing(m.last_error.as_ref(), following)
}

fn standing(error: Option<&String>, following: bool) -> Option<&String> {
    error.filter(|e| !(following && e.contains("not applied: ")))
}

/// Readings older than this, or three control periods if longer, are marked: the loop reads
/// every control period (1 s by default), so that long without one means readings fail.
const STALE_READING_SECS: i64 = 10;

/// SPEC §2.13 in words: blind, export the battery cannot prevent, no device reversion.
fn safety_notes(
    d: Option<&DeviceReport>,
    (now, stale_secs): (chrono::DateTime<chrono::Utc>, i64),
    label: &str,
    v: &View,
    max: usize,
) -> Vec<String> {
    let Some(d) = d else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(why) = &d.blind {
        // Whether the hand-back took comes first: a long reason is cut at 80 columns.
        let back = match (d.released, d.no_reversion) {
            (true, _) => "handed back",
            (false, false) => "hand-back NOT confirmed (the device reverts after its timeout)",
            (false, true) => "hand-back NOT confirmed (run `leap-edge release`)",
        };
        let line = format!("{label}: {} {back}: {}", alarm(v, "BLIND,"), clean(why));
        out.push(fit(&line, max));
    }
    if let Some(at) = d.last_telemetry_at
        && (now - at).num_seconds() >= stale_secs
    {
        let line = format!(
            "{label}: last reading {} old: SOC, BATTERY and GRID are from then",
            super::text::duration((now - at).num_seconds())
        );
        out.push(fit(&line, max));
    }
    if d.export_unavoidable {
        let line = format!(
            "{label}: {} site generation exceeds what the battery can absorb",
            alarm(v, "EXPORTS:")
        );
        out.push(fit(&line, max));
    }
    if d.no_reversion {
        let line =
            format!("{label}: * device cannot revert by itself; `leap-edge release` hands it back");
        out.push(fit(&line, max));
    }
    out
}

/// `prefix` then the items joined by ", ", continued on indented lines so none is wider
/// than `width`.
fn wrap_list(prefix: &str, items: &[String], width: usize) -> Vec<String> {
    let indent = " ".repeat(prefix.chars().count());
    let mut lines = Vec::new();
    let mut line = prefix.to_string();
    for (i, item) in items.iter().enumerate() {
        let sep = if i + 1 < items.len() { "," } else { "" };
        let fresh = line.trim().is_empty() || line == prefix;
        if !fresh && line.chars().count() + 1 + item.chars().count() + sep.len() > width {
            lines.push(line);
            line = indent.clone();
        } else if !fresh {
            line.push(' ');
        }
        line.push_str(item);
        line.push_str(sep);
    }
    lines.push(line);
    lines
}

pub(crate) fn command_words(c: &CommandReport) -> String {
    let what = match c.target {
        Target::Kw(k) => format!("reduce {}", kw(Some(k))),
        Target::Maximum => "reduce maximum".into(),
        Target::Setpoint(k) => format!("setpoint {}", kw(Some(k))),
    };
    match c.mode {
        ExecMode::DryRun => format!("dry-run: {what}"),
        ExecMode::Execute => what,
    }
}

pub(crate) fn override_words(o: &OverrideReport) -> String {
    match o.action {
        OverrideAction::Hold => "manual hold".into(),
        OverrideAction::Release => "manual normal operation".into(),
        OverrideAction::Charge(k) => format!("manual charge {}", kw(Some(k))),
        OverrideAction::Discharge(k) => format!("manual discharge {}", kw(Some(k))),
    }
}

/// The table as lines (cells escaped), for printing or for `--watch` to compare.
pub(crate) fn table_lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

#[cfg(test)]
mod wrap_tests {
    #[test]
    fn a_long_schedule_wraps_within_80_columns() {
        let items: Vec<String> = [
            "poll in 4 min 38 s",
            "prune in 6 h 56 min",
            "integrity in 7 h 26 min",
            "upload in 5 h 55 min",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let lines = super::wrap_list("schedule: ", &items, 80);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:?}");
        assert!(lines[1].starts_with("          upload"), "{lines:?}");
        assert_eq!(lines.join(" ").split_whitespace().count(), "schedule: poll in 4 min 38 s, prune in 6 h 56 min, integrity in 7 h 26 min, upload in 5 h 55 min".split_whitespace().count());
    }
}

#[cfg(test)]
mod error_tests {
    /// A first step handed back ("not applied") is history once the loop follows the
    /// command; while it does not, and any other dispatch error, is shown.
    #[test]
    fn a_not_applied_first_step_is_not_shown_once_the_loop_follows() {
        let not_applied =
            "device bess for meter m1: not applied: no site-meter reading".to_string();
        let other = "device bess for meter m1: no answer within 5000 ms".to_string();
        assert_eq!(super::standing(Some(&not_applied), true), None);
        assert_eq!(
            super::standing(Some(&not_applied), false),
            Some(&not_applied)
        );
        assert_eq!(super::standing(Some(&other), true), Some(&other));
        assert_eq!(super::standing(None, false), None);
    }
}

#[cfg(test)]
mod uplink_tests {
    use super::{View, session_lost_line, uplink_line};
    use crate::admin::state::BrokerConnection;
    use crate::cli::text::Zone;
    use chrono::{Duration, TimeZone, Utc};

    fn view() -> View {
        View {
            wide: true,
            zone: Zone::Utc,
            color: false,
        }
    }

    /// A broker that kept no session for the gateway: what it held is gone, and only Leap's
    /// poll finds it again. Before, only a log line said so.
    #[test]
    fn a_lost_broker_session_says_what_recovers_it() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 5, 20, 1).unwrap();
        assert_eq!(
            session_lost_line(at, true, &view()),
            "MQTT: broker had no session for us at 2026-11-30 05:20:01 UTC: dispatches it held are gone; the Leap poll looks for them"
        );
        let without = session_lost_line(at, false, &view());
        assert!(
            without.ends_with("set [leap] api_key so the poll can find them"),
            "{without}"
        );
        let narrow = View {
            wide: false,
            ..view()
        };
        assert!(session_lost_line(at, false, &narrow).chars().count() <= 80);
    }

    #[test]
    fn the_uplink_line_says_connected_or_why_not_and_since_when() {
        let since = Utc.with_ymd_and_hms(2026, 11, 30, 5, 20, 1).unwrap();
        let now = since + Duration::seconds(185);
        let mut u = BrokerConnection {
            url: "mqtts://broker.example:8883".into(),
            connected: true,
            since,
            last_error: Some("connection refused".into()),
            last_error_at: Some(since - Duration::seconds(10)),
            connections: 2,
            refused: None,
            session_lost_at: None,
        };
        assert_eq!(
            uplink_line(&u, now, &view()),
            "MQTT uplink: connected to mqtts://broker.example:8883 since 2026-11-30 05:20:01 UTC (3 min 5 s)"
        );
        u.last_error = Some("the broker refused the subscription".into());
        u.last_error_at = Some(since + Duration::seconds(1));
        let refused = uplink_line(&u, now, &view());
        assert!(
            refused.ends_with("(3 min 5 s), but the broker refused the subscription"),
            "{refused}"
        );
        u.connected = false;
        u.last_error = Some("I/O: Connection refused (os error 111)\x1b[2J".into());
        let down = uplink_line(&u, now, &view());
        assert!(down.starts_with("MQTT uplink: NOT CONNECTED to mqtts://broker.example:8883 since 2026-11-30 05:20:01 UTC (3 min 5 s): I/O: Connection refused (os error 111)\\e[2J"), "{down}");
        assert!(
            down.ends_with("relayed dispatches wait in the broker"),
            "{down}"
        );
        let narrow = View {
            wide: false,
            ..view()
        };
        assert!(uplink_line(&u, now, &narrow).chars().count() <= 80);
    }

    #[test]
    fn a_gateway_on_a_broker_says_why_it_has_no_tunnel() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
        let mqtt = "[uplink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"site-a\"\n";
        let parse =
            |t: &str| crate::config::Config::parse_str(t, std::path::Path::new("t.toml")).unwrap();
        let report = running_report(Utc::now());
        let lines = super::render(&report, &parse(&format!("{base}{mqtt}")), &view());
        assert!(
            lines.contains(
                &"reverse tunnel: not installed (dispatches come through the MQTT uplink)".into()
            ),
            "{lines:#?}"
        );
        let lines = super::render(&report, &parse(base), &view());
        assert!(
            lines.contains(&"reverse tunnel: not installed".into()),
            "{lines:#?}"
        );
    }

    fn running_report(now: chrono::DateTime<Utc>) -> crate::admin::state::StatusReport {
        use crate::admin::state::{DaemonState, StatusReport};
        StatusReport {
            daemon: DaemonState::Running,
            version: None,
            pid: Some(42),
            started_at: Some(now),
            uptime_secs: Some(0),
            now,
            clock_synchronised: Some(true),
            last_notification: None,
            listen: None,
            next_boundary: None,
            plan_error: None,
            unmapped_meters: Vec::new(),
            tunnel: Some("not installed".into()),
            last_run: None,
            meters: Vec::new(),
            leap: None,
            uplink: None,
            storage_error: None,
        }
    }

    #[test]
    fn an_end_tomorrow_fits_and_a_storage_failure_is_said() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
        let parse =
            |t: &str| crate::config::Config::parse_str(t, std::path::Path::new("t.toml")).unwrap();
        let report = running_report(Utc::now());
        // An end tomorrow fits the narrow column: weekday and time, not the full date.
        let late = Utc.with_ymd_and_hms(2026, 11, 30, 23, 50, 0).unwrap();
        let at_late = crate::admin::state::StatusReport {
            now: late,
            ..report.clone()
        };
        let narrow = View {
            wide: false,
            ..view()
        };
        let t = late + chrono::Duration::hours(1);
        assert_eq!(super::until_text(t, &at_late, &narrow), "Tue 00:50:00");
        assert_eq!(
            super::until_text(late + chrono::Duration::minutes(5), &at_late, &narrow),
            "23:55:00"
        );
        // A storage failure is said on its own line, not hidden behind the last one stored.
        let failing = crate::admin::state::StatusReport {
            storage_error: Some("the last notification could not be stored: disk full".into()),
            ..report
        };
        let lines = super::render(&failing, &parse(base), &view());
        assert!(
            lines.iter().any(|l| l.starts_with(
                "STORAGE FAILING: the last notification could not be stored: disk full"
            )),
            "{lines:#?}"
        );
    }
}

#[cfg(test)]
mod poll_tests {
    use super::{View, leap_lines};
    use crate::admin::state::LeapStatus;
    use crate::cli::text::Zone;
    use crate::leap::backstop::BackstopStatus;
    use chrono::{TimeZone, Utc};

    fn lines(total: u64, recent: u64) -> Vec<String> {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        let l = LeapStatus {
            backstop: BackstopStatus {
                enabled: true,
                last_success: Some(now),
                first_seen_by_poll: total,
                first_seen_by_poll_recent: recent,
                first_seen_by_poll_newest: (total > 0).then(|| now - chrono::Duration::days(9)),
                ..BackstopStatus::default()
            },
            schedule: Vec::new(),
        };
        let v = View {
            wide: false,
            zone: Zone::Utc,
            color: false,
        };
        leap_lines(&l, now, &v)
    }

    #[test]
    fn only_recent_timeslots_found_by_polling_raise_the_alarm() {
        let alarm = lines(12, 3);
        assert!(
            alarm[1].starts_with("PUSHES MISSED: 3 in the last 7 days"),
            "{alarm:?}"
        );
        let over = lines(12, 0);
        assert!(
            over[1].contains("none in the last 7 days (newest 2026-11-21"),
            "{over:?}"
        );
        assert!(!over.join("\n").contains("MISSED"), "{over:?}");
        assert_eq!(lines(0, 0).len(), 1);
        assert!(lines(12, 3).iter().all(|l| l.chars().count() <= 80));
    }
}
