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
    let db = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("leap-edge-store-ckpt".into())
        .spawn(move || run(&conn, &rx, &db))
        .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((Nudge(tx), thread))
}

fn run(conn: &Connection, rx: &Receiver<()>, db: &Path) {
    let mut last = Instant::now();
    let mut watch = Watch::default();
    while rx.recv().is_ok() {
        if let Some(wait) = MIN_GAP.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        while rx.try_recv().is_ok() {}
        last = Instant::now();
        // (busy, frames in the WAL, frames copied back)
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        if let Err(e) = &r {
            tracing::debug!(error = %e, "WAL checkpoint failed; retried after the next commit");
        }
        let r = r.map_err(|e| e.to_string());
        match watch.assess(r, Instant::now()) {
            Some(Verdict::Stuck(why)) => tracing::warn!(
                database = %db.display(), problem = %why,
                "the database's WAL is not being copied back: the -wal file grows until it is; \
                 a process holding the database (`fuser -v` on it: a sqlite3 shell, a backup) \
                 is the usual cause. Do not delete the -wal file: it holds acknowledged notifications"
            ),
            Some(Verdict::Recovered) => {
                tracing::info!(database = %db.display(), "WAL checkpoints copy back again");
            }
            None => {}
        }
    }
}

/// A WAL this large that is not copied back is worth a word (at 4 KiB pages, 256 MiB).
const LARGE_WAL_FRAMES: i64 = 65_536;
/// Checkpoints failing this long are worth a word; said again at most this often.
const STUCK_AFTER: Duration = Duration::from_secs(60);
const SAY_AGAIN: Duration = Duration::from_secs(600);

/// Whether checkpoints keep failing (or leave a large WAL behind), said once a while.
#[derive(Default)]
struct Watch {
    stuck_since: Option<Instant>,
    said_at: Option<Instant>,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Stuck(String),
    Recovered,
}

impl Watch {
    fn assess(&mut self, r: Result<(i64, i64), String>, now: Instant) -> Option<Verdict> {
        let why = match r {
            Err(e) => format!("checkpoints fail: {e}"),
            Ok((log, copied)) if log > LARGE_WAL_FRAMES && copied < log => format!(
                "{log} pages in the WAL, {copied} copied back: a reader holds an old snapshot"
            ),
            Ok(_) => {
                self.stuck_since = None;
                return self.said_at.take().map(|_| Verdict::Recovered);
            }
        };
        let since = *self.stuck_since.get_or_insert(now);
        let due = now.duration_since(since) >= STUCK_AFTER
            && self
                .said_at
                .is_none_or(|t| now.duration_since(t) >= SAY_AGAIN);
        if !due {
            return None;
        }
        self.said_at = Some(now);
        Some(Verdict::Stuck(format!(
            "{why} (for {} s)",
            now.duration_since(since).as_secs()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failing checkpoints are said after a minute, then at most every ten, and their end
    /// once; a brief failure or a small WAL says nothing.
    #[test]
    fn stuck_checkpoints_are_said_once_a_while() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Watch::default();
        let fail = || Err("disk I/O error".to_string());
        assert_eq!(w.assess(fail(), at(0)), None);
        assert_eq!(w.assess(Ok((10, 10)), at(5)), None, "brief: nothing said");
        assert_eq!(w.assess(fail(), at(10)), None);
        let Some(Verdict::Stuck(why)) = w.assess(fail(), at(71)) else {
            panic!("not said after a minute")
        };
        assert!(
            why.contains("disk I/O error") && why.contains("for 61 s"),
            "{why}"
        );
        assert_eq!(
            w.assess(fail(), at(300)),
            None,
            "not again within ten minutes"
        );
        assert!(matches!(w.assess(fail(), at(672)), Some(Verdict::Stuck(_))));
        assert_eq!(w.assess(Ok((3, 3)), at(680)), Some(Verdict::Recovered));
        assert_eq!(w.assess(Ok((3, 3)), at(690)), None);
        // A large WAL that a reader keeps from being copied back.
        let big = LARGE_WAL_FRAMES + 1;
        assert_eq!(w.assess(Ok((big, 100)), at(700)), None);
        assert!(matches!(
            w.assess(Ok((big, 100)), at(761)),
            Some(Verdict::Stuck(_))
        ));
    }
}
