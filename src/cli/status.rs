//! `leap-edge status`: one screen for a technician. Asks the running daemon over the admin
//! socket; when the daemon is down, says so and shows what the database knows.

use super::{exit, table};
use crate::admin::{AdminClient, ClientError, Request};
use crate::config::Config;
use crate::store::{self, query};
use serde_json::{Value, json};

/// Exit code when the daemon is not running (as LSB `status` uses).
pub const NOT_RUNNING: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(AdminClient::new(&config.admin.socket).call(&Request::Status)) {
        Ok(body) => {
            if args.json {
                let mut body = body;
                body["daemon"] = json!("running");
                body["tunnel"] = json!(tunnel());
                crate::outln!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print_running(&body);
            }
            Ok(exit::OK)
        }
        Err(ClientError::NotRunning(_)) => down(config, args),
        Err(e) => Err(e.into()),
    }
}

fn down(config: &Config, args: &StatusArgs) -> anyhow::Result<u8> {
    let last = store::open_read_only(&config.storage.path)
        .ok()
        .and_then(|c| query::last_notification(&c).ok().flatten());
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"daemon": "not running", "last_notification": last, "clock_synchronised": crate::clock::synchronised(), "tunnel": tunnel()})
            )?
        );
    } else {
        crate::outln!(
            "leap-edge daemon: {} (no admin socket at {})",
            super::output::alarm("NOT RUNNING"),
            config.admin.socket.display()
        );
        crate::outln!("reverse tunnel: {}", tunnel());
        match last {
            Some(l) => crate::outln!(
                "last notification: {} from {}",
                l.received_at,
                l.peer.unwrap_or_default()
            ),
            None => crate::outln!("last notification: none stored"),
        }
        crate::outln!(
            "Start it with `systemctl start leap-edge`; `leap-edge schedule` shows what it would do."
        );
    }
    Ok(NOT_RUNNING)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_running(b: &Value) {
    let clock = match b["clock_synchronised"].as_bool() {
        Some(true) => "synchronised".to_string(),
        Some(false) => super::output::alarm("NOT SYNCHRONISED (dispatch timing may be off)"),
        None => "unknown".to_string(),
    };
    crate::outln!(
        "leap-edge {} running since {} ({} s)",
        s(&b["version"]),
        s(&b["started_at"]),
        s(&b["uptime_secs"])
    );
    crate::outln!("listening on {}; clock {clock}", s(&b["listen"]));
    crate::outln!("reverse tunnel: {}", tunnel());
    let last = &b["last_notification"];
    if last.is_null() {
        crate::outln!("last notification: none yet");
    } else {
        crate::outln!(
            "last notification: {} from {}",
            s(&last["received_at"]),
            s(&last["peer"])
        );
    }
    crate::outln!("next plan boundary: {}", s(&b["next_boundary"]));
    if !b["plan_error"].is_null() {
        crate::outln!(
            "{} {}",
            super::output::alarm("PLAN ERROR:"),
            s(&b["plan_error"])
        );
    }
    leap_lines(&b["leap"]);
    let rows: Vec<Vec<String>> = b["meters"]
        .as_array()
        .map(|ms| ms.iter().map(meter_row).collect())
        .unwrap_or_default();
    crate::outln!();
    table::print(
        &[
            "METER",
            "DEVICE",
            "COMMAND",
            "UNTIL",
            "SOC",
            "BATT KW",
            "GRID KW",
            "DEVICE STATE",
            "LAST ERROR",
        ],
        &rows,
    );
}

/// Issue 13: the polling backstop and the `[schedule]` jobs' next fire times.
fn leap_lines(l: &Value) {
    let b = &l["backstop"];
    if b["enabled"] == Value::Bool(true) {
        let first = b["first_seen_by_poll"].as_u64().unwrap_or(0);
        let seen = format!("{first} timeslot(s) first seen by polling");
        let seen = if first > 0 {
            super::output::alarm(&format!("{seen}: pushes did not arrive"))
        } else {
            seen
        };
        crate::outln!("Leap poll: last success {}; {seen}", s(&b["last_success"]));
        if !b["last_error"].is_null() {
            crate::outln!(
                "{} {}",
                super::output::alarm("LAST POLL FAILED:"),
                s(&b["last_error"])
            );
        }
    } else if !l.is_null() {
        crate::outln!("Leap poll: off (no [leap] api_key)");
    }
    let next: Vec<String> = l["schedule"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| format!("{} {}", s(&j["job"]), s(&j["next_fire"])))
        .collect();
    if !next.is_empty() {
        crate::outln!("next: {}", next.join(", "));
    }
}

fn meter_row(m: &Value) -> Vec<String> {
    let cmd = &m["command"];
    let command = if let Some(o) = m["override"].as_object() {
        format!(
            "OVERRIDE {} until {}",
            s(&o["action"]["action"]),
            s(&o["until"])
        )
    } else if cmd.is_null() {
        "normal".into()
    } else {
        let c = &cmd["command"];
        format!(
            "{} {} {}",
            s(&c["event_id"]),
            s(&c["cap"]),
            target(&c["target"])
        )
    };
    let live = &m["live"];
    let tel = &live["last_telemetry"];
    let num = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let state = if live.is_null() {
        "-".to_string()
    } else if live["consecutive_errors"].as_u64().unwrap_or(0) > 0 {
        "ERROR".into()
    } else if live["released"] == Value::Bool(true) && cmd.is_null() {
        "normal".into()
    } else {
        "remote control".into()
    };
    vec![
        m["name"].as_str().map_or(s(&m["meter_id"]), |n| {
            format!("{n} ({})", s(&m["meter_id"]))
        }),
        s(&m["device"]),
        command,
        s(&cmd["end"]),
        num(&tel["soc_pct"]),
        num(&tel["battery_kw"]),
        num(&tel["grid_kw"]),
        state,
        m["last_error"]
            .as_str()
            .or(live["last_error"].as_str())
            .unwrap_or("-")
            .to_string(),
    ]
}

fn target(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("kw") => format!("{} kW", s(&t["kw"])),
        Some("maximum") => "maximum".into(),
        Some("setpoint") => format!("setpoint {} kW", s(&t["kw"])),
        _ => s(t),
    }
}

/// The tunnel runs as its own systemd unit (systemd/leap-edge-tunnel.service); the CLI,
/// unsandboxed, asks systemd about it. "not installed" when the unit is absent.
pub fn tunnel() -> String {
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
    let state = std::process::Command::new("systemctl")
        .args(["is-active", "leap-edge-tunnel.service"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match state.as_str() {
        "active" => "up (leap-edge-tunnel.service active)".into(),
        "" => "unknown (systemctl unavailable)".into(),
        other => super::output::alarm(&format!(
            "DOWN (leap-edge-tunnel.service {other}): Leap cannot reach this gateway"
        )),
    }
}
