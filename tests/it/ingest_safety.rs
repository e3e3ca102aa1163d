//! Issue 9 points 4 and 5 through the real HTTPS endpoint, SQLite and the dispatch loop
//! (a recording commander in place of the devices): a cancellation always cancels, and an
//! optional field never costs a dispatch.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use common::Client;
use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts, Running};
use leap_edge::dispatch::{Recorded, RecordingCommander};
use serde_json::{Value, json};
use std::sync::Arc;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

struct Site {
    dir: tempfile::TempDir,
    running: Running,
    rec: RecordingCommander,
    client: Client,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let (path, cert) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
    let config = leap_edge::config::Config::load(&path).unwrap();
    let rec = RecordingCommander::default();
    let parts = Parts {
        commander: Arc::new(rec.clone()),
        clock: Arc::new(SystemClock),
        live: Arc::new(Vec::new),
    };
    let running = daemon::start(config, parts).await.unwrap();
    let client = Client::new(running.addr, cert);
    Site {
        dir,
        running,
        rec,
        client,
    }
}

fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc::now() + Duration::milliseconds(offset_ms)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn slot(event: &str, start: DateTime<Utc>, end: DateTime<Utc>, extra: Value) -> Value {
    let mut t = json!({
        "meter_event_id": event, "start_time": ts(start), "end_time": ts(end),
        "cancelled": false, "performance_compensation_cap": "up-to-site-load", "priority": 1,
        "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"],
        "energy_kw": 5.0,
    });
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

fn note(slots: Vec<Value>) -> Value {
    json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": M1, "timeslots": slots}]})
}

