//! Group commit (issue 17): the ingests queued behind a busy writer go into one
//! transaction with one commit, each answered after it, and dedup and revisions stay exact
//! inside the batch (SPEC §2.1, §2.3). A batch that cannot commit answers every request in
//! it with an error and stores nothing. Real SQLite files.

use crate::common;

use leap_edge::store::{IngestOutcome, IngestRecord, Store, StoreError};
use std::sync::atomic::Ordering;
use std::time::Duration;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

fn record(body: String) -> IngestRecord {
    IngestRecord {
        received_at: chrono::Utc::now(),
        peer: None,
        headers: serde_json::json!({}),
        parsed: leap_edge::ingest::parse_notification(body.as_bytes()).unwrap(),
        body,
        source: leap_edge::store::Source::Push,
    }
}

fn note(event: &str, kw: f64) -> String {
    // A fixed start, so two calls with the same arguments are the same delivery.
    let start = chrono::DateTime::parse_from_rfc3339("2030-06-05T01:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let slot = common::timeslot_json(M1, event, start, 600, Some(kw), serde_json::json!({}));
    common::meter_notification(M1, vec![slot])
}

/// Hold the writer thread until the returned sender is dropped or sent to.
async fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let s = store.clone();
    tokio::spawn(async move {
        s.call(move |_| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            Ok(())
        })
        .await
    });
    started_rx.await.unwrap();
    go_tx
}

type Pending = tokio::task::JoinHandle<Result<IngestOutcome, StoreError>>;

/// Queue one ingest behind the held writer, and wait until it is in the queue, so the
/// batch's order is the order of these calls.
async fn queue(store: &Store, body: String) -> Pending {
    let before = store.queued();
    let s = store.clone();
    let h = tokio::spawn(async move { s.ingest(record(body)).await });
    while store.queued() == before {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ingests_share_one_commit_and_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leap-edge.db");
    let (store, thread) = Store::open(&path).unwrap();
    let go = hold_writer(&store).await;
    let first = queue(&store, note("E1", 5.0)).await;
    let again = queue(&store, note("E1", 5.0)).await;
    let update = queue(&store, note("E1", 7.0)).await;
    let other = queue(&store, note("E2", 3.0)).await;
    assert_eq!(store.queued(), 4);
    go.send(()).unwrap();

    let mut outcomes: Vec<IngestOutcome> = Vec::new();
    for h in [first, again, update, other] {
        outcomes.push(h.await.unwrap().unwrap());
    }
    let counts: Vec<(u32, u32, u32)> = outcomes
        .iter()
        .map(|o| (o.new, o.duplicate, o.updated))
        .collect();
    // Two deliveries of one timeslot in one batch: one new, one duplicate; then the update.
    assert_eq!(counts, vec![(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0)]);
    let stats = store.batch_stats();
    assert_eq!(
        stats.commits.load(Ordering::Relaxed),
        1,
        "four queued ingests must share one commit"
    );
    assert_eq!(stats.notifications.load(Ordering::Relaxed), 4);

    let db = rusqlite::Connection::open(&path).unwrap();
    let (revisions, duplicates): (i64, i64) = db
        .query_row(
            "SELECT revisions, duplicates FROM timeslots WHERE event_id='E1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((revisions, duplicates), (2, 1));
    let notifications: i64 = db
        .query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(notifications, 4);
    drop(store);
    thread.closed().await;
}

/// One notification of a batch that fails (here a trigger refuses its timeslot, as a full
/// index or a constraint would) is rolled back alone: none of its rows stay, it is answered
/// with an error, and the others in the batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_fails_inside_a_batch_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leap-edge.db");
    let (store, thread) = Store::open(&path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON timeslot_revisions
             WHEN (SELECT event_id FROM timeslots WHERE rowid = NEW.slot) = 'BAD'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let go = hold_writer(&store).await;
    let a = queue(&store, note("A", 5.0)).await;
    let bad = queue(&store, note("BAD", 5.0)).await;
    let b = queue(&store, note("B", 5.0)).await;
    go.send(()).unwrap();
    assert_eq!(a.await.unwrap().unwrap().new, 1);
    let e = bad.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("refused by the test"), "{e}");
    assert_eq!(b.await.unwrap().unwrap().new, 1);
    assert_eq!(store.batch_stats().commits.load(Ordering::Relaxed), 1);
    let db = rusqlite::Connection::open(&path).unwrap();
    let ids: Vec<String> = db
        .prepare("SELECT event_id FROM timeslots ORDER BY event_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ids,
        ["A", "B"],
        "the refused notification left its timeslot"
    );
    let raw: i64 = db
        .query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, 2);
    drop(store);
    thread.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_commit_answers_each_request_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leap-edge.db");
    let (store, thread) = Store::open(&path).unwrap();
    // Another process holds the write lock past the writer's busy timeout (5 s).
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let go = hold_writer(&store).await;
    let a = queue(&store, note("A", 5.0)).await;
    let b = queue(&store, note("B", 5.0)).await;
    go.send(()).unwrap();
    for h in [a, b] {
        let r = h.await.unwrap();
        assert!(
            r.is_err(),
            "a request in an uncommitted batch was acknowledged: {r:?}"
        );
    }
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(store.batch_stats().commits.load(Ordering::Relaxed), 0);
    let count: i64 = other
        .query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0, "nothing of the failed batch is stored");
    // The writer recovers: the next notification commits.
    let ok = store.ingest(record(note("A", 5.0))).await.unwrap();
    assert_eq!(ok.new, 1);
    drop(store);
    thread.closed().await;
}

/// The daily integrity check reads the whole file: it runs on a connection of its own, so
/// it neither waits for nor holds up the writer (ingests, dispatch audit rows).
#[tokio::test]
async fn the_integrity_check_does_not_queue_behind_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leap-edge.db");
    let (store, thread) = Store::open(&path).unwrap();
    store.ingest(record(note("A", 5.0))).await.unwrap();
    let go = hold_writer(&store).await;
    let check = tokio::time::timeout(Duration::from_secs(5), store.quick_check()).await;
    assert_eq!(check.expect("waited for the writer").unwrap(), "ok");
    drop(go);
    drop(store);
    thread.closed().await;
}
