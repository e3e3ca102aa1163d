//! SCENARIOS 1–15, 21, 22 through the real HTTPS endpoint and the real dispatch loop, with
//! a recording commander in place of the devices (issue 3). Start times are a few seconds
//! ahead; assertions are on what was commanded and audited, never on tight timings.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use common::Client;
use leap_edge::daemon::Running;
use leap_edge::dispatch::{Recorded, RecordingCommander};
use leap_edge::model::{Cap, Target};
use serde_json::{Value, json};
use std::sync::Arc;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
const M2: &str = "abae2779-e392-4f00-b0cf-32e716204f78";
const M3: &str = "bbae2779-e392-4f00-b0cf-32e716204f78";
const FOREIGN: &str = "ffff2779-e392-4f00-b0cf-32e716204f78";

struct Site {
    dir: tempfile::TempDir,
    running: Option<Running>,
    rec: RecordingCommander,
    client: Client,
    cert: rustls::pki_types::CertificateDer<'static>,
}

async fn site(extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert) = common::inproc_config(dir.path(), "leap-edge.db", &[M1, M2, M3], extra);
    let mut s = Site {
        client: Client::new("127.0.0.1:1".parse().unwrap(), cert.clone()),
        cert,
        dir,
        running: None,
        rec: RecordingCommander::default(),
    };
    s.start().await;
    s
}

