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
    let ended = eventually(Duration::from_secs(2), || {
        runtime.num_alive_tasks() <= before
    })
    .await;
    assert!(
        ended,
        "{} tasks still alive",
        runtime.num_alive_tasks() - before
    );
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
