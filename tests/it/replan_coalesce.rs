//! Replans coalesce (issues 17.2 and 18.4): a burst of notifications over several HTTPS
//! connections costs a few replans, not one per notification, and the change that arrives
//! alone afterwards is still planned. Real HTTPS, real SQLite, recording commander.

use crate::common;

use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::RecordingCommander;
use std::sync::Arc;
use std::time::{Duration, Instant};

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
/// The dispatcher's coalescing window (src/dispatch/engine.rs `COALESCE`).
const WINDOW_MS: u128 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notifications_is_a_few_replans_and_nothing_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, cert) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
    let config = leap_edge::config::Config::load(&path).unwrap();
    let parts = Parts {
        commander: Arc::new(RecordingCommander::default()),
        clock: Arc::new(SystemClock),
        live: Arc::new(Vec::new),
    };
    let running = daemon::start(config, parts).await.unwrap();
    let client = Arc::new(common::Client::new(running.addr, cert));
    let base = chrono::Utc::now() + chrono::Duration::hours(2);
    // The startup plan is made before counting.
    let planned = common::eventually(Duration::from_secs(10), || running.dispatch.replans() >= 1);
    assert!(planned.await, "no start-up plan");
    let before = running.dispatch.replans();

    let started = Instant::now();
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..8 {
                    let at = base + chrono::Duration::minutes(s * 8 + i);
                    let slot = common::timeslot_json(
                        M1,
                        &format!("burst-{s}-{i}"),
                        at,
                        60,
                        Some(5.0),
                        serde_json::json!({}),
                    );
                    let r = client
                        .post(&common::meter_notification(M1, vec![slot]))
                        .await;
                    assert_eq!(r.status, 200, "{}", r.text);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let burst_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replans = running.dispatch.replans() - before;
    let bound = (burst_ms / WINDOW_MS + 2) as u64;
    assert!(
        replans <= bound,
        "64 notifications in {burst_ms} ms caused {replans} replans (at most {bound} expected)"
    );
    assert!(replans >= 1, "the burst was never planned");

    // One change alone is planned: the next boundary moves to its start.
    let soon = chrono::Utc::now() + chrono::Duration::minutes(30);
    let slot = common::timeslot_json(M1, "alone", soon, 60, Some(5.0), serde_json::json!({}));
    let r = client
        .post(&common::meter_notification(M1, vec![slot]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let next = running.dispatch.snapshot().next_boundary;
        if next.is_some_and(|t| (t - soon).num_milliseconds().abs() < 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lone change was not planned: next boundary {next:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}
