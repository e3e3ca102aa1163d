//! The technician's CLI through the real binary (issue 15): commissioning with no
//! configuration, the typed status contract, 80-column status that says what limits the
//! battery, a second daemon refused, status with the daemon down, audit "resumed", events'
//! revision table, and no Rust debug formatting anywhere a person reads.

use crate::common;

use common::*;
use leap_edge::admin::state::{DaemonState, Limit, StatusReport};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

/// `leap-edge sim` started with no configuration anywhere (an empty folder, no
/// LEAP_EDGE_CONFIG): what a technician runs before writing one.
struct Sim {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin())
            .args(["sim", "--listen", "127.0.0.1:0", "--every", "1"])
            .current_dir(dir.path())
            .env_remove("LEAP_EDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .split("Modbus TCP on 127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("sim without a config did not start: {first:?}"));
        Sim {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn site_config(port: u16) -> String {
    format!(
        "[[meters]]\nid = \"{METER}\"\ndevice = \"bat\"\nname = \"north roof\"\n\
         [devices.bat]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\n"
    )
}

fn status(d: &Daemon) -> StatusReport {
    let (code, out, err) = d.cli(&["status", "--json"]);
    assert!(code == 0 || code == 3, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a StatusReport ({e}): {out}"))
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    let held = common::eventually_blocking(Duration::from_secs(20), f);
    assert!(held, "timed out waiting for {what}");
}

#[test]
fn commissioning_probe_and_sim_need_no_config() {
    let sim = Sim::start();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["devices", "probe", &format!("127.0.0.1:{}", sim.port)])
        .current_dir(empty.path())
        .env_remove("LEAP_EDGE_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SunSpec"), "{text}");
    // A configuration that is given is still read, and a bad one still refused.
    std::fs::write(empty.path().join("bad.toml"), "nonsense = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["--config", "bad.toml", "sim", "--listen", "127.0.0.1:0"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[tokio::test]
async fn status_is_the_typed_contract_fits_80_columns_and_names_the_limit() {
    let sim = Sim::start();
    let d = Daemon::start_with(&site_config(sim.port));
    let s = status(&d);
    assert_eq!(s.daemon, DaemonState::Running);
    assert_eq!(s.pid, d.child.as_ref().map(Child::id));
    assert_eq!(s.listen.as_deref(), Some(d.addr.to_string().as_str()));
    assert_eq!(s.meters[0].meter_id, METER);
    assert_eq!(s.meters[0].name.as_deref(), Some("north roof"));

    // 500 kW is above the simulated battery's 50 kW rating: accepted, with a warning.
    let (code, out, err) = d.cli(&["override", "discharge", "500", "--for", "10m"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("above the battery's rated discharge of 50 kW"),
        "{err}"
    );
    assert!(out.contains("discharge 500 kW until"), "{out}");
    wait_for("the no-export margin to bind", || {
        let s = status(&d);
        s.meters[0].device_state.as_ref().and_then(|x| x.limited_by) == Some(Limit::ExportMargin)
    });
    // The history says it too, once, in words.
    wait_for("a limited audit entry", || {
        d.cli(&["history"])
            .1
            .contains("limited by no-export margin")
    });
    let (_, history, _) = d.cli(&["history"]);
    assert_eq!(
        history.matches("limited by no-export margin").count(),
        1,
        "{history}"
    );
    assert!(history.contains("asked 500 kW"), "{history}");
    let (code, table, _) = d.cli(&["status"]);
    assert_eq!(code, 0);
    for line in table.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }
    assert!(table.contains("north roof"), "{table}");
    assert!(!table.contains(METER), "ids only with --wide: {table}");
    assert!(table.contains("manual discharge 500 kW"), "{table}");
    assert!(table.contains("limited by no-export margin"), "{table}");
    assert!(table.contains('%') && table.contains(" kW"), "{table}");
    assert!(
        !table.contains(".000") && !table.contains("Z "),
        "times to the second: {table}"
    );
    let (_, wide, _) = d.cli(&["status", "--wide"]);
    assert!(wide.contains(METER), "{wide}");
    let local = Command::new(bin())
        .arg("--config")
        .arg(d.config_path())
        .args(["status", "--local"])
        .env("TZ", "Asia/Kolkata")
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&local.stdout);
    assert!(local.contains("+05:30"), "--local honours TZ: {local}");
}

#[tokio::test]
async fn dispatch_resumed_after_override_is_audited_as_resumed() {
    let sim = Sim::start();
    let d = Daemon::start_with(&site_config(sim.port));
    let now = chrono::Utc::now();
    let slot = timeslot_json(
        METER,
        "ev-resume",
        now - chrono::Duration::seconds(30),
        600,
        Some(5.0),
        serde_json::json!({}),
    );
    let r = d
        .client()
        .post(&meter_notification(METER, vec![slot]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("the dispatch to apply", || {
        status(&d).meters[0].command.is_some()
    });
    let (code, _, err) = d.cli(&["override", "hold", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let audited = |action: &str| {
        let (_, h, _) = d.cli(&["history", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        let rows = v["history"].as_array().unwrap().clone();
        rows.into_iter().find(|r| r["action"] == action)
    };
    wait_for("the hold to take over", || audited("overridden").is_some());
    let (code, out, _) = d.cli(&["override", "clear"]);
    assert_eq!(code, 0);
    assert!(out.contains("cleared 1"), "{out}");
    wait_for("a resumed audit entry", || audited("resumed").is_some());
    let r = audited("resumed").unwrap();
    assert_eq!(r["event_id"], "ev-resume");
    assert!(r["lateness_ms"].as_i64().unwrap() < 2000, "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("after a manual override"),
        "{r}"
    );
    let (_, table, _) = d.cli(&["history", "--meter", METER]);
    let line = table.lines().find(|l| l.contains("resumed")).unwrap();
    assert!(!line.contains("late start"), "{table}");
}

#[tokio::test]
async fn second_daemon_refused_and_status_when_down() {
    let mut d = Daemon::start_with(&site_config(9));
    let now = chrono::Utc::now();
    let slot = timeslot_json(
        METER,
        "ev-down",
        now - chrono::Duration::seconds(5),
        3600,
        Some(7.0),
        serde_json::json!({}),
    );
    // Weaker (a higher priority number, SPEC §2.8): the down status must not show it.
    let weaker = timeslot_json(
        METER,
        "ev-weaker",
        now - chrono::Duration::seconds(5),
        3600,
        Some(3.0),
        serde_json::json!({"priority": 3}),
    );
    assert_eq!(
        d.client()
            .post(&meter_notification(METER, vec![slot, weaker]))
            .await
            .status,
        200
    );
    let pid = d.child.as_ref().unwrap().id();
    let (code, _, err) = d.cli(&["run"]);
    assert_eq!(
        code, 78,
        "not restarted by systemd (RestartPreventExitStatus): {err}"
    );
    assert!(
        err.contains(&format!("already running (pid {pid})")),
        "{err}"
    );
    assert_eq!(err.matches("already running").count(), 1, "{err}");
    wait_for("an audit entry", || d.count("audit") > 0);

    d.kill9();
    let (code, out, _) = d.cli(&["status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT RUNNING"), "{out}");
    assert!(out.contains("stale socket"), "{out}");
    assert!(out.contains("last run by hand"), "{out}");
    assert!(out.contains("leap-edge --config"), "{out}");
    assert!(
        !out.contains("systemctl"),
        "it was not run by systemd: {out}"
    );
    assert!(
        out.contains("north roof"),
        "configured meters listed: {out}"
    );
    assert!(out.contains("7 kW"), "the active timeslot: {out}");
    let s = status(&d);
    assert_eq!(s.daemon, DaemonState::NotRunning);
    assert_eq!(
        s.meters[0].active_timeslot.as_ref().unwrap().event_id,
        "ev-down"
    );
    assert!(s.meters[0].last_audit.is_some(), "{s:?}");
    // The stale socket does not stop the next start.
    d.spawn();
    assert_eq!(status(&d).daemon, DaemonState::Running);
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "reloaded: nothing changed");
}

#[test]
fn simulator_bind_error_names_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n[storage]\npath = \"db\"\n\
         [admin]\nsocket = \"admin.sock\"\n[sim]\nautostart = true\nlisten = \"{}\"\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
    let out = Command::new(bin())
        .args(["--config", "c.toml", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("sim.listen"), "{err}");
    assert!(!err.contains("server.listen"), "{err}");
    assert_eq!(
        err.matches("in use").count(),
        1,
        "cause printed once: {err}"
    );
}

/// Issue 16 bug: `status --json` on a terminal must be plain JSON. Run under a real
/// pseudo-terminal (`script` from util-linux): the text view there is coloured (so the
/// terminal is seen), the JSON document is not.
#[test]
fn status_json_on_a_terminal_has_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n[storage]\npath = \"db\"\n\
         [admin]\nsocket = \"admin.sock\"\n"
    );
    std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
    let on_tty = |args: &str| {
        let out = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!("{} --config c.toml {args}", bin()))
            .arg("/dev/null")
            .current_dir(dir.path())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = on_tty("status");
    assert!(text.contains("NOT RUNNING"), "{text}");
    assert!(text.contains('\u{1b}'), "the pty is a terminal: {text:?}");
    let json = on_tty("status --json");
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(json.trim()).expect("plain JSON");
    assert_eq!(doc["daemon"], "not-running", "{doc:#}");
}

/// The daemon down and a database `status` cannot query (here: no tables, as after a
/// failed restore): said on stderr, and "none" is not passed off as the truth. Before,
/// the timeslot and audit queries failed silently and the screen read "none"; the one
/// error shown told a root user to run with sudo.
#[test]
fn status_says_when_the_database_cannot_be_queried() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::TestConfig::default().write(dir.path());
    let db = rusqlite::Connection::open(dir.path().join("leap-edge.db")).unwrap();
    db.pragma_update(None, "user_version", 11).unwrap();
    drop(db);
    let (code, out, err) = common::cli_with(&cfg, &["status"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("cannot read") && err.contains("means unknown"),
        "{err}"
    );
    assert!(!err.contains("sudo"), "{err}");
}
