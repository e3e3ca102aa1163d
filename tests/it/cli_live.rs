//! Live views and what people read (issue 15 points 3, 7, 8; issue 10 points 7 and 9):
//! `status --watch` on a pseudo-terminal (util-linux `script`) and piped, `history
//! --follow`, no Rust debug formatting in CLI output or the daemon's log, `events`
//! revision table, control characters escaped, and the admin socket's peer record,
//! connection cap and refusal to replace a file that is not a socket.

use crate::common;

use common::*;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

fn with_meter() -> String {
    format!(
        "[[meters]]\nid = \"{METER}\"\ndevice = \"bat\"\nname = \"north roof\"\n[devices.bat]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = 9\ntimeout_ms = 200\n"
    )
}

/// A child's stdout, read on a thread so the test can wait with a deadline.
struct Output {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Output {
    fn spawn(mut cmd: Command) -> Output {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Output {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Everything read so far once it contains `needle` (panics after 20 s).
    fn until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = String::from_utf8_lossy(&self.seen).to_string();
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.extend(b),
                Err(_) => panic!("no {needle:?} in output:\n{text}"),
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--config").arg(d.config_path()).args(args);
    c
}

#[test]
fn status_watch_redraws_on_a_terminal_and_prints_changes_when_piped() {
    let d = Daemon::start_with(&with_meter());
    // A pseudo-terminal: util-linux `script` runs the command on one.
    let line = format!(
        "{} --config {} status --watch --interval 1",
        bin(),
        d.config_path().display()
    );
    let mut tty = Output::spawn({
        let mut c = Command::new("script");
        c.args(["-qfec", &line, "/dev/null"]);
        c
    });
    let first = tty.until("Ctrl-C to stop");
    assert!(
        first.contains("\x1b[H\x1b[2J"),
        "redrawn in place: {first:?}"
    );
    assert!(first.contains("north roof"), "{first}");

    let mut piped = Output::spawn(cli_cmd(&d, &["status", "--watch", "--interval", "1"]));
    let text = piped.until(&format!("meter {METER}: normal"));
    assert!(
        !text.contains('\x1b'),
        "no terminal codes in a pipe: {text:?}"
    );
    let (code, _, err) = d.cli(&["override", "hold", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let text = piped.until("manual hold");
    // One line per change: a meter's line is never repeated unchanged.
    let meter_lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(" UTC ").map(|(_, rest)| rest))
        .filter(|l| l.starts_with("meter "))
        .collect();
    assert!(meter_lines.len() >= 2, "{text}");
    assert!(
        meter_lines.windows(2).all(|w| w[0] != w[1]),
        "a line repeated without a change: {text}"
    );
}

#[test]
fn history_follow_prints_new_entries() {
    let d = Daemon::start_with(&with_meter());
    let mut follow = Output::spawn(cli_cmd(&d, &["history", "--follow"]));
    follow.until("startup");
    let (code, _, err) = d.cli(&["override", "charge", "2", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let text = follow.until("charge 2 kW");
    assert!(text.contains("manual"), "{text}");
    // With nothing matching --since, following starts from now: old entries (the charge
    // above) are not replayed as new ones.
    let since = chrono::Utc::now().to_rfc3339();
    let mut later = Output::spawn(cli_cmd(&d, &["history", "-f", "--since", &since]));
    let (code, _, err) = d.cli(&["override", "hold", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let text = later.until("hold");
    assert!(!text.contains("charge 2 kW"), "old entry replayed: {text}");
    // `--limit` sizes the table only: entries written together all follow.
    let mut one = Output::spawn(cli_cmd(&d, &["history", "-f", "--limit", "1"]));
    one.until("hold");
    let (code, _, err) = d.cli(&["override", "discharge", "3", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = d.cli(&["override", "clear"]);
    assert_eq!(code, 0, "{err}");
    let text = one.until("override cleared");
    assert!(text.contains("discharge 3 kW"), "{text}");
}

#[tokio::test]
async fn words_not_debug_events_revisions_and_escaped_control_characters() {
    let d = Daemon::start_with(&with_meter());
    let now = chrono::Utc::now();
    let evil = "ev\u{1b}[2J\u{7}x";
    let slot = |kw| {
        timeslot_json(
            METER,
            evil,
            now - chrono::Duration::seconds(5),
            600,
            Some(kw),
            serde_json::json!({}),
        )
    };
    let c = d.client();
    assert_eq!(
        c.post(&meter_notification(METER, vec![slot(4.0)]))
            .await
            .status,
        200
    );
    assert_eq!(
        c.post(&meter_notification(METER, vec![slot(6.0)]))
            .await
            .status,
        200
    );
    let mut all = String::new();
    let mut run = |args: &[&str]| {
        let (code, out, err) = d.cli(args);
        assert!(code == 0, "{args:?}: {err}");
        all.push_str(&out);
        all.push_str(&err);
        out
    };
    let events = run(&["events"]);
    assert!(
        events.contains("TEST/REAL") && events.contains("real"),
        "{events}"
    );
    let revs = run(&["events", "--event", evil]);
    assert!(revs.contains("Revisions of meter"), "{revs}");
    assert!(
        revs.contains("4 kW") && revs.contains("6 kW"),
        "both revisions: {revs}"
    );
    let missing = run(&["events", "--event", "no-such-event"]);
    assert!(
        missing.contains("No timeslot with event id no-such-event is stored"),
        "a mistyped id is named, not shown as an empty database: {missing}"
    );
    run(&[
        "override",
        "discharge",
        "3",
        "--for",
        "10m",
        "--meter",
        METER,
    ]);
    for args in [
        &["status"][..],
        &["status", "--wide"],
        &["history"],
        &["schedule"],
        &["reload"],
        &["override", "clear"],
    ] {
        run(args);
    }
    // The harness rewrote server.listen after the start (port 0 to the real port).
    assert!(all.contains("reloaded: nothing applied"), "{all}");
    assert!(
        !all.contains('\x1b') && !all.contains('\u{7}'),
        "raw control characters: {all:?}"
    );
    assert!(all.contains("ev\\e[2J\\u{7}x"), "escaped, visible: {all}");
    let (code, _, err) = d.cli(&["events", "--meter", "nosuch"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not configured") && err.contains(METER),
        "{err}"
    );
    all.push_str(&d.log());
    for debug in [
        "Some(",
        "None",
        "[\"",
        "Discharge(",
        "Charge(",
        "Setpoint(",
        "Kw(",
        "Remote124",
        "SiteLoad",
        "MaxDischarge",
        "UpToSiteLoad",
    ] {
        assert!(
            !all.contains(debug),
            "Rust debug formatting {debug:?} in:\n{all}"
        );
    }
}

fn uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap()
}

/// One status request over a plain connection; the answer frame's text.
fn raw_status(sock: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = br#"{"cmd":"status"}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    // A daemon at its cap may close before reading: the write can fail, the answer is there.
    let _ = s.write_all(&frame);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(got.get(4..).unwrap_or_default()).into_owned()
}

#[test]
fn admin_socket_records_the_peer_caps_connections_and_replaces_only_sockets() {
    let d = Daemon::start_with(&with_meter());
    let (code, _, err) = d.cli(&["override", "hold", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let detail: String = d
        .db()
        .query_row(
            "SELECT detail FROM audit WHERE action = 'manual'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        detail.contains(&format!("by uid {} pid ", uid())),
        "{detail}"
    );
    assert!(
        d.log().contains(&format!("peer_uid={}", uid())),
        "journal has the peer"
    );

    // Sixteen silent connections fill the cap; the next is told why, at once. Each held one
    // lasts the daemon's 10 s exchange timeout, so the check must fit well inside it: a raw
    // probe first (the daemon accepts in arrival order, so it comes after the sixteen), then
    // one CLI call for the words and exit code.
    let sock = d.dir.path().join("admin.sock");
    let since = std::time::Instant::now();
    let held: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let probe = raw_status(&sock);
    assert!(probe.contains("busy"), "17th connection: {probe:?}");
    let answer = d.cli(&["status"]);
    assert!(
        answer.0 == 1 && answer.2.contains("busy"),
        "{answer:?} ({:?} after the sixteen connected)",
        since.elapsed()
    );
    drop(held);
    let served = common::eventually_blocking(Duration::from_secs(10), || d.cli(&["status"]).0 == 0);
    assert!(served, "served again once they left");

    // A regular file where the socket goes is not deleted: the daemon refuses to start.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.sock"), "keep me").unwrap();
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        text.replace("leap-edge.db", "other.db"),
    )
    .unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(d.dir.path().join(f), dir.path().join(f)).unwrap();
    }
    let out = Command::new(bin())
        .args(["--config", "c.toml", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("admin.socket") && err.contains("regular file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.sock")).unwrap(),
        "keep me"
    );
}

/// A technician told an override failed must not find it applied later: the daemon, stopped
/// while the CLI waited, reads the queued request after the CLI gave up, and refuses it.
#[test]
fn an_override_the_cli_gave_up_on_is_never_applied() {
    let d = Daemon::start_with(&with_meter());
    let pid = d.child.as_ref().expect("running").id().to_string();
    let signal = |s: &str| {
        let st = Command::new("kill").args([s, &pid]).status().unwrap();
        assert!(st.success(), "kill {s} {pid}");
    };
    signal("-STOP");
    let (code, _, err) = d.cli(&["override", "discharge", "3", "--for", "1h"]);
    signal("-CONT");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not answer in time"), "{err}");
    let refused = common::eventually_blocking(Duration::from_secs(10), || {
        d.log().contains("read after its client gave up")
    });
    assert!(
        refused,
        "the daemon did not say it refused the late request"
    );
    let (_, out, err) = d.cli(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&out).expect(&err);
    assert!(s["meters"][0]["override"].is_null(), "{:#}", s["meters"][0]);
}

/// On a terminal, BLIND is red, not its escaped escape codes (the table used to escape the
/// coloured cell: `\e[1;31mBLIND\e[0m` on screen), and a blind meter whose device never
/// confirmed the hand-back says so instead of claiming it was handed back.
#[test]
fn blind_on_a_terminal_is_red_and_says_whether_the_hand_back_was_confirmed() {
    let d = Daemon::start_with(&with_meter());
    let (code, _, err) = d.cli(&["override", "hold", "--for", "5m"]);
    assert_eq!(code, 0, "{err}");
    let on_tty = || {
        let out = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{} --config {} status",
                bin(),
                d.config_path().display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR")
            .env("COLUMNS", "80")
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut text = String::new();
    let blind = common::eventually_blocking(Duration::from_secs(10), || {
        text = on_tty();
        text.contains("BLIND,")
    });
    assert!(blind, "{text}");
    assert!(text.contains("\u{1b}[1;31mBLIND\u{1b}[0m"), "{text:?}");
    assert!(!text.contains("\\e["), "escaped colour codes: {text:?}");
    assert!(text.contains("hand-back NOT confirmed"), "{text}");
}

/// `send-test` refuses a power that is not a positive number (NaN became `null`, i.e. the
/// maximum discharge), and a test the daemon stored as rejected is not reported as sent.
#[test]
fn send_test_refuses_nan_and_says_when_the_daemon_rejected_it() {
    let d = Daemon::start_with(&with_meter());
    for kw in ["nan", "inf", "0", "0.001", "200000"] {
        let (code, _, err) = d.cli(&["send-test", "--kw", kw]);
        assert_eq!(code, 2, "--kw {kw}: {err}");
        assert!(err.contains("--kw"), "{err}");
    }
    // Beyond [limits] max_timeslot_hours: Leap's answer is 200, the timeslot rejected.
    let (code, out, err) = d.cli(&["send-test", "--duration", "25h"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("REJECTED") && err.contains("leap-edge events --event send-test-"),
        "{err}"
    );
    // A meter that is not configured here is refused before anything is posted.
    let before = d.count("timeslots");
    let (code, _, err) = d.cli(&["send-test", "--meter", "not-a-meter"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not-a-meter"), "{err}");
    assert_eq!(d.count("timeslots"), before, "posted anyway");
}

/// A technician's override outlives a daemon restart (a crash must not silently end a
/// maintenance hold) and still ends at its own time; a cleared one does not come back.
#[test]
fn an_override_outlives_a_restart_and_a_cleared_one_stays_cleared() {
    let mut d = Daemon::start_with(&with_meter());
    let (code, _, err) = d.cli(&["override", "discharge", "3", "--for", "1h"]);
    assert_eq!(code, 0, "{err}");
    let until = |d: &Daemon| {
        let (_, out, err) = d.cli(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_str(&out).expect(&err);
        s["meters"][0]["override"].clone()
    };
    let before = until(&d);
    assert_eq!(before["action"]["action"], "discharge", "{before}");
    d.kill9();
    d.spawn();
    let after = until(&d);
    assert_eq!(
        after["action"], before["action"],
        "after a SIGKILL and restart"
    );
    // Stored to the millisecond.
    let ms = |v: &serde_json::Value| v["until"].as_str().unwrap_or_default()[..23].to_string();
    assert_eq!(ms(&after), ms(&before), "{after} {before}");
    assert!(d.log().contains("manual override restored after a restart"));
    // Restored also when the database cannot be written at start (another writer holds it
    // beyond the busy timeout): the overrides are only read.
    d.kill9();
    let db = rusqlite::Connection::open(d.db_path()).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    d.spawn();
    let mut held = serde_json::Value::Null;
    common::eventually_blocking(Duration::from_secs(4), || {
        held = until(&d);
        !held.is_null()
    });
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(
        held["action"],
        before["action"],
        "with the database locked: {}",
        d.log()
    );
    let (code, _, err) = d.cli(&["override", "clear"]);
    assert_eq!(code, 0, "{err}");
    assert!(d.terminate());
    d.spawn();
    assert!(until(&d).is_null(), "a cleared override came back");
}

/// A saved override row that cannot be read (a damaged end time) is skipped: dispatch does
/// not wait on it, and a real dispatch is followed as soon as it starts.
#[test]
fn a_damaged_saved_override_does_not_stop_dispatch() {
    let mut d = Daemon::start_with(&with_meter());
    assert!(d.terminate());
    rusqlite::Connection::open(d.db_path())
        .unwrap()
        .execute(
            "INSERT INTO overrides (meter_id, action, kw, until, set_at) VALUES (?1, 'hold', NULL, 'garbage', 'x')",
            [METER],
        )
        .unwrap();
    d.spawn();
    let (code, out, err) = d.cli(&["send-test", "--real", "--kw", "5", "--in", "1s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let event: serde_json::Value = serde_json::from_str(&out).unwrap();
    let event = event["meter_event_id"].as_str().unwrap().to_string();
    let followed = common::eventually_blocking(Duration::from_secs(10), || {
        let (_, out, _) = d.cli(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        s["meters"][0]["command"]["event_id"] == event.as_str()
    });
    assert!(followed, "{}", d.log());
    assert!(
        d.log().contains("unreadable end; not restored"),
        "{}",
        d.log()
    );
}