impl Site {
    async fn post(&self, body: &Value) -> Value {
        let r = self.client.post(&body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// The stored timeslot's content (as `events --json` shows it).
    fn stored(&self, event: &str) -> Value {
        let c = leap_edge::store::open_read_only(&self.dir.path().join("leap-edge.db")).unwrap();
        let all = leap_edge::store::query::all_timeslots(&c).unwrap();
        let s = all
            .into_iter()
            .find(|s| s.timeslot.event_id == event)
            .unwrap();
        serde_json::to_value(s.timeslot).unwrap()
    }

    async fn wait_for(&self, what: impl Fn(&[Recorded]) -> bool, secs: u64) -> bool {
        let limit = std::time::Duration::from_secs(secs);
        common::eventually(limit, || what(&self.rec.calls())).await
    }
}

fn applied(c: &[Recorded]) -> bool {
    c.iter().any(|c| matches!(c, Recorded::Apply { .. }))
}

fn released_after_apply(c: &[Recorded]) -> bool {
    let first_apply = c.iter().position(|c| matches!(c, Recorded::Apply { .. }));
    first_apply.is_some_and(|i| c[i..].iter().any(|c| matches!(c, Recorded::Release { .. })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_with_otherwise_invalid_fields_cancels_an_active_timeslot() {
    let s = site().await;
    let (start, end) = (at(300), at(120_000));
    s.post(&note(vec![slot("ev-c", start, end, json!({}))]))
        .await;
    assert!(s.wait_for(applied, 10).await, "never applied");
    // The cancelling revision is otherwise broken: end before start, energy out of range,
    // and it is retried without its times at all.
    let broken = slot(
        "ev-c",
        end,
        start,
        json!({"cancelled": true, "energy_kw": -3.0}),
    );
    let asked = Utc::now();
    let body = s.post(&note(vec![broken])).await;
    assert_eq!(body["rejected"], 1, "{body}");
    assert!(
        s.wait_for(released_after_apply, 5).await,
        "not released: {:?}",
        s.rec.calls()
    );
    let took = Utc::now() - asked;
    eprintln!(
        "CANCEL: normal operation restored {} ms after the cancellation",
        took.num_milliseconds()
    );
    assert!(took < Duration::seconds(2), "{took}");
    // A redelivery changes nothing more and is no error.
    let mut no_times = json!({"meter_event_id": "ev-c", "cancelled": true});
    no_times["energy_kw"] = json!("lots");
    let body = s.post(&note(vec![no_times])).await;
    assert_eq!(body["rejected"], 1, "{body}");
    s.running.stop().await;
}

/// SPEC §2.4 out of order: the original's delivery failed (a 503 or a timeout), its
/// cancellation got through — rejected for its other fields, but it still cancels — and
/// Leap's retry of the original comes last. The timeslot must be stored cancelled, not
/// re-armed by the older revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_cancellation_before_its_original_keeps_it_cancelled() {
    let s = site().await;
    let (start, end) = (at(1_500), at(120_000));
    let cancel = slot(
        "ev-late",
        start,
        end,
        json!({"cancelled": true, "energy_kw": 0.0}),
    );
    let body = s.post(&note(vec![cancel])).await;
    assert_eq!(body["rejected"], 1, "{body}");
    let body = s
        .post(&note(vec![slot("ev-late", start, end, json!({}))]))
        .await;
    assert_eq!(
        (body["new"].as_u64(), body["conflict"].as_u64()),
        (Some(0), Some(1)),
        "{body}"
    );
    let c = leap_edge::store::open_read_only(&s.dir.path().join("leap-edge.db")).unwrap();
    let all = leap_edge::store::query::all_timeslots(&c).unwrap();
    let stored = all
        .iter()
        .find(|t| t.timeslot.event_id == "ev-late")
        .unwrap();
    assert!(stored.cancelled_final && stored.conflict, "{stored:?}");
    // Past its start nothing was applied.
    assert!(
        !s.wait_for(applied, 3).await,
        "re-armed: {:?}",
        s.rec.calls()
    );
    s.running.stop().await;
}

/// A sender that hangs up while its notification waits for the database (Leap gives up
/// after 10 s): the notification is committed anyway, and dispatch must act on it at
/// once, not at the next periodic replan a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_sender_hung_up_is_dispatched_at_once() {
    let s = site().await;
    let store = s.running.app.store.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        store
            .call(move |_| {
                let _ = started_tx.send(());
                let _ = go_rx.recv();
                Ok(())
            })
            .await
    });
    started_rx.await.unwrap();
    let body = note(vec![slot("ev-hung", at(500), at(120_000), json!({}))]).to_string();
    let hung = tokio::time::timeout(std::time::Duration::from_millis(500), s.client.post(&body));
    assert!(hung.await.is_err(), "answered while the writer was held");
    drop(go_tx);
    assert!(
        s.wait_for(applied, 5).await,
        "not dispatched within 5 s: {:?}",
        s.rec.calls()
    );
    s.running.stop().await;
}

fn warned(t: &Value, needle: &str) -> bool {
    t["warnings"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap_or("").contains(needle)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_optional_field_is_a_warning_never_a_refusal() {
    let s = site().await;
    let (start, end) = (at(300), at(120_000));
    let body = json!({"integration_test_notification": false, "communication_test": null,
        "meter_dispatches": [{"meter_id": M1, "partner_reference": 42, "timeslots": [
            slot("ev-opt", start, end, json!({"nomination_kw": "12", "priority": 0,
                "programs": ["DRAM", null], "is_voluntary": "no"})),
            slot("ev-comm", at(600_000), at(700_000),
                json!({"communication_test": null, "is_communication_test": true, "priority": 99})),
        ]}],
        "group_dispatches": [{"market_group_id": "g-1", "meter_ids": [M1],
            "partner_references": ["ref-1", null], "timeslots": [{
                "market_group_event_id": "ev-group", "start_time": ts(at(800_000)),
                "end_time": ts(at(900_000)), "cancelled": false, "energy_kw": 5.0,
                "performance_compensation_cap": "up-to-site-load", "priority": 2}]}]});
    let r = s.post(&body).await;
    assert_eq!(
        (r["new"].as_u64(), r["rejected"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    let t = s.stored("ev-opt");
    assert!(warned(&t, "partner_reference"), "{t}");
    assert!(
        warned(&t, "nomination_kw") && t["nomination_kw"].is_null(),
        "{t}"
    );
    assert!(warned(&t, "clamped to 1") && t["priority"] == 1, "{t}");
    assert!(
        warned(&t, "programs") && t["programs"] == json!(["DRAM"]),
        "{t}"
    );
    assert!(
        warned(&t, "commitment") && t["is_voluntary"] == false,
        "{t}"
    );
    let c = s.stored("ev-comm");
    assert_eq!(c["communication_test"], true, "the cautious reading: {c}");
    assert!(warned(&c, "clamped to 10") && c["priority"] == 10, "{c}");
    let g = s.stored("ev-group");
    assert!(
        warned(&g, "partner_references") && g["partner_references"] == json!(["ref-1"]),
        "{g}"
    );
    // And the flagged timeslot is dispatched like any other.
    assert!(s.wait_for(applied, 10).await, "never applied");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_in_one_notification_last_wins_and_a_redelivery_is_duplicates() {
    let s = site().await;
    let (start, end) = (at(600_000), at(700_000));
    let body = note(vec![
        slot("ev-twice", start, end, json!({"energy_kw": 5.0})),
        slot("ev-twice", start, end, json!({"energy_kw": 7.0})),
    ]);
    let r = s.post(&body).await;
    assert_eq!(r["new"], 1, "{r}");
    let t = s.stored("ev-twice");
    assert_eq!(t["energy_kw"]["kw"], 7.0, "{t}");
    assert!(warned(&t, "appears 2 times"), "{t}");
    let r = s.post(&body).await;
    assert_eq!(
        (
            r["new"].as_u64(),
            r["updated"].as_u64(),
            r["duplicate"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "{r}"
    );
    s.running.stop().await;
}

/// SPEC §2.4 inside one notification: cancelled, then not. The cancellation was seen, so
/// it is final: stored cancelled, the un-cancel after it a conflict; again, duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_then_not_in_one_notification_stays_cancelled() {
    let s = site().await;
    let (start, end) = (at(1_000), at(120_000));
    let body = note(vec![
        slot("ev-cu", start, end, json!({"cancelled": true})),
        slot("ev-cu", start, end, json!({})),
    ]);
    let r = s.post(&body).await;
    assert_eq!(
        (r["new"].as_u64(), r["conflict"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    let c = leap_edge::store::open_read_only(&s.dir.path().join("leap-edge.db")).unwrap();
    let all = leap_edge::store::query::all_timeslots(&c).unwrap();
    let stored = all.iter().find(|t| t.timeslot.event_id == "ev-cu").unwrap();
    assert!(stored.cancelled_final && stored.conflict, "{stored:?}");
    let r = s.post(&body).await;
    assert_eq!(
        (r["new"].as_u64(), r["duplicate"].as_u64()),
        (Some(0), Some(2)),
        "{r}"
    );
    assert!(
        !s.wait_for(applied, 2).await,
        "re-armed: {:?}",
        s.rec.calls()
    );
    s.running.stop().await;
}
