//! Issue 13, the polling backstop and the `[schedule]`: the real daemon against the local
//! fake of Leap's API (tests/fake_leap): paging, never-pushed timeslots, cancellations
//! found only by polling, 503/429 handling, push + poll counted once, group searches,
//! recovery triggers, and cron jobs firing.

use crate::common;
use crate::fake_leap;

use common::Daemon;
use fake_leap::FakeLeap;
use fake_leap::site::{METER, cli, site, slot, status, wait_first_poll};
use serde_json::{Value, json};
use std::time::Duration;

fn meter_results(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"meter_id": METER, "timeslots": [slot(&format!("polled-{i:04}"), 3600 + i as i64, json!({}))]}))
        .collect()
}

fn timeslot_row(d: &Daemon, event: &str) -> (String, i64, bool) {
    d.db()
        .query_row(
            "SELECT first_source, revisions, cancelled_final FROM timeslots WHERE kind='meter' AND event_id=?1",
            [event],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstop_pages_finds_unpushed_honours_cancel_and_counts_once() {
    let fake = FakeLeap::start().await;
    let mut data = meter_results(1201);
    // A CAISO real-time event: hidden by Leap's default, so the backstop must ask for it.
    data.push(json!({"meter_id": METER, "timeslots": [slot("rt-5m", 600, json!({"dispatch_event_types": ["5m"]}))]}));
    fake.state.lock().unwrap().meter_results = data;
    let d = Daemon::start_with(&site(&fake, ""));
    let s = wait_first_poll(&d).await;
    assert_eq!(s["leap"]["backstop"]["first_seen_by_poll"], 1202, "{s}");
    assert_eq!(
        s["leap"]["backstop"]["first_seen_by_poll_recent"], 1202,
        "{s}"
    );
    assert!(
        s["leap"]["backstop"]["first_seen_by_poll_newest"].is_string(),
        "{s}"
    );
    assert_eq!(s["leap"]["backstop"]["last_report"]["pages"], 3);
    let searches = fake.requests("/v2/dispatch/meter/search");
    assert_eq!(searches.len(), 3);
    for r in &searches {
        assert_eq!(r.body["exclude_real_time_events"], false);
        assert_eq!(r.body["meter_ids"], json!([METER]));
    }
    assert!(searches[0].body["page_token"].is_null() && searches[1].body["page_token"].is_string());
    assert_eq!(timeslot_row(&d, "rt-5m").0, "poll");

    // Pushed first, then also found by polling: stored once, not "first seen by polling".
    let pushed = slot("pushed-1", 7200, json!({}));
    let resp = d
        .client()
        .post(&common::meter_notification(METER, vec![pushed.clone()]))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let mut cancelled = fake.state.lock().unwrap().meter_results[7].clone();
    cancelled["timeslots"][0]["cancelled"] = json!(true);
    {
        let mut st = fake.state.lock().unwrap();
        st.meter_results
            .push(json!({"meter_id": METER, "timeslots": [pushed]}));
        st.meter_results[7] = cancelled.clone();
    }
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["new"].as_u64(), r["updated"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(r["duplicate"], 1202, "{r}");
    assert_eq!(timeslot_row(&d, "pushed-1"), ("push".into(), 1, false));
    assert_eq!(timeslot_row(&d, "polled-0007"), ("poll".into(), 2, true));
    assert_eq!(status(&d)["leap"]["backstop"]["first_seen_by_poll"], 1202);
    // Found by polling first, then pushed (a relay's retry after the poll): the push did
    // arrive, so it is not one that never did.
    let late = fake.state.lock().unwrap().meter_results[3]["timeslots"][0].clone();
    let resp = d
        .client()
        .post(&common::meter_notification(METER, vec![late]))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(timeslot_row(&d, "polled-0003").0, "poll+push");
    // `status` counts them at each poll.
    assert_eq!(cli(&d, &["leap", "poll"]).0, 0);
    assert_eq!(status(&d)["leap"]["backstop"]["first_seen_by_poll"], 1201);

    // Cancellation is final: a later search answer without it does not re-arm the timeslot.
    cancelled["timeslots"][0]["cancelled"] = json!(false);
    fake.state.lock().unwrap().meter_results[7] = cancelled;
    let (code, out, _) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["conflict"], 1, "{r}");
    assert!(timeslot_row(&d, "polled-0007").2, "still cancelled");
    let events = d.events_json();
    let e = events["timeslots"]
        .as_array()
        .or(events.as_array())
        .unwrap()
        .iter()
        .find(|e| e["meter_event_id"] == "polled-0007" || e["event_id"] == "polled-0007")
        .cloned();
    assert!(
        e.is_some_and(|e| e.to_string().contains("cancel")),
        "events shows it cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstop_retries_503_and_backs_off_on_429() {
    let fake = FakeLeap::start().await;
    fake.state.lock().unwrap().meter_results = meter_results(1);
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    let before = fake.requests("/search").len();
    fake.state.lock().unwrap().faults = [(503, None), (503, None), (429, Some(2))].into();
    fake.state.lock().unwrap().meter_results = meter_results(2);
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["new"], 1, "found after the faults: {r}");
    let tries = &fake.requests("/search")[before..];
    assert_eq!(
        tries.len(),
        4,
        "two 503s and a 429 retried, then the answer"
    );
    let gap = tries[3].at - tries[2].at;
    assert!(
        gap >= Duration::from_secs(2),
        "Retry-After honoured: {gap:?}"
    );
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(50));
    assert!(d.log().contains("Leap API call failed; retrying"));
}

/// The admin socket's 10 s bound is for reading and answering; a poll of a slow Leap is
/// bounded by the Leap client's own timeouts instead, so the technician gets its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_through_the_daemon_may_outlast_the_admin_socket_bound() {
    let fake = FakeLeap::start().await;
    fake.state.lock().unwrap().meter_results = meter_results(1);
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    // The admin socket bounds other requests by 10 s (`admin::EXCHANGE_TIMEOUT`).
    let slow = Duration::from_secs(12);
    fake.state.lock().unwrap().answer_delay = Some(slow);
    fake.state.lock().unwrap().meter_results = meter_results(2);
    let started = std::time::Instant::now();
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(started.elapsed() >= slow, "Leap really was slow");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["new"], 1, "{r}");
    assert!(status(&d)["leap"]["backstop"]["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_fires_and_status_shows_next_fire() {
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&site(
        &fake,
        "[schedule]\nprune = \"*/1 * * * * *\"\nintegrity = \"*/1 * * * * *\"\n",
    ));
    let both_fired = || {
        let log = d.log();
        let fired = |job: &str| {
            log.matches(&format!("job=\"{job}\"")).count()
                + log.matches(&format!("job={job}")).count()
        };
        fired("prune") >= 2 && fired("integrity") >= 2
    };
    let fired = common::eventually(Duration::from_secs(20), both_fired).await;
    assert!(fired, "schedule did not fire:\n{}", d.log());
    let s = status(&d);
    let jobs = s["leap"]["schedule"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    // Issue 14: the daily interval-data upload is listed with its time; both defaults are
    // spread by the site's meter ids (a fleet must not poll Leap in lockstep).
    let upload = jobs.iter().find(|j| j["job"] == "upload").unwrap();
    let upload = upload["cron"].as_str().unwrap();
    assert!(
        upload.ends_with(" 2 * * *") && upload != "0 15 2 * * *",
        "{upload}"
    );
    let poll = jobs.iter().find(|j| j["job"] == "poll").unwrap();
    assert!(
        poll["cron"].as_str().unwrap().ends_with("-59/5 * * * *"),
        "{poll}"
    );
    let next = chrono::DateTime::parse_from_rfc3339(poll["next_fire"].as_str().unwrap()).unwrap();
    let ahead = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::zero() && ahead <= chrono::Duration::minutes(5),
        "{ahead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_dispatches_are_searched_for_groups_seen_before() {
    const GROUP: &str = "11aa7aae-24e5-455f-91e9-e0f5f145f2ae";
    const QUIET_GROUP: &str = "22bb7aae-24e5-455f-91e9-e0f5f145f2ae";
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    assert!(
        fake.requests("/v2/dispatch/group/search").is_empty(),
        "no group known yet"
    );
    let group_slot = |id: &str| {
        let mut t = slot(id, 5400, json!({}));
        let o = t.as_object_mut().unwrap();
        o.remove("meter_event_id");
        o.insert("market_group_event_id".into(), json!(id));
        t
    };
    let pushed = group_slot("g-pushed");
    let push = json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": GROUP, "meter_ids": [METER], "timeslots": [pushed]}]});
    assert_eq!(d.client().post(&push.to_string()).await.status, 200);
    // A group whose last dispatch ended days ago (a quiet spell) is still searched.
    let mut quiet = group_slot("g-last-week");
    let start = chrono::Utc::now() - chrono::Duration::days(6);
    quiet["start_time"] = json!(start.to_rfc3339());
    quiet["end_time"] = json!((start + chrono::Duration::hours(1)).to_rfc3339());
    let push = json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": QUIET_GROUP, "meter_ids": [METER], "timeslots": [quiet]}]});
    assert_eq!(d.client().post(&push.to_string()).await.status, 200);
    // `leap test --group` without a configured group makes one up: not the account's.
    let test = json!({"integration_test_notification": true, "communication_test": false,
        "group_dispatches": [{"market_group_id": "made-up-test-group", "meter_ids": [METER],
                              "timeslots": [group_slot("g-integration-test")]}]});
    assert_eq!(d.client().post(&test.to_string()).await.status, 200);
    fake.state.lock().unwrap().group_results = vec![
        json!({"market_group_id": GROUP, "meter_ids": [METER], "timeslots": [pushed, group_slot("g-missed")]}),
    ];
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["new_event_ids"], json!(["g-missed"]), "{r}");
    assert_eq!(r["duplicate"], 1, "{r}");
    let searches = fake.requests("/v2/dispatch/group/search");
    let mut searched: Vec<String> =
        serde_json::from_value(searches[0].body["market_group_ids"].clone()).unwrap();
    searched.sort();
    let mut known = vec![GROUP.to_string(), QUIET_GROUP.to_string()];
    known.sort();
    assert_eq!(searched, known);
    assert_eq!(searches[0].body["exclude_real_time_events"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_missed_while_down_is_dispatched_after_the_start_poll() {
    let fake = FakeLeap::start().await;
    // Pushed (and given up on by Leap) while the gateway was unreachable; still current.
    fake.state.lock().unwrap().meter_results =
        vec![json!({"meter_id": METER, "timeslots": [slot("missed-while-down", 2, json!({}))]})];
    let d = Daemon::start_with(&site(&fake, ""));
    let mut out = String::new();
    let dispatched = common::eventually(Duration::from_secs(30), || {
        let (code, text, _) = cli(&d, &["history", "--json"]);
        assert_eq!(code, 0);
        out = text;
        out.contains("missed-while-down") && out.contains("apply")
    })
    .await;
    assert!(dispatched, "never dispatched: {out}\n{}", d.log());
    assert_eq!(timeslot_row(&d, "missed-while-down").0, "poll");
    assert!(d.log().contains("never pushed"), "the operator is warned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and chattr on ext4 (.ci/run runs it); waits out the one-minute poll gap"]
async fn storage_recovery_triggers_a_poll_that_finds_the_refused_dispatch() {
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    let paths: Vec<_> = ["", "-wal"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", d.db_path().display())))
        .chain([d.dir.path().to_path_buf()])
        .collect();
    let frozen = common::Immutable::set(&paths);
    let refused = slot("refused-while-read-only", 3600, json!({}));
    let r = d
        .client()
        .post(&common::meter_notification(METER, vec![refused.clone()]))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    // Leap gives up on the push; the dispatch is still in its search results.
    fake.state.lock().unwrap().meter_results =
        vec![json!({"meter_id": METER, "timeslots": [refused]})];
    drop(frozen);
    let mut s = Value::Null;
    let polled = common::eventually(Duration::from_secs(90), || {
        s = status(&d);
        s["leap"]["backstop"]["last_trigger"] == "storage recovered"
            && s["leap"]["backstop"]["last_report"]["new"] == 1
    })
    .await;
    assert!(polled, "no poll after recovery: {s}");
    assert_eq!(timeslot_row(&d, "refused-while-read-only").0, "poll");
}

/// A poll holds a timeslot to the same `[limits]` as a push (before, a 48 h timeslot a push
/// rejects was stored by the next poll and dispatched), and an entry field of the wrong
/// type is judged by the push parser, not fatal to the whole poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_keeps_the_push_limits_and_tolerates_an_odd_field() {
    let fake = FakeLeap::start().await;
    let long = common::timeslot_json(
        METER,
        "two-days",
        chrono::Utc::now() + chrono::Duration::hours(1),
        48 * 3600,
        Some(5.0),
        json!({}),
    );
    fake.state.lock().unwrap().meter_results = vec![
        json!({"meter_id": METER, "partner_reference": 5, "timeslots": [slot("odd-entry", 3600, json!({}))]}),
        json!({"meter_id": METER, "timeslots": [long]}),
    ];
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        r["duplicate"], 1,
        "the odd entry was stored by the first poll: {r}"
    );
    assert_eq!(r["rejected"], 1, "{r}");
    assert_eq!(timeslot_row(&d, "odd-entry").0, "poll");
    let stored: i64 = d
        .db()
        .query_row(
            "SELECT COUNT(*) FROM timeslots WHERE event_id = 'two-days'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0, "a timeslot over max_timeslot_hours was stored");
    // The second poll found nothing new: the timeslot it rejects again is the same one,
    // so no second raw copy of the page (one every 5 minutes for as long as Leap lists it).
    let raw: i64 = d
        .db()
        .query_row(
            "SELECT COUNT(*) FROM notifications WHERE source = 'poll'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(raw, 1, "a poll that found nothing new kept a raw copy");
}

/// A poll answer asked for before a push stored a newer revision is older than what is
/// stored: it does not replace it (it did, until the next poll put it right).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answer_older_than_a_push_does_not_replace_it() {
    let fake = FakeLeap::start().await;
    let old = slot("raced", 7200, json!({}));
    fake.state.lock().unwrap().meter_results =
        vec![json!({"meter_id": METER, "timeslots": [old.clone()]})];
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    assert_eq!(timeslot_row(&d, "raced").1, 1);
    // Leap answers the next search 3 s later; a newer revision is pushed meanwhile.
    fake.state.lock().unwrap().answer_delay = Some(Duration::from_secs(3));
    let mut newer = old;
    newer["energy_kw"] = json!(9.0);
    poll_during_push(&d, newer).await;
    assert_eq!(
        timeslot_row(&d, "raced").1,
        2,
        "the push's revision stays the latest"
    );
    let content: String = d
        .db()
        .query_row(
            "SELECT content FROM timeslots WHERE event_id = 'raced'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let content: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(content["energy_kw"]["kw"], 9.0, "{content}");
    // A cancellation is applied whatever the answer's age (a push meanwhile included).
    let mut cancel = fake.state.lock().unwrap().meter_results[0].clone();
    cancel["timeslots"][0]["cancelled"] = json!(true);
    fake.state.lock().unwrap().meter_results = vec![cancel];
    let mut again = slot("raced", 7200, json!({}));
    again["energy_kw"] = json!(11.0);
    poll_during_push(&d, again).await;
    assert!(timeslot_row(&d, "raced").2, "the polled cancellation holds");
}

/// `leap poll` while `pushed` is pushed one second into the (slowed) search.
async fn poll_during_push(d: &Daemon, pushed: Value) {
    let config = d.config_path();
    let poll = std::thread::spawn(move || common::cli_with(&config, &["leap", "poll", "--json"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resp = d
        .client()
        .post(&common::meter_notification(METER, vec![pushed]))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let (code, out, err) = poll.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
}

/// A dispatch found by polling after its start is audited late from its start, however
/// long Leap took to answer the search (its first-seen time is when it was asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_found_late_by_polling_is_audited_late_from_its_start() {
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&site(&fake, ""));
    wait_first_poll(&d).await;
    let started = slot("missed", -30, json!({}));
    {
        let mut st = fake.state.lock().unwrap();
        st.meter_results = vec![json!({"meter_id": METER, "timeslots": [started]})];
        st.answer_delay = Some(Duration::from_secs(2));
    }
    let (code, out, err) = cli(&d, &["leap", "poll", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut lateness = None;
    common::eventually(Duration::from_secs(10), || {
        lateness = d
            .db()
            .query_row(
                "SELECT lateness_ms FROM audit WHERE event_id = 'missed' AND action = 'apply'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok();
        lateness.is_some()
    })
    .await;
    let lateness = lateness.expect("an apply row");
    assert!(lateness >= 30_000, "{lateness} ms");
}