impl Site {
    async fn start(&mut self) {
        let config = self.dir.path().join("config.toml");
        let running = common::start_inproc(&config, Arc::new(self.rec.clone())).await;
        self.client = Client::new(running.addr, self.cert.clone());
        self.running = Some(running);
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    async fn post(&self, body: Value) -> Value {
        let r = self.client.post(&body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// Calls for one meter after the start-up release, which must come first: the
    /// dispatcher hands every meter back to normal operation when it starts.
    fn calls(&self, meter: &str) -> Vec<Recorded> {
        let all: Vec<Recorded> = self
            .rec
            .calls()
            .into_iter()
            .filter(|c| match c {
                Recorded::Apply { meter: m, .. } | Recorded::Release { meter: m } => m == meter,
            })
            .collect();
        match all.split_first() {
            None => Vec::new(),
            Some((first, rest)) => {
                assert!(
                    is_release(first),
                    "{meter}: not the start-up release: {all:?}"
                );
                rest.to_vec()
            }
        }
    }

    /// Waits (bounded) for the start-up release of every meter, so a test that then sees
    /// no call for a meter knows the dispatcher is alive.
    async fn wait_startup_release(&self) {
        let released = |m: &str| {
            self.rec
                .calls()
                .iter()
                .any(|c| matches!(c, Recorded::Release { meter } if meter == m))
        };
        let all = || [M1, M2, M3].iter().all(|m| released(m));
        assert!(
            common::eventually(std::time::Duration::from_secs(10), all).await,
            "no start-up release: {:?}",
            self.rec.calls()
        );
    }

    fn applies(&self, meter: &str) -> Vec<leap_edge::model::Command> {
        self.calls(meter)
            .into_iter()
            .filter_map(|c| match c {
                Recorded::Apply { command, .. } => Some(command),
                _ => None,
            })
            .collect()
    }

    async fn wait_calls(&self, meter: &str, n: usize, secs: u64) -> Vec<Recorded> {
        let limit = std::time::Duration::from_secs(secs);
        common::eventually(limit, || self.calls(meter).len() >= n).await;
        self.calls(meter)
    }

    /// The audit log once `done` holds for it: rows are written just after the command is
    /// handed over, so a test that saw the command may be a moment early for the row.
    async fn audit_when(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let limit = std::time::Duration::from_secs(10);
        common::eventually(limit, || done(&self.audit())).await;
        self.audit()
    }

    /// The lateness of `event`'s `apply` row, once it is written.
    async fn apply_lateness_ms(&self, event: &str) -> i64 {
        let is = |a: &Value| a["action"] == "apply" && a["event"] == event;
        let audit = self.audit_when(|a| a.iter().any(is)).await;
        let row = audit.iter().find(|a| is(a)).expect("an apply row");
        row["lateness_ms"].as_i64().expect("a lateness")
    }

    fn audit(&self) -> Vec<Value> {
        let conn = rusqlite::Connection::open(self.dir.path().join("leap-edge.db")).unwrap();
        let mut st = conn.prepare("SELECT meter_id, action, event_id, target, lateness_ms, detail FROM audit ORDER BY id").unwrap();
        st.query_map([], |r| {
            Ok(json!({"meter": r.get::<_, String>(0)?, "action": r.get::<_, String>(1)?, "event": r.get::<_, Option<String>>(2)?,
                "target": r.get::<_, Option<String>>(3)?, "lateness_ms": r.get::<_, Option<i64>>(4)?, "detail": r.get::<_, Option<String>>(5)?}))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc::now() + Duration::milliseconds(offset_ms)
}

fn slot(
    event: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    kw: Option<f64>,
    extra: Value,
) -> Value {
    let mut t = json!({
        "meter_event_id": event,
        "start_time": start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "end_time": end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "cancelled": false, "performance_compensation_cap": "up-to-site-load", "priority": 1,
        "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"], "energy_kw": kw,
    });
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

fn meter_note(meter: &str, slots: Vec<Value>) -> Value {
    json!({"integration_test_notification": false, "communication_test": false,
           "meter_dispatches": [{"meter_id": meter, "timeslots": slots}]})
}

fn is_release(c: &Recorded) -> bool {
    matches!(c, Recorded::Release { .. })
}

fn applied(c: &Recorded) -> &leap_edge::model::Command {
    match c {
        Recorded::Apply { command, .. } => command,
        other => panic!("expected an apply, got {other:?}"),
    }
}

#[tokio::test]
async fn s01_single_timeslot_then_normal() {
    let mut s = site("").await;
    let (t, end) = (at(1500), at(3500));
    s.post(meter_note(
        M1,
        vec![slot("s1", t, end, Some(10.0), json!({}))],
    ))
    .await;
    let calls = s.wait_calls(M1, 2, 15).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let c = applied(&calls[0]);
    assert_eq!(
        (c.event_id.as_str(), c.target, c.cap, c.export_allowed_kw),
        ("s1", Target::Kw(10.0), Cap::UpToSiteLoad, 0.0)
    );
    assert!(is_release(&calls[1]));
    assert!(Utc::now() >= end, "released only at the end");
    let audit = s
        .audit_when(|a| a.iter().filter(|a| a["meter"] == M1).count() >= 3)
        .await;
    let acts: Vec<&str> = audit
        .iter()
        .filter(|a| a["meter"] == M1)
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(acts, ["release", "apply", "release"], "{audit:#?}");
    s.stop().await;
}

#[tokio::test]
async fn s02_back_to_back_without_passing_through_normal() {
    let mut s = site("").await;
    let (t, t1, t2) = (at(1500), at(3000), at(4500));
    s.post(meter_note(
        M1,
        vec![
            slot("a", t, t1, Some(10.0), json!({})),
            slot("b", t1, t2, Some(20.0), json!({})),
        ],
    ))
    .await;
    let calls = s.wait_calls(M1, 3, 15).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(applied(&calls[0]).target, Target::Kw(10.0));
    assert_eq!(applied(&calls[1]).target, Target::Kw(20.0));
    assert!(is_release(&calls[2]));
    s.stop().await;
}

#[tokio::test]
async fn s03_overlap_priority_then_exports_allowed() {
    let mut s = site("[site]\nexport_limit_kw = 5.0\n").await;
    let (t, t1, t2) = (at(1500), at(3000), at(4500));
    s.post(meter_note(M1, vec![
        slot("dram", t, t1, Some(20.0), json!({})),
        slot("elrp", t, t2, None, json!({"priority": 3, "is_voluntary": true, "performance_compensation_cap": "grid-exports-allowed", "programs": ["ELRP"]})),
    ])).await;
    let calls = s.wait_calls(M1, 3, 15).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    let (a, b) = (applied(&calls[0]), applied(&calls[1]));
    assert_eq!((a.event_id.as_str(), a.export_allowed_kw), ("dram", 0.0));
    assert_eq!(
        (b.event_id.as_str(), b.target, b.cap, b.export_allowed_kw),
        ("elrp", Target::Maximum, Cap::GridExportsAllowed, 5.0)
    );
    assert!(is_release(&calls[2]));
    s.stop().await;
}

/// Issue 16: a runner-up timeslot that appears while an event runs changes only the words
/// of why that event governs: the running command is neither written again nor audited
/// again. The runner-up then governs at the end of the first (so the dispatcher was alive).
#[tokio::test]
async fn runner_up_appearing_does_not_reapply_the_running_event() {
    let mut s = site("").await;
    let (t, t1, t2) = (at(1500), at(4000), at(5500));
    s.post(meter_note(
        M1,
        vec![slot("s1", t, t1, Some(10.0), json!({}))],
    ))
    .await;
    s.wait_calls(M1, 1, 15).await;
    let runner_up = json!({"priority": 3, "is_voluntary": true});
    s.post(meter_note(
        M1,
        vec![slot("r2", t, t2, Some(4.0), runner_up)],
    ))
    .await;
    let calls = s.wait_calls(M1, 3, 15).await;
    let events: Vec<&str> = calls
        .iter()
        .filter(|c| !is_release(c))
        .map(|c| applied(c).event_id.as_str())
        .collect();
    assert_eq!(events, ["s1", "r2"], "{calls:?}");
    assert!(is_release(&calls[2]), "{calls:?}");
    let audit = s
        .audit_when(|a| a.iter().filter(|a| a["meter"] == M1).count() >= 4)
        .await;
    let acts: Vec<(&str, Option<&str>)> = audit
        .iter()
        .filter(|a| a["meter"] == M1)
        .map(|a| (a["action"].as_str().unwrap(), a["event"].as_str()))
        .collect();
    assert_eq!(
        acts,
        [
            ("release", None),
            ("apply", Some("s1")),
            ("apply", Some("r2")),
            ("release", Some("r2"))
        ],
        "{audit:#?}"
    );
    s.stop().await;
}

/// M2 gets a live timeslot over the same window as the one under test on M1: seeing it
/// applied and released proves the dispatcher ran through the window, so "no call for M1"
/// cannot pass because dispatch is dead.
fn control_slot(start: DateTime<Utc>, end: DateTime<Utc>) -> Value {
    meter_note(M2, vec![slot("control", start, end, Some(4.0), json!({}))])
}

/// Waits for M2's control timeslot to be applied and then released.
async fn wait_control_done(s: &Site) {
    let calls = s.wait_calls(M2, 2, 15).await;
    assert_eq!(
        calls.len(),
        2,
        "the control timeslot on M2 did not run: {calls:?}"
    );
    assert_eq!(applied(&calls[0]).event_id, "control");
    assert!(is_release(&calls[1]), "{calls:?}");
}

#[tokio::test]
async fn s04_cancelled_before_start_writes_nothing() {
    let mut s = site("").await;
    s.wait_startup_release().await;
    let (t, end) = (at(1500), at(2500));
    s.post(control_slot(t, end)).await;
    s.post(meter_note(
        M1,
        vec![slot("c", t, end, Some(10.0), json!({}))],
    ))
    .await;
    s.post(meter_note(
        M1,
        vec![slot("c", t, end, Some(10.0), json!({"cancelled": true}))],
    ))
    .await;
    // A positive, not only "no call": the plan says why the timeslot is left out.
    let why = excluded(&s, "c", t);
    assert_eq!(why, [json!({"code": "cancelled", "conflict": false})]);
    wait_control_done(&s).await;
    assert!(s.calls(M1).is_empty(), "{:?}", s.calls(M1));
    s.stop().await;
}

#[tokio::test]
async fn s05_cancellation_during_timeslot_releases_at_once() {
    let mut s = site("").await;
    let (t, end) = (at(800), at(60_000));
    s.post(meter_note(
        M1,
        vec![slot("c", t, end, Some(10.0), json!({}))],
    ))
    .await;
    assert_eq!(s.wait_calls(M1, 1, 10).await.len(), 1);
    s.post(meter_note(
        M1,
        vec![slot("c", t, end, Some(10.0), json!({"cancelled": true}))],
    ))
    .await;
    let calls = s.wait_calls(M1, 2, 5).await;
    assert!(calls.len() == 2 && is_release(&calls[1]), "{calls:?}");
    s.stop().await;
}

#[tokio::test]
async fn s06_s07_update_during_timeslot_new_target_and_later_end() {
    let mut s = site("").await;
    let (t, end, later) = (at(800), at(3000), at(4500));
    s.post(meter_note(
        M1,
        vec![slot("u", t, end, Some(10.0), json!({}))],
    ))
    .await;
    assert_eq!(s.wait_calls(M1, 1, 10).await.len(), 1);
    s.post(meter_note(
        M1,
        vec![slot("u", t, end, Some(15.0), json!({}))],
    ))
    .await;
    let calls = s.wait_calls(M1, 2, 5).await;
    assert_eq!(applied(&calls[1]).target, Target::Kw(15.0));
    s.post(meter_note(
        M1,
        vec![slot("u", t, later, Some(15.0), json!({}))],
    ))
    .await;
    let calls = s.wait_calls(M1, 4, 15).await;
    // The new end is followed: the release comes only after `later`.
    let release_at = calls
        .iter()
        .position(is_release)
        .expect("released at the end");
    assert!(Utc::now() >= later, "released before the extended end");
    assert!(
        calls[..release_at]
            .iter()
            .all(|c| applied(c).event_id == "u")
    );
    let ev: Value = serde_json::from_str(&events_json(&s, "u")).unwrap();
    assert_eq!(ev["timeslots"][0]["revisions"], 3);
    s.stop().await;
}

fn events_json(s: &Site, event: &str) -> String {
    let out = std::process::Command::new(common::bin())
        .args([
            "--config",
            s.dir.path().join("config.toml").to_str().unwrap(),
            "events",
            "--json",
            "--event",
            event,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why `leap-edge schedule` (the plan the daemon follows, from the database) leaves `event`
/// out over a window from `from`: the reason of each of its `excluded` entries.
fn excluded(s: &Site, event: &str, from: DateTime<Utc>) -> Vec<Value> {
    let config = s.dir.path().join("config.toml");
    let from = from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out = std::process::Command::new(common::bin())
        .args(["--config", config.to_str().unwrap(), "schedule", "--json"])
        .args(["--from", &from])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_id"] == event)
        .map(|e| e["reason"].clone())
        .collect()
}

#[tokio::test]
async fn s08_late_notification_starts_at_once_and_records_lateness() {
    let mut s = site("").await;
    let (t, end) = (at(-5000), at(60_000));
    s.post(meter_note(
        M1,
        vec![slot("late", t, end, Some(10.0), json!({}))],
    ))
    .await;
    let calls = s.wait_calls(M1, 1, 5).await;
    assert_eq!(applied(&calls[0]).event_id, "late");
    let audit = s
        .audit_when(|a| a.iter().any(|a| a["action"] == "apply"))
        .await;
    let a = audit.iter().find(|a| a["action"] == "apply").unwrap();
    assert!(a["lateness_ms"].as_i64().unwrap() >= 4000, "{a}");
    assert!(a["detail"].as_str().unwrap().contains("late start"), "{a}");
    s.stop().await;
}

#[tokio::test]
async fn s09_already_ended_is_stored_never_dispatched() {
    let mut s = site("").await;
    let r = s
        .post(meter_note(
            M1,
            vec![slot("old", at(-60_000), at(-1000), Some(10.0), json!({}))],
        ))
        .await;
    assert_eq!(r["new"], 1);
    s.wait_startup_release().await;
    s.post(control_slot(at(300), at(1300))).await;
    wait_control_done(&s).await;
    // Stored, and known as ended: why dispatch never touched it.
    let events: Value = serde_json::from_str(&events_json(&s, "old")).unwrap();
    assert_eq!(events["timeslots"][0]["status"], "ended", "{events:#}");
    assert!(s.calls(M1).is_empty(), "{:?}", s.calls(M1));
    s.stop().await;
}

#[tokio::test]
async fn s10_fifty_deliveries_one_command_set() {
    let mut s = site("").await;
    let note = meter_note(
        M1,
        vec![slot("dup", at(1000), at(2500), Some(10.0), json!({}))],
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, n) = (s.client.clone(), note.to_string());
        tasks.push(tokio::spawn(async move { c.post(&n).await.status }));
    }
    for _ in 0..30 {
        s.post(note.clone()).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let calls = s.wait_calls(M1, 2, 10).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(s.calls(M1).len(), 2, "one apply, one release: {calls:?}");
    s.stop().await;
}

#[tokio::test]
async fn s11_cancel_then_stale_uncancelled_retry_stays_cancelled() {
    let mut s = site("").await;
    s.wait_startup_release().await;
    let (t, end) = (at(1500), at(3000));
    s.post(control_slot(t, end)).await;
    let live = meter_note(M1, vec![slot("x", t, end, Some(10.0), json!({}))]);
    s.post(live.clone()).await;
    s.post(meter_note(
        M1,
        vec![slot("x", t, end, Some(10.0), json!({"cancelled": true}))],
    ))
    .await;
    assert_eq!(s.post(live).await["conflict"], 1);
    let why = excluded(&s, "x", t);
    assert_eq!(why, [json!({"code": "cancelled", "conflict": true})]);
    wait_control_done(&s).await;
    assert!(s.calls(M1).is_empty(), "{:?}", s.calls(M1));
    s.stop().await;
}

#[tokio::test]
async fn s12_group_split_among_local_meters_foreign_ignored() {
    let mut s = site("").await;
    let (t, end) = (at(1000), at(2500));
    let note = json!({"integration_test_notification": false, "communication_test": false, "group_dispatches": [{
        "market_group_id": "g", "meter_ids": [M2, M3, FOREIGN],
        "timeslots": [{"market_group_event_id": "grp", "start_time": t.to_rfc3339(), "end_time": end.to_rfc3339(),
            "cancelled": false, "energy_kw": 30.0, "performance_compensation_cap": "up-to-site-load", "priority": 2,
            "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]}]});
    s.post(note).await;
    for m in [M2, M3] {
        let calls = s.wait_calls(m, 2, 10).await;
        assert_eq!(applied(&calls[0]).target, Target::Kw(10.0), "{m}");
        assert!(is_release(&calls[1]));
    }
    assert!(s.calls(M1).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn s13_unmapped_meter_is_stored_and_flagged() {
    let mut s = site("").await;
    s.post(meter_note(
        FOREIGN,
        vec![slot("unm", at(500), at(1500), Some(10.0), json!({}))],
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    assert!([M1, M2, M3].iter().all(|m| s.calls(m).is_empty()));
    let ev: Value = serde_json::from_str(&events_json(&s, "unm")).unwrap();
    assert_eq!(ev["timeslots"][0]["status"], "unmapped-meter");
    s.stop().await;
}

#[tokio::test]
async fn s14_integration_test_is_dry_run_by_default() {
    let mut s = site("").await;
    let end = at(2000);
    let mut note = meter_note(M1, vec![slot("test", at(800), end, Some(10.0), json!({}))]);
    note["integration_test_notification"] = json!(true);
    s.post(note).await;
    let would = |a: &[Value]| {
        a.iter()
            .any(|a| a["action"] == "would-apply" && a["event"] == "test")
    };
    let audit = s.audit_when(would).await;
    // status shows it (as "dry-run: reduce 10 kW"), not normal operation.
    let shown = |s: &Site| {
        let snap = serde_json::to_value(s.running.as_ref().unwrap().dispatch.snapshot()).unwrap();
        snap["meters"][M1]["dry_run"]["command"]["event_id"].clone()
    };
    assert_eq!(shown(&s), json!("test"));
    // Past the end of the timeslot: dry-run said what it would do and did nothing.
    let rest = (end - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(rest + std::time::Duration::from_millis(300)).await;
    assert!(s.calls(M1).is_empty(), "dry-run wrote: {:?}", s.calls(M1));
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "would-apply" && a["event"] == "test"),
        "{audit:#?}"
    );
    assert!(common::eventually(std::time::Duration::from_secs(3), || shown(&s).is_null()).await);
    s.stop().await;
}

/// A restart resumes only what the meter was following when the daemon stopped. Here a
/// p1 timeslot displaced the long p3 one and governed until the stop; the p3 one governs
/// again from the p1 one's end, while the daemon is down: that is a late start, with its
/// lateness from that end, not a "resumed" row late by nothing (its event was applied
/// once, before the p1 one, which used to be enough).
#[tokio::test]
async fn s15_a_restart_does_not_resume_an_event_displaced_before_the_stop() {
    let mut s = site("").await;
    let p3 = json!({"priority": 3});
    s.post(meter_note(
        M1,
        vec![
            slot("long", at(200), at(60_000), Some(10.0), p3),
            slot("short", at(1200), at(2500), Some(5.0), json!({})),
        ],
    ))
    .await;
    assert_eq!(s.wait_calls(M1, 2, 10).await.len(), 2, "long, then short");
    s.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    s.start().await;
    let is_long = |a: &Value| a["event"] == "long" && a["action"] != "release";
    let audit = s
        .audit_when(|a| a.iter().filter(|a| is_long(a)).count() >= 2)
        .await;
    let again = audit.iter().rev().find(|a| is_long(a)).unwrap();
    assert_eq!(again["action"], "apply", "{again}");
    assert!(again["lateness_ms"].as_i64().unwrap() >= 1000, "{again}");
    s.stop().await;
}

#[tokio::test]
async fn s15_restart_mid_timeslot_reapplies_with_lateness() {
    let mut s = site("").await;
    s.post(meter_note(
        M1,
        vec![slot("r", at(300), at(60_000), Some(10.0), json!({}))],
    ))
    .await;
    assert_eq!(s.wait_calls(M1, 1, 10).await.len(), 1);
    s.stop().await;
    assert!(
        is_release(s.calls(M1).last().unwrap()),
        "shutdown hands the battery back"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    s.start().await;
    let limit = std::time::Duration::from_secs(10);
    common::eventually(limit, || s.applies(M1).len() >= 2).await;
    assert_eq!(s.applies(M1).len(), 2, "re-applied after restart");
    // Issue 15 point 9: the dispatch it was following before is resumed, late only from
    // the daemon's start (not from the timeslot's start, 1.5 s before).
    let audit = s
        .audit_when(|a| a.iter().any(|a| a["action"] == "resumed"))
        .await;
    let last = audit
        .iter()
        .rev()
        .find(|a| a["action"] == "resumed")
        .unwrap();
    assert!(last["lateness_ms"].as_i64().unwrap() < 1000, "{last}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("resumed after a restart"),
        "{last}"
    );
    // Restarted again: still "first applied" at the original apply, not the last resume.
    s.stop().await;
    s.start().await;
    let audit = s
        .audit_when(|a| a.iter().filter(|a| a["action"] == "resumed").count() >= 2)
        .await;
    let conn = rusqlite::Connection::open(s.dir.path().join("leap-edge.db")).unwrap();
    let at: String = conn
        .query_row(
            "SELECT at FROM audit WHERE action = 'apply' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let again = audit
        .iter()
        .rev()
        .find(|a| a["action"] == "resumed")
        .unwrap();
    assert!(
        again["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("first applied {at}")),
        "{again} {at}"
    );
    s.stop().await;
}

#[tokio::test]
async fn s21_equal_priority_commitment_governs_then_earliest_start() {
    let mut s = site("").await;
    // Same start: the commitment governs, although the voluntary one's event id sorts
    // first and it comes first in the notification (the later tie-breaks both favour it).
    let (t, end) = (at(1000), at(2500));
    s.post(meter_note(
        M1,
        vec![
            slot("a-vol", t, end, Some(5.0), json!({"is_voluntary": true})),
            slot("z-com", t, end, Some(7.0), json!({})),
        ],
    ))
    .await;
    let calls = s.wait_calls(M1, 1, 10).await;
    assert_eq!(applied(&calls[0]).event_id, "z-com");

    // Equal priority and both commitments: the earlier start keeps governing when the
    // later one begins, although the later one's event id sorts first and it comes first
    // in the notification (the tie-breaks after "earliest start" both favour it).
    let (t, t1, end) = (at(1000), at(2000), at(3500));
    s.post(meter_note(
        M2,
        vec![
            slot("a-later", t1, end, Some(7.0), json!({})),
            slot("b-early", t, end, Some(5.0), json!({})),
        ],
    ))
    .await;
    let calls = s.wait_calls(M2, 2, 15).await;
    let events: Vec<&str> = calls
        .iter()
        .map(|c| match c {
            Recorded::Apply { command, .. } => command.event_id.as_str(),
            Recorded::Release { .. } => "release",
        })
        .collect();
    assert_eq!(events, ["b-early", "release"], "{calls:?}");
    assert!(Utc::now() >= end, "released only at the end");
    s.stop().await;
}

#[tokio::test]
async fn s22_up_to_nomination_maximize_never_above_nomination() {
    let mut s = site("[strategy.programs]\nDRAM = \"maximize\"\n").await;
    s.post(meter_note(
        M1,
        vec![slot(
            "nom",
            at(800),
            at(2000),
            Some(8.0),
            json!({"performance_compensation_cap": "up-to-nomination", "nomination_kw": 10.0}),
        )],
    ))
    .await;
    let calls = s.wait_calls(M1, 1, 10).await;
    let c = applied(&calls[0]);
    assert_eq!(
        (c.cap, c.limit_kw, c.export_allowed_kw),
        (Cap::UpToNomination, Some(10.0), 0.0)
    );
    s.stop().await;
}

/// A commander whose device for M2 (first in meter order) hangs until released: the other
/// meter's boundary must not wait for it.
struct HangingM2 {
    inner: RecordingCommander,
    gate: Arc<tokio::sync::Semaphore>,
}

impl leap_edge::dispatch::Commander for HangingM2 {
    fn apply<'a>(
        &'a self,
        meter: &'a str,
        command: &'a leap_edge::model::Command,
    ) -> leap_edge::seam::BoxFuture<'a, Result<(), leap_edge::dispatch::CommandError>> {
        Box::pin(async move {
            if meter == M2 {
                let _ = self.gate.acquire().await;
            }
            self.inner.apply(meter, command).await
        })
    }

    fn release<'a>(
        &'a self,
        meter: &'a str,
    ) -> leap_edge::seam::BoxFuture<'a, Result<(), leap_edge::dispatch::CommandError>> {
        self.inner.release(meter)
    }
}

#[tokio::test]
async fn a_hanging_device_does_not_delay_another_meters_boundary() {
    let mut s = site("").await;
    s.stop().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let rec = RecordingCommander::default();
    let commander = Arc::new(HangingM2 {
        inner: rec.clone(),
        gate: gate.clone(),
    });
    let running = common::start_inproc(&s.dir.path().join("config.toml"), commander).await;
    let client = Client::new(running.addr, s.cert.clone());
    let (t, end) = (at(800), at(60_000));
    let note = json!({"integration_test_notification": false, "communication_test": false, "meter_dispatches": [
        {"meter_id": M1, "timeslots": [slot("free", t, end, Some(5.0), json!({}))]},
        {"meter_id": M2, "timeslots": [slot("hang", t, end, Some(5.0), json!({}))]}]});
    assert_eq!(client.post(&note.to_string()).await.status, 200);
    let applied = |m: &str| {
        rec.calls()
            .iter()
            .any(|c| matches!(c, Recorded::Apply { meter, .. } if meter == m))
    };
    let limit = std::time::Duration::from_secs(10);
    let m1_applied = common::eventually(limit, || applied(M1)).await;
    let m2_applied = applied(M2);
    // Let the hanging device go before asserting: a failed assertion must not leave the
    // daemon waiting on it forever.
    gate.add_permits(10);
    assert!(
        m1_applied,
        "M1 waited for M2's hanging device: {:?}",
        rec.calls()
    );
    assert!(!m2_applied, "M2's device was supposed to be still hanging");
    running.stop().await;
}

/// `status` shows the end of the interval the battery follows: a higher-priority timeslot
/// later in a running one cuts it short, and its cancellation gives the end back — with no
/// device call, so only the shown end moves.
#[tokio::test]
async fn status_shows_the_running_command_cut_short_and_given_back() {
    let mut s = site("").await;
    let end = at(60_000);
    let long = slot("long", at(300), end, Some(10.0), json!({"priority": 5}));
    s.post(meter_note(M1, vec![long])).await;
    assert_eq!(s.wait_calls(M1, 1, 10).await.len(), 1);
    let shown_end = |s: &Site| {
        let snap = serde_json::to_value(s.running.as_ref().unwrap().dispatch.snapshot()).unwrap();
        snap["meters"][M1]["command"]["end"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .map(|t| t.timestamp_millis())
    };
    let limit = std::time::Duration::from_secs(5);
    assert!(common::eventually(limit, || shown_end(&s) == Some(end.timestamp_millis())).await);
    let cut = at(30_000);
    let top = slot("top", cut, at(40_000), Some(5.0), json!({}));
    s.post(meter_note(M1, vec![top.clone()])).await;
    assert!(
        common::eventually(limit, || shown_end(&s) == Some(cut.timestamp_millis())).await,
        "{:?}",
        shown_end(&s)
    );
    let mut cancelled = top;
    cancelled["cancelled"] = json!(true);
    s.post(meter_note(M1, vec![cancelled])).await;
    assert!(
        common::eventually(limit, || shown_end(&s) == Some(end.timestamp_millis())).await,
        "{:?}",
        shown_end(&s)
    );
    assert_eq!(s.applies(M1).len(), 1, "no device call for a moved end");
    s.stop().await;
}

/// SCENARIOS 3 with a cancellation: the timeslot under a cancelled one takes over mid-way
/// and is audited late only from the cancellation, not from its own start (it was stored
/// long before); a timeslot that itself arrives after its start stays late from its start.
#[tokio::test]
async fn a_take_over_after_a_cancellation_is_late_only_from_the_cancellation() {
    let mut s = site("").await;
    let (start, end) = (at(300), at(60_000));
    let under = slot("under", start, end, Some(5.0), json!({"priority": 5}));
    let top = slot("top", start, end, Some(10.0), json!({"priority": 1}));
    s.post(meter_note(M1, vec![under, top.clone()])).await;
    assert_eq!(s.wait_calls(M1, 1, 10).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut cancelled = top;
    cancelled["cancelled"] = json!(true);
    s.post(meter_note(M1, vec![cancelled])).await;
    let took = s.apply_lateness_ms("under").await;
    assert!(took < 1000, "{took} ms");
    // Arriving 2.5 s after its start: late from its start.
    let late = slot(
        "late",
        at(-2500),
        at(60_000),
        Some(3.0),
        json!({"priority": 1}),
    );
    s.post(meter_note(M2, vec![late])).await;
    let late = s.apply_lateness_ms("late").await;
    assert!(late >= 2000, "{late} ms");
    s.stop().await;
}
