//! Clock steps (issue 6): the wall clock jumps forward and back while the dispatch loop
//! sleeps towards its next boundary. A forward step across a boundary must fire it at
//! once (not after the monotonic sleep it had planned); a step back must not fire the
//! boundary before the wall clock reaches it; each boundary fires exactly once. Real
//! dispatch loop, real SQLite store, a commander that stamps every call with the wall
//! clock. Steps happen seconds away from any boundary and every wait is generous, so a
//! busy machine only makes the test slower.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use leap_edge::clock::Clock;
use leap_edge::dispatch::{CommandError, Commander, Dispatcher};
use leap_edge::model::Command;
use leap_edge::seam::BoxFuture;
use leap_edge::store::{IngestRecord, Store};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

/// Wall time = origin + real monotonic time since creation + a step offset the test moves.
struct SteppedClock {
    origin: DateTime<Utc>,
    start: Instant,
    offset_ms: AtomicI64,
}

impl SteppedClock {
    fn step(&self, secs: i64) {
        self.offset_ms.fetch_add(secs * 1000, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> DateTime<Utc> {
        let run = Duration::from_std(self.start.elapsed()).unwrap();
        self.origin + run + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Apply(String),
    Release,
}

/// Records every call with the wall time at which it was made.
struct Stamped {
    clock: Arc<SteppedClock>,
    calls: Mutex<Vec<(DateTime<Utc>, Call)>>,
}

impl Stamped {
    fn calls(&self) -> Vec<(DateTime<Utc>, Call)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Commander for Stamped {
    fn apply<'a>(&'a self, _: &'a str, c: &'a Command) -> BoxFuture<'a, Result<(), CommandError>> {
        let call = (self.clock.now(), Call::Apply(c.event_id.clone()));
        self.calls.lock().unwrap().push(call);
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), CommandError>> {
        self.calls
            .lock()
            .unwrap()
            .push((self.clock.now(), Call::Release));
        Box::pin(async { Ok(()) })
    }
}

async fn wait_calls(rec: &Stamped, n: usize) -> Vec<(DateTime<Utc>, Call)> {
    let limit = std::time::Duration::from_secs(60);
    common::eventually(limit, || rec.calls().len() >= n).await;
    let calls = rec.calls();
    assert!(calls.len() >= n, "waited for {n} calls: {calls:?}");
    calls
}

async fn nap(ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// A real dispatch loop on a real store holding one timeslot "A" of meter M1, starting
/// `start_s` after the clock's origin and lasting `secs`, with the stamping commander.
struct Running {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    store: Store,
    thread: leap_edge::store::StoreThread,
    origin: DateTime<Utc>,
    clock: Arc<SteppedClock>,
    rec: Arc<Stamped>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn one_timeslot(start_s: i64, secs: i64) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
        let config = Arc::new(leap_edge::config::Config::load(&config).unwrap());
        let (store, thread) = Store::open(&config.storage.path).unwrap();
        let origin = Utc::now();
        let clock = Arc::new(SteppedClock {
            origin,
            start: Instant::now(),
            offset_ms: AtomicI64::new(0),
        });
        let start = origin + Duration::seconds(start_s);
        let slot = common::timeslot_json(M1, "A", start, secs, Some(5.0), serde_json::json!({}));
        let body = common::meter_notification(M1, vec![slot]);
        store
            .ingest(IngestRecord {
                received_at: origin,
                peer: None,
                headers: serde_json::json!({}),
                body: body.clone(),
                parsed: leap_edge::ingest::parse_notification(body.as_bytes()).unwrap(),
                source: leap_edge::store::Source::Push,
            })
            .await
            .unwrap();
        let rec = Arc::new(Stamped {
            clock: clock.clone(),
            calls: Mutex::new(Vec::new()),
        });
        let db = config.storage.path.clone();
        let dispatcher = Dispatcher::new(config, store.clone(), rec.clone(), clock.clone());
        let (changes, changes_rx) = tokio::sync::watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let _changes = changes;
            dispatcher.run(changes_rx, stop_rx).await;
        });
        Running {
            _dir: dir,
            db,
            store,
            thread,
            origin,
            clock,
            rec,
            stop,
            task,
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        drop(self.store);
        self.thread.closed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_steps_neither_fire_early_nor_miss_a_boundary() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
    let config = Arc::new(leap_edge::config::Config::load(&config).unwrap());
    let (store, thread) = Store::open(&config.storage.path).unwrap();

    let origin = Utc::now();
    let clock = Arc::new(SteppedClock {
        origin,
        start: Instant::now(),
        offset_ms: AtomicI64::new(0),
    });
    let at = |s: i64| origin + Duration::seconds(s);
    let (a_start, a_end, b_start, b_end) = (at(60), at(70), at(100), at(110));
    let slots = vec![
        common::timeslot_json(M1, "A", a_start, 10, Some(5.0), serde_json::json!({})),
        common::timeslot_json(M1, "B", b_start, 10, Some(7.0), serde_json::json!({})),
    ];
    let body = common::meter_notification(M1, slots);
    store
        .ingest(IngestRecord {
            received_at: origin,
            peer: None,
            headers: serde_json::json!({}),
            body: body.clone(),
            parsed: leap_edge::ingest::parse_notification(body.as_bytes()).unwrap(),
            source: leap_edge::store::Source::Push,
        })
        .await
        .unwrap();

    let rec = Arc::new(Stamped {
        clock: clock.clone(),
        calls: Mutex::new(Vec::new()),
    });
    let dispatcher = Dispatcher::new(config, store.clone(), rec.clone(), clock.clone());
    let (_changes, changes_rx) = tokio::sync::watch::channel(0u64);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(dispatcher.run(changes_rx, stop_rx));
    assert_eq!(
        wait_calls(&rec, 1).await[0].1,
        Call::Release,
        "startup release"
    );

    // Forward, not reaching A (30 s of margin): nothing may fire.
    clock.step(30);
    nap(1500).await;
    assert_eq!(rec.calls().len(), 1, "{:?}", rec.calls());
    // Forward across A's start: A fires now, not after the ~28 s sleep planned before.
    let stepped_at = Instant::now();
    clock.step(31);
    let calls = wait_calls(&rec, 2).await;
    assert_eq!(calls[1].1, Call::Apply("A".into()));
    assert!(calls[1].0 >= a_start, "A fired early: {calls:?}");
    assert!(
        stepped_at.elapsed().as_secs() < 15,
        "A missed its boundary after the step"
    );
    // Forward across A's end: released at once.
    clock.step(10);
    let calls = wait_calls(&rec, 3).await;
    assert_eq!(calls[2].1, Call::Release);
    assert!(calls[2].0 >= a_end, "A released early: {calls:?}");

    // Up to ~8 s before B, then back 4 s (staying after A's end): B must wait for the wall
    // clock to reach it again, and then fire exactly once.
    let before_b = (b_start - clock.now()).num_seconds() - 8;
    clock.step(before_b);
    nap(1500).await;
    clock.step(-4);
    let calls = wait_calls(&rec, 4).await;
    assert_eq!(calls[3].1, Call::Apply("B".into()));
    assert!(calls[3].0 >= b_start, "B fired early: {calls:?}");
    clock.step(15);
    let calls = wait_calls(&rec, 5).await;
    assert_eq!(calls[4].1, Call::Release);
    assert!(calls[4].0 >= b_end, "B released early: {calls:?}");

    // Nothing more: no boundary fired twice.
    nap(2500).await;
    let calls = rec.calls();
    assert_eq!(calls.len(), 5, "{calls:?}");
    let _ = stop.send(true);
    task.await.unwrap();
    drop(store);
    thread.closed().await;
    eprintln!(
        "clock steps: +30 s, +31 s across A, +10 s across A's end, +{before_b} s, -4 s before B, +15 s; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Issue 9: an NTP correction of an hour backwards while a timeslot is active. Against the
/// corrected clock the timeslot has not started: normal operation at once (the plan is
/// recomputed for the new "now"), and the timeslot applies again when the clock gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_hour_backward_step_during_an_active_timeslot_is_honoured_at_once() {
    let r = Running::one_timeslot(2, 7200).await;
    let (clock, rec) = (r.clock.clone(), r.rec.clone());
    let a_start = r.origin + Duration::seconds(2);
    let calls = wait_calls(&rec, 2).await;
    assert_eq!(calls[1].1, Call::Apply("A".into()), "{calls:?}");

    let stepped_at = Instant::now();
    clock.step(-3600);
    let calls = wait_calls(&rec, 3).await;
    let took = stepped_at.elapsed();
    eprintln!("clock step -1 h during A: released {took:?} after the step");
    assert_eq!(calls[2].1, Call::Release, "{calls:?}");
    assert!(calls[2].0 < a_start, "{calls:?}");
    assert!(took.as_secs() < 5, "not at once: {took:?}");
    // The audit row of that release says why it happened mid-event.
    let detail = || -> Option<String> {
        let c = rusqlite::Connection::open(&r.db).ok()?;
        c.query_row(
            "SELECT detail FROM audit WHERE action = 'release' ORDER BY id DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .ok()?
    };
    let mut said = None;
    for _ in 0..50 {
        said = detail();
        if said.is_some() {
            break;
        }
        nap(100).await;
    }
    assert!(
        said.as_deref()
            .is_some_and(|d| d.starts_with("the wall clock stepped back about 3")),
        "{said:?}"
    );
    // The clock is corrected forward again: A applies again, once.
    clock.step(3600);
    let calls = wait_calls(&rec, 4).await;
    assert_eq!(calls[3].1, Call::Apply("A".into()), "{calls:?}");
    nap(1500).await;
    assert_eq!(rec.calls().len(), 4, "{:?}", rec.calls());
    r.finish().await;
}

/// SPEC §2.10 when the plan cannot be read: a store that fails after a timeslot was applied
/// (here its table is renamed away underneath the daemon, as a broken schema or a dead
/// reader would fail) keeps the command running to its end, and releases it there, not
/// holds it until the store recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_released_at_its_end_when_the_plan_cannot_be_read() {
    let r = Running::one_timeslot(2, 4).await;
    let rec = r.rec.clone();
    let a_end = r.origin + Duration::seconds(6);
    let calls = wait_calls(&rec, 2).await;
    assert_eq!(calls[1].1, Call::Apply("A".into()), "{calls:?}");

    let other = rusqlite::Connection::open(&r.db).unwrap();
    other
        .execute_batch("ALTER TABLE timeslots RENAME TO timeslots_gone")
        .unwrap();
    // Without a plan the dispatcher never released it (before SPEC §2.10 held here too),
    // so the release below can only come from the no-plan path.
    assert!(
        other
            .query_row("SELECT COUNT(*) FROM timeslots", [], |r| r.get::<_, i64>(0))
            .is_err()
    );
    let calls = wait_calls(&rec, 3).await;
    assert_eq!(calls[2].1, Call::Release, "{calls:?}");
    assert!(calls[2].0 >= a_end, "released before A's end: {calls:?}");
    assert!(
        calls[2].0 < a_end + Duration::seconds(3),
        "held past A's end: {calls:?}"
    );
    r.finish().await;
}
