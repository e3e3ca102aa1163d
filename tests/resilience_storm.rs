//! Retry storm (issue 6): the same notification delivered 1,000 times, 64 in flight at
//! once, over real HTTPS into the in-process daemon. It must give one timeslot with one
//! revision and 999 duplicates, and the dispatch loop (recording commander) must command
//! the meter once for it, then release it once at its end.

mod common;

use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::{Recorded, RecordingCommander};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
const DELIVERIES: usize = 1000;
const IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notification_1000_times_gives_one_timeslot_and_one_command() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, cert) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
    let rec = RecordingCommander::default();
    let running = daemon::start(
        leap_edge::config::Config::load(&config).unwrap(),
        Parts {
            commander: Arc::new(rec.clone()),
            clock: Arc::new(SystemClock),
            live: Arc::new(Vec::new),
        },
    )
    .await
    .unwrap();
    let client = common::Client::new(running.addr, cert);
    // The timeslot starts while the storm is still going on (a busy machine needs several
    // seconds for 1,000 TLS handshakes), so re-plans during a running command are covered.
    let start = chrono::Utc::now() + chrono::Duration::seconds(3);
    let end = start + chrono::Duration::seconds(3);
    let slot = common::timeslot_json(M1, "storm", start, 3, Some(12.0), serde_json::json!({}));
    let body = Arc::new(common::meter_notification(M1, vec![slot]));

    let next = Arc::new(AtomicUsize::new(0));
    let new = Arc::new(AtomicUsize::new(0));
    let dup = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, body, next) = (client.clone(), body.clone(), next.clone());
            let (new, dup) = (new.clone(), dup.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < DELIVERIES {
                    let r = client.post(&body).await;
                    assert_eq!(r.status, 200, "{}", r.text);
                    new.fetch_add(r.body["new"].as_u64().unwrap() as usize, Ordering::SeqCst);
                    dup.fetch_add(
                        r.body["duplicate"].as_u64().unwrap() as usize,
                        Ordering::SeqCst,
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let storm = t0.elapsed();
    assert_eq!(
        (new.load(Ordering::SeqCst), dup.load(Ordering::SeqCst)),
        (1, DELIVERIES - 1)
    );

    let db = rusqlite::Connection::open(dir.path().join("leap-edge.db")).unwrap();
    let (rows, revisions, duplicates): (i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), MAX(revisions), MAX(duplicates) FROM timeslots",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, revisions, duplicates), (1, 1, DELIVERIES as i64 - 1));
    let notes: i64 = db
        .query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(notes, DELIVERIES as i64, "every delivery is kept for audit");

    // Wait for the end of the timeslot (and a little more for the release).
    let calls = loop {
        let calls = rec.calls();
        let released = calls.len() >= 3;
        if released && chrono::Utc::now() > end + chrono::Duration::seconds(1) {
            break calls;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{calls:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applies: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Recorded::Apply { .. }))
        .collect();
    assert_eq!(applies.len(), 1, "{calls:?}");
    // Startup release, the one apply, the release at the end: nothing else.
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(matches!(calls[2], Recorded::Release { .. }));
    running.stop().await;
    let audited: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action = 'apply' AND event_id = 'storm'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 1, "one apply in the audit log");
    eprintln!(
        "retry storm: {DELIVERIES} deliveries, {IN_FLIGHT} in flight, storm {:.1} s, commands {calls:?}",
        storm.as_secs_f64()
    );
}
