//! WAL checkpoints off the ack path (issue 17). SQLite's automatic checkpoint runs inside
//! the commit that crosses 1,000 WAL pages, so every ~100th notification waited for the
//! database file's writes and fsync: that was the 1-sender p99. Here the owner thread only
//! nudges after each commit; this thread copies the WAL into the database on its own
//! connection (a PASSIVE checkpoint never blocks the writer), and, when the WAL has grown
//! past a bound because writes never paused, a RESTART checkpoint (which waits for the
//! writer's current batch) lets the next transaction start the WAL from its beginning.
//! Durability is unchanged: a commit is durable in the WAL (FULL), before any checkpoint.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// At most one checkpoint per gap: each costs two fsyncs, whatever it copies.
const MIN_GAP: Duration = Duration::from_millis(20);
/// WAL size in frames (pages) above which the WAL is restarted after the PASSIVE checkpoint.
const RESTART_FRAMES: i64 = 4_000;
/// The writer's own automatic checkpoint, as a backstop should this thread fall behind.
pub(super) const WRITER_BACKSTOP_FRAMES: i64 = 20_000;

/// Tells the checkpoint thread that a commit happened; never blocks.
#[derive(Clone)]
pub(crate) struct Nudge(SyncSender<()>);

impl Nudge {
    pub(crate) fn commit_done(&self) {
        let _ = self.0.try_send(());
    }
}

/// Start the thread on its own read-write connection. It ends when every [`Nudge`] is gone.
pub(super) fn spawn(path: &Path) -> Result<(Nudge, std::thread::JoinHandle<()>), StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The checkpoint's own syncs (WAL before copying, database after) follow this setting.
    conn.pragma_update(None, "synchronous", "FULL")?;
    let (tx, rx) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("leap-edge-store-ckpt".into())
        .spawn(move || run(&conn, &rx))
        .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((Nudge(tx), thread))
}

fn run(conn: &Connection, rx: &Receiver<()>) {
    let mut last = Instant::now();
    while rx.recv().is_ok() {
        if let Some(wait) = MIN_GAP.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        while rx.try_recv().is_ok() {}
        last = Instant::now();
        match checkpoint(conn, "PASSIVE") {
            Ok((log, _)) if log > RESTART_FRAMES => {
                if let Err(e) = checkpoint(conn, "RESTART") {
                    tracing::debug!(error = %e, "WAL restart checkpoint failed; retried later");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed; retried later"),
        }
    }
}

/// (frames in the WAL, frames copied into the database).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}
