//! Issue 10.5: what one notification may make the gateway store, through the real listener
//! and the real database: limits answered 413 naming the key, timeslots beyond a duration
//! or horizon rejected with their reason, and pruning with the retention.

use crate::common;

use common::{Daemon, local_get};
use std::time::Duration;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

/// 10.5: a notification over a limit is answered 413 naming the limit and changes nothing;
/// memory stays bounded while it is refused.
#[tokio::test]
async fn oversized_notifications_are_refused_naming_the_limit() {
    let d = Daemon::start();
    let c = d.client();
    let pid = d.child.as_ref().unwrap().id();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    // The issue's group notification: 25,000 meter ids x 20 timeslots, under 1 MiB.
    let ids: Vec<String> = (0..25_000).map(|i| format!("{i:08x}")).collect();
    let slots: Vec<serde_json::Value> = (0..20)
        .map(|k| {
            serde_json::json!({
                "market_group_event_id": format!("g-{k}"),
                // 20 minutes each: all 2,000 within `max_start_ahead_days`.
                "start_time": (start + chrono::Duration::minutes(20 * k)).to_rfc3339(),
                "end_time": (start + chrono::Duration::minutes(20 * k + 20)).to_rfc3339(),
                "energy_kw": 5.0,
            })
        })
        .collect();
    let group = serde_json::json!({
        "group_dispatches": [{"market_group_id": "g", "meter_ids": ids, "timeslots": slots}]
    })
    .to_string();
    assert!(group.len() < 1024 * 1024, "{}", group.len());
    let before = rss_kb(pid);
    let r = c.post(&group).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("limits.max_meter_ids"), "{}", r.text);

    // 85,000 distinct invalid timeslots.
    let bad: Vec<String> = (0..85_000).map(|i| format!(r#"{{"s":{i}}}"#)).collect();
    let body = format!(
        r#"{{"meter_dispatches":[{{"meter_id":"{M1}","timeslots":[{}]}}]}}"#,
        bad.join(",")
    );
    assert!(body.len() < 1024 * 1024, "{}", body.len());
    let r = c.post(&body).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("limits.max_timeslots"), "{}", r.text);
    // A 1 MB meter id in an entry of 200 timeslots: each timeslot would hold a copy of it
    // (200 MB while parsing, 2 GB with 2,000 timeslots).
    let long = "x".repeat(1_000_000);
    let slots = vec![serde_json::json!({}); 200];
    let body = serde_json::json!({"meter_dispatches": [{"meter_id": long, "timeslots": slots}]})
        .to_string();
    assert!(body.len() < 1024 * 1024, "{}", body.len());
    let r = c.post(&body).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(
        r.text.contains("limits.max_meter_ids × 512 bytes"),
        "{}",
        r.text
    );
    let after = rss_kb(pid);
    eprintln!("RSS {before} kB -> {after} kB (peak) while refusing all three");
    assert!(
        after < before + 48 * 1024,
        "RSS grew from {before} to {after} kB"
    );
    assert_eq!(d.count("notifications"), 0);
    assert_eq!(d.count("timeslots"), 0);
    assert_eq!(d.count("timeslot_revisions"), 0);
    assert_eq!(d.count("rejected_timeslots"), 0);
    let log = d.log();
    assert!(log.matches("timeslot rejected").count() <= 3, "{log}");

    // The most the defaults let one notification store: 2,000 timeslots of a 10-meter group
    // (20,000 meter-id references).
    let bytes = |d: &Daemon| -> i64 {
        d.db()
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let before_db = bytes(&d);
    let ids: Vec<String> = (0..10).map(|i| format!("{i:036}")).collect();
    let slots: Vec<serde_json::Value> = (0..2_000)
        .map(|k| {
            serde_json::json!({
                "market_group_event_id": format!("max-{k}"),
                // 20 minutes each: all 2,000 within `max_start_ahead_days`.
                "start_time": (start + chrono::Duration::minutes(20 * k)).to_rfc3339(),
                "end_time": (start + chrono::Duration::minutes(20 * k + 20)).to_rfc3339(),
                "energy_kw": 5.0, "programs": ["DRAM"], "dispatch_event_types": ["day-ahead"],
            })
        })
        .collect();
    let body = serde_json::json!({
        "group_dispatches": [{"market_group_id": "g", "meter_ids": ids, "timeslots": slots}]
    })
    .to_string();
    let r = c.post(&body).await;
    assert_eq!(r.body["new"], 2_000, "{}", r.text);
    let grown = bytes(&d) - before_db;
    eprintln!(
        "a notification at the limits: {} kB sent, database +{} kB",
        body.len() / 1024,
        grown / 1024
    );
    assert!(grown < 8 * 1024 * 1024, "database grew {grown} bytes");
}

/// A real group award is not refused for its product of meters and timeslots: a 1,000-meter
/// group's day-ahead award in quarter hours (96,000 meter-id references, ~150 kB) is stored,
/// its list once. Until 2026-11-30 the default bound (20,000) answered 413 to every retry.
#[tokio::test]
async fn a_large_group_award_in_quarter_hours_is_stored() {
    let d = Daemon::start();
    let pid = d.child.as_ref().unwrap().id();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let ids: Vec<String> = (0..1_000).map(|i| format!("{i:036}")).collect();
    let slots: Vec<serde_json::Value> = (0..96)
        .map(|k| {
            serde_json::json!({
                "market_group_event_id": format!("q-{k}"),
                "start_time": (start + chrono::Duration::minutes(15 * k)).to_rfc3339(),
                "end_time": (start + chrono::Duration::minutes(15 * k + 15)).to_rfc3339(),
                "energy_kw": 5.0, "programs": ["DRAM"], "dispatch_event_types": ["day-ahead"],
            })
        })
        .collect();
    let body = serde_json::json!({
        "group_dispatches": [{"market_group_id": "g", "meter_ids": ids, "timeslots": slots}]
    })
    .to_string();
    let before = rss_kb(pid);
    let r = d.client().post(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["new"], 96, "{}", r.text);
    assert_eq!(d.count("meter_groups"), 1);
    let after = rss_kb(pid);
    eprintln!("RSS {before} kB -> {after} kB (peak) storing 1,000 meters x 96 timeslots");
    assert!(
        after < before + 48 * 1024,
        "RSS grew from {before} to {after} kB"
    );
}

/// Peak resident memory (VmHWM) of a process, kB.
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 10.5: a timeslot from year 0000 to 9999, or starting a year ahead, is rejected with its
/// reason; the rest of the notification stands.
#[tokio::test]
async fn timeslots_beyond_duration_or_horizon_are_rejected_with_reason() {
    let d = Daemon::start();
    let now = chrono::Utc::now();
    let good = common::timeslot_json(
        M1,
        "ok-1",
        now + chrono::Duration::hours(2),
        3600,
        Some(5.0),
        serde_json::json!({}),
    );
    let mut centuries = good.clone();
    centuries["meter_event_id"] = "forever".into();
    centuries["start_time"] = "0000-01-01T00:00:00Z".into();
    centuries["end_time"] = "9999-12-31T23:59:59Z".into();
    let far = common::timeslot_json(
        M1,
        "next-year",
        now + chrono::Duration::days(365),
        3600,
        Some(5.0),
        serde_json::json!({}),
    );
    let r = d
        .client()
        .post(&common::meter_notification(M1, vec![good, centuries, far]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["new"], 1, "{}", r.text);
    assert_eq!(r.body["rejected"], 2, "{}", r.text);
    let reasons: Vec<String> = d
        .db()
        .prepare("SELECT event_id || ': ' || reason FROM rejected_timeslots ORDER BY event_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        reasons[0].starts_with("forever: ") && reasons[0].contains("limits.max_timeslot_hours"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("next-year: ") && reasons[1].contains("limits.max_start_ahead_days"),
        "{reasons:?}"
    );
    let m = local_get(d.metrics_addr, "/metrics").await.text;
    assert!(
        m.contains("leap_edge_timeslots_rejected_total{reason=\"over_limit\"} 2"),
        "{m}"
    );
}

/// 10.5: rejected timeslots and superseded revisions go with the raw notifications once
/// past retention; each timeslot keeps its latest revision.
#[tokio::test]
async fn rejected_rows_and_old_revisions_are_pruned_with_retention() {
    let mut d = Daemon::start();
    let c = d.client();
    let start = chrono::Utc::now() + chrono::Duration::hours(3);
    let v1 = common::timeslot_json(M1, "rev", start, 3600, Some(5.0), serde_json::json!({}));
    let v2 = common::timeslot_json(M1, "rev", start, 3600, Some(7.0), serde_json::json!({}));
    let bad = serde_json::json!({"meter_event_id": "bad", "start_time": "nope"});
    assert_eq!(
        c.post(&common::meter_notification(M1, vec![v1, bad]))
            .await
            .status,
        200
    );
    assert_eq!(
        c.post(&common::meter_notification(M1, vec![v2]))
            .await
            .status,
        200
    );
    assert!(d.terminate());
    {
        let old = "2020-01-01T00:00:00.000Z";
        let w = rusqlite::Connection::open(d.db_path()).unwrap();
        w.execute("UPDATE notifications SET received_at = ?1", [old])
            .unwrap();
        w.execute("UPDATE rejected_timeslots SET last_received = ?1", [old])
            .unwrap();
        w.execute("UPDATE timeslot_revisions SET received_at = ?1", [old])
            .unwrap();
    }
    assert_eq!(d.count("timeslot_revisions"), 2);
    assert_eq!(d.count("rejected_timeslots"), 1);
    // Housekeeping prunes once at start.
    d.spawn();
    common::eventually(Duration::from_secs(10), || {
        d.count("rejected_timeslots") == 0
    })
    .await;
    // The newest notification's row stays, emptied: its id is never handed out again.
    assert_eq!(d.count("notifications"), 1);
    let (id, body): (i64, String) = d
        .db()
        .query_row("SELECT id, body FROM notifications", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((id, body.as_str()), (2, ""));
    assert_eq!(d.count("rejected_timeslots"), 0);
    assert_eq!(
        d.count("timeslot_revisions"),
        1,
        "the latest revision stays"
    );
    assert_eq!(d.count("timeslots"), 1);
    let rev: i64 = d
        .db()
        .query_row("SELECT revision FROM timeslot_revisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rev, 2);
    let again = common::timeslot_json(M1, "next", start, 3600, Some(5.0), serde_json::json!({}));
    let r = d
        .client()
        .post(&common::meter_notification(M1, vec![again]))
        .await;
    assert_eq!(r.body["notification_id"], 3, "{}", r.text);
}
