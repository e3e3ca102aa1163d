//! WAL checkpoints off the ack path (issue 17). SQLite's automatic checkpoint runs inside
//! the commit that crosses its threshold and copies every page written since the last
//! one, so every ~100th notification waited for those writes and the database fsync: that
//! was the 1-sender p99. Here the owner thread only nudges after each commit, and this
//! thread copies the WAL into the database on its own connection (a PASSIVE checkpoint
//! never blocks the writer). The writer keeps its own automatic checkpoint at a higher
//! threshold: by then this thread has copied nearly everything, so the writer's checkpoint
//! is short, and it is what lets the next transaction start the WAL from its beginning
//! (SQLite restarts the WAL only when a writer begins with every frame copied, which a
//! background copy racing a busy writer seldom achieves). Durability is unchanged: a
//! commit is durable in the WAL (FULL) before any checkpoint.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// At most one checkpoint per gap: each costs two fsyncs, whatever it copies.
const MIN_GAP: Duration = Duration::from_millis(20);
/// The writer's own automatic checkpoint, in WAL frames (pages; SQLite's default 1,000).
pub(super) const WRITER_CHECKPOINT_FRAMES: i64 = 2_000;

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
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint failed; retried after the next commit");
        }
    }
}
