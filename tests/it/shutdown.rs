//! Issue 16.5: shutdown ends every task of the daemon, in order, promptly — also with an
//! admin connection open that never sends its request — and closes the database cleanly.

use crate::common::{self, Daemon, eventually};
use leap_edge::dispatch::RecordingCommander;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Well under the admin socket's 10 s exchange timeout, which is how long an idle
/// connection kept an untracked task (and with it the database) alive before.
const PROMPT: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_an_idle_admin_connection_ends_every_task_and_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (path, cert) = common::inproc_config(dir.path(), "leap-edge.db", &["m1"], "");
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    let running = common::start_inproc(&path, Arc::new(RecordingCommander::default())).await;
    // Something to checkpoint: a notification in the WAL.
    let client = common::Client::new(running.addr, cert);
    let sample = common::fixture("leap-sample-meter.json");
    assert_eq!(client.post(&sample).await.status, 200);
    let wal = dir.path().join("leap-edge.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    );
    // A technician's client that connected and went quiet.
    let mut idle = tokio::net::UnixStream::connect(dir.path().join("admin.sock"))
        .await
        .unwrap();
    // Housekeeping runs (its start-up prune and integrity check, the clock check).
    assert!(eventually(Duration::from_secs(10), || running.tasks_running() >= 6).await);

    drop(client);
    let started = Instant::now();
    let left = tokio::time::timeout(PROMPT * 2, running.stop_and_count())
        .await
        .expect("stop finishes");
    let took = started.elapsed();
    assert!(took < PROMPT, "stop took {took:?}");
    assert_eq!(left, 0, "tasks outlived their shutdown bound");
    // The idle connection was closed by the daemon, not left to its timeout.
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // The writer thread closed the database: the WAL was checkpointed into the main file.
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL left behind: not a clean close");
    // Every task the daemon spawned has ended (this test's own are not counted).
    assert_tasks_back_to(&runtime, before).await;
}

/// The real process under SIGTERM with an idle admin connection: exit 0, promptly.
#[test]
fn sigterm_with_an_idle_admin_connection_exits_0_promptly() {
    let mut d = Daemon::start();
    let _idle = std::os::unix::net::UnixStream::connect(d.dir.path().join("admin.sock")).unwrap();
    let started = Instant::now();
    assert!(d.terminate(), "exit status after SIGTERM");
    let took = started.elapsed();
    assert!(took < PROMPT, "SIGTERM to exit took {took:?}");
    assert!(d.log().contains("stopped cleanly"), "{}", d.log());
}

/// The relay likewise: stopped while a delivery worker retries a gateway that is down, it
/// ends every task (servers, workers, prune) and closes its outbox cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_stop_ends_its_delivery_workers_and_closes_the_outbox() {
    use crate::relay_support::{self as rs, GATEWAY_KEY, RELAY_KEY};
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"{}\"\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [auth]\nkeys = [\"{RELAY_KEY}\"]\n[storage]\npath = \"relay.db\"\n[relay]\nmetrics_listen = \"127.0.0.1:0\"\n\
         delivery_timeout_secs = 3\n[[gateways]]\nname = \"down\"\nurl = \"http://127.0.0.1:{}/leap/dispatch\"\n\
         key = \"{GATEWAY_KEY}\"\nmeters = [\"A1\"]\n",
        common::PATH,
        rs::dead_port()
    );
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    let config = leap_edge::relay::RelayConfig::load(&path).expect("relay config");
    let running = leap_edge::relay::start(config).await.expect("relay starts");
    let body =
        serde_json::json!({"meter_dispatches": [rs::meter_entry("A1", &["e1"])]}).to_string();
    let client = rs::Client::new(running.addr, cert);
    let posted = client.post(RELAY_KEY, "application/json", &body);
    assert_eq!(posted.await.unwrap().0, 200);
    drop(client);
    let wal = dir.path().join("relay.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    );

    let started = Instant::now();
    tokio::time::timeout(PROMPT * 2, running.stop())
        .await
        .expect("relay stop finishes");
    assert!(
        started.elapsed() < PROMPT,
        "stop took {:?}",
        started.elapsed()
    );
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "outbox WAL left behind: not a clean close");
    assert_tasks_back_to(&runtime, before).await;
}

/// The runtime's live tasks are back to `before` within 2 s: nothing stopped was left
/// running detached.
async fn assert_tasks_back_to(runtime: &tokio::runtime::RuntimeMetrics, before: usize) {
    let ended = eventually(Duration::from_secs(2), || {
        runtime.num_alive_tasks() <= before
    })
    .await;
    assert!(
        ended,
        "{} tasks still alive",
        runtime.num_alive_tasks().saturating_sub(before)
    );
}
