//! Storage: one SQLite file (WAL, `synchronous=FULL`) owned by one thread. Every write goes
//! through that thread's queue, so concurrent deliveries of the same notification are
//! applied one after another and still give one timeslot (SPEC §2.3). Readers outside the
//! daemon (the CLI) open the file read-only; WAL lets them run beside the writer.

pub(crate) mod audit;
mod checkpoint;
pub(crate) mod files;
mod groups;
mod ingest;
pub(crate) mod migrations;
pub(crate) mod overrides;
pub mod query;
mod writer;

pub use ingest::{IngestOutcome, IngestRecord, Source};
pub(crate) use writer::BatchStats;

use crate::seam::ChangeSignal;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path}: cannot open: {source} (check the folder exists and is writable by the leap-edge user)"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "no database at {0} yet: `leap-edge run` creates it on first start (is storage.path right?)"
    )]
    Missing(PathBuf),
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); install the newer leap-edge again"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("database: stored data is not valid: {0}")]
    Corrupt(String),
    #[error("database folder is not writable: {0}")]
    NotWritable(String),
    /// Another process held the write lock through the whole busy timeout at start.
    #[error(
        "database {0} is locked by another process (a `sqlite3` shell, a backup or copy tool): \
         close it (`fuser -v {0}` names it), then start again"
    )]
    Locked(PathBuf),
    /// Issue 10.4: SQLite would silently open a file it cannot write read-only; the daemon
    /// then starts, and every webhook gets 503. Refuse at start instead.
    #[error(
        "database {path} can only be opened read-only (owner uid {uid}, gid {gid}, mode {mode:04o}); \
         the service must be able to write it: `chown leap-edge:leap-edge {path}` and \
         `chmod 0640 {path}` (and the same for its -wal and -shm files), or fix storage.path"
    )]
    ReadOnly {
        path: PathBuf,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    #[error("database file has become read-only: {0}")]
    BecameReadOnly(String),
    /// A CLI run between a package upgrade and the daemon's restart: only the daemon
    /// migrates (it owns the writes), so the CLI says what to do instead of failing on a
    /// column the old schema lacks.
    #[error(
        "database {path} has schema version {found} and this leap-edge reads version {needed}; \
         restart the daemon (`systemctl restart leap-edge`), which upgrades it at start, then run this again"
    )]
    Outdated {
        path: PathBuf,
        found: i64,
        needed: i64,
    },
    /// The file the daemon opened was deleted or replaced under it while it ran: the
    /// message says which, and how to recover without losing what the open file holds.
    #[error("{0}")]
    Replaced(String),
    /// Start: the database is gone but its write-ahead log is still there.
    #[error(
        "database {path} is missing but its write-ahead log {wal} is still there (the \
         database was deleted or moved after the last run): starting would create an empty \
         database and SQLite would discard that log with the notifications in it. Put the \
         database back, or if it is truly lost, move {wal} aside to keep it, then start again"
    )]
    OrphanedWal { path: PathBuf, wal: PathBuf },
    #[error("database writer has stopped")]
    Stopped,
    #[error("database: the batch holding this notification was not committed: {0}")]
    BatchFailed(String),
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// A cheap handle to the owner thread. Clone it freely.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<writer::Work>,
    /// Reads for planning and status run on their own connection and thread, so a large
    /// replan never delays the commit (and the ack) of the next notification.
    reads: mpsc::Sender<ReadJob>,
    path: PathBuf,
    /// The file opened at start; checked before each ingest batch and by `/healthz`.
    opened: files::Identity,
    stats: std::sync::Arc<BatchStats>,
}

/// Joins the owner thread when the last handle is dropped and the queue drained.
pub struct StoreThread(std::thread::JoinHandle<()>, std::thread::JoinHandle<()>);

impl StoreThread {
    pub fn join(self) {
        let _ = self.1.join();
        let _ = self.0.join();
    }

    /// [`StoreThread::join`] for async code: a helper thread joins and signals, so no
    /// runtime thread blocks (and a caller may bound the wait with a timeout).
    pub async fn closed(self) {
        let (tx, rx) = oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("leap-edge-store-join".into())
            .spawn(move || {
                self.join();
                let _ = tx.send(());
            });
        if joiner.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Store {
    /// Open (creating it and its folder if needed), migrate, and start the owner thread.
    pub fn open(path: &Path) -> Result<(Store, StoreThread), StoreError> {
        Store::open_with_schema(path, migrations::apply)
    }

    /// [`Store::open`] for a database with another schema (the relay's outbox): the same
    /// owner thread, pragmas (WAL, FULL) and reader, with `migrate` instead of the gateway's.
    pub(crate) fn open_with_schema(
        path: &Path,
        migrate: fn(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<(Store, StoreThread), StoreError> {
        let (mut conn, opened) = open_writer(path, migrate)?;
        let (nudge, checkpointer) = checkpoint::spawn(path)?;
        let (tx, mut rx) = mpsc::channel::<writer::Work>(1024);
        let stats = std::sync::Arc::new(BatchStats::default());
        let writer_stats = stats.clone();
        let writer_file = (path.to_path_buf(), opened);
        let (reader_closed, reader_gone) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("leap-edge-store".into())
            .spawn(move || {
                writer::run(&mut conn, &mut rx, &writer_stats, &nudge, &writer_file);
                drop(nudge);
                let _ = checkpointer.join();
                // Only the last connection to close checkpoints the WAL and removes it, and
                // the read-only one cannot: close after the reader (bounded) (issue 16.5).
                let _ = reader_gone.recv_timeout(std::time::Duration::from_secs(10));
                drop(conn);
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the database thread: {e}")))?;
        let (rtx, read_thread) = spawn_reader(path, reader_closed)?;
        Ok((
            Store {
                jobs: tx,
                reads: rtx,
                path: path.to_path_buf(),
                opened,
                stats,
            },
            StoreThread(thread, read_thread),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the database path no longer names the file the daemon opened, if it does not.
    pub(crate) fn file_problem(&self) -> Option<String> {
        self.opened.problem(&self.path)
    }

    /// Group-commit counters (issue 17): commits and the notifications they held.
    pub fn batch_stats(&self) -> &BatchStats {
        &self.stats
    }

    /// SQLite `quick_check` on a connection of its own, on a blocking thread: it reads the
    /// whole database (seconds to minutes on a large file and slow flash), and on the
    /// writer it would hold every ingest and every dispatch audit row behind it. In WAL
    /// mode a reader does not block the writer. Returns SQLite's answer ("ok" when sound).
    pub async fn quick_check(&self) -> Result<String, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_read_only(&path)?;
            bound_caches(&conn)?;
            Ok(conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))?)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("integrity check thread: {e}")))?
    }

    /// Bumped after every commit that changed a timeslot through [`Store::ingest`],
    /// whether or not the caller is still waiting for the answer.
    pub(crate) fn changes(&self) -> ChangeSignal {
        self.stats.changes.clone()
    }

    /// Writes waiting for the owner thread (ingests and jobs).
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Run `f` on the owner thread and wait for its answer.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let (opened, path) = (self.opened, self.path.clone());
        // Nothing is written to a file that the path no longer names (the relay's outbox
        // commits, overrides, audit rows): it would be answered as saved and lost.
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(opened.check(&path).and_then(|()| f(conn)));
        });
        self.jobs
            .send(writer::Work::Job(job))
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Run a read-only `f` on the reader connection (a consistent WAL snapshot).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.reads
            .send(job)
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Whether a write would succeed now: the write lock can be taken and the database's
    /// folder accepts a probe file of a typical transaction's size. `BEGIN IMMEDIATE;
    /// COMMIT` alone writes nothing, so it passes on a full or read-only disk.
    pub(crate) async fn check_writable(&self) -> Result<(), StoreError> {
        let probe = probe_path(&self.path);
        let db = self.path.clone();
        let opened = self.opened;
        self.call(move |c| {
            opened.check(&db)?;
            c.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
            // Issue 10.4: the file itself may have become read-only (chattr, a read-only
            // remount, a restore with the wrong owner) while its folder still takes files.
            files::check_still_writable(&db)?;
            let written = write_probe(&probe);
            let _ = std::fs::remove_file(&probe);
            written.map_err(|e| StoreError::NotWritable(format!("{}: {e}", probe.display())))
        })
        .await
    }

    /// Commit a notification and its timeslots (SPEC §2.1). Answers only after the FULL
    /// commit of the batch that holds it (group commit, `writer.rs`).
    pub async fn ingest(&self, record: IngestRecord) -> Result<IngestOutcome, StoreError> {
        // The stored forms are made here, on the caller's thread, not on the writer's.
        let prepared = Box::new(ingest::Prepared::new(record)?);
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(writer::Work::Ingest(prepared, tx))
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The writer's connection: folder and file made (modes), pragmas set, migrated; and
/// which file it is, to notice it being deleted or replaced later.
fn open_writer(
    path: &Path,
    migrate: fn(&mut Connection) -> Result<(), StoreError>,
) -> Result<(Connection, files::Identity), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::create_state_dir(dir).map_err(|e| {
            open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                "{}: {e}",
                dir.display()
            ))))
        })?;
    }
    if let Some(wal) = files::orphaned_wal(path) {
        return Err(StoreError::OrphanedWal {
            path: path.to_path_buf(),
            wal,
        });
    }
    files::prepare_db_file(path).map_err(|e| {
        open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
            "{}: {e}",
            path.display()
        ))))
    })?;
    let mut conn = Connection::open(path).map_err(open_err)?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
        return Err(files::read_only_error(path));
    }
    let locked = |e| busy_is_locked(e, path);
    configure(&conn).map_err(open_err).map_err(locked)?;
    files::tighten_journal_files(path);
    migrate(&mut conn).map_err(locked)?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        checkpoint::WRITER_CHECKPOINT_FRAMES,
    )
    .map_err(open_err)?;
    let opened = files::Identity::of(path).map_err(|e| {
        open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
            "{}: {e}",
            path.display()
        ))))
    })?;
    Ok((conn, opened))
}

/// The reader connection and its thread (planning and status reads, beside the writer).
fn spawn_reader(
    path: &Path,
    closed: std::sync::mpsc::Sender<()>,
) -> Result<(mpsc::Sender<ReadJob>, std::thread::JoinHandle<()>), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let reader =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
    reader.busy_timeout(std::time::Duration::from_secs(5))?;
    bound_caches(&reader).map_err(open_err)?;
    let (rtx, mut rrx) = mpsc::channel::<ReadJob>(256);
    let read_thread = std::thread::Builder::new()
        .name("leap-edge-store-read".into())
        .spawn(move || {
            while let Some(job) = rrx.blocking_recv() {
                job(&reader);
            }
            drop(reader);
            drop(closed);
        })
        .map_err(|e| StoreError::Corrupt(format!("cannot start the database thread: {e}")))?;
    Ok((rtx, read_thread))
}

/// SQLITE_BUSY after the whole busy timeout at start: another process holds the file.
fn busy_is_locked(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Sqlite(s) | StoreError::Open { source: s, .. }
            if s.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
        {
            StoreError::Locked(path.to_path_buf())
        }
        other => other,
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // SPEC §2.1: the ack is sent after commit, so commits must survive power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    bound_caches(conn)
}

/// Page cache per connection, KiB (issue 18). The writer appends and the reader walks the
/// plan window through an index, so 1 MiB each holds the hot pages; SQLite's default is 2 MiB
/// each, filled over days of ingest and never returned.
const CACHE_KIB: i64 = 1024;
/// Prepared statements kept per connection: the ingest path uses ten, planning two.
const STATEMENT_CACHE: usize = 24;

fn bound_caches(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Room for one ordinary ingest transaction (a few WAL frames). Not synced and removed at
/// once: the filesystem reserves space at write(), so a full disk shows without wearing
/// the gateway's flash on every health check.
const PROBE_BYTES: usize = 16 * 1024;

fn probe_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push("-healthz");
    db.with_file_name(name)
}

fn write_probe(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&[0u8; PROBE_BYTES])?;
    f.flush()
}

/// A read-only connection for the CLI, usable while the daemon writes.
/// Whether the gateway database at `path` was written by a newer build (a package
/// downgrade): this build would refuse to start on it (exit 78). None when it is not, or
/// cannot be told (no file yet, not readable by this user).
pub(crate) fn newer_than_this_build(path: &Path) -> Option<StoreError> {
    newer_than(path, migrations::latest())
}

/// [`newer_than_this_build`] for a database of another schema (the relay's outbox).
pub(crate) fn newer_than(path: &Path, supported: i64) -> Option<StoreError> {
    let conn = open_read_only(path).ok()?;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ok()?;
    (found > supported).then_some(StoreError::TooNew { found, supported })
}

pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Fail with a clear message if this is not a leap-edge database.
    let version: i64 = match conn.query_row("PRAGMA user_version", [], |r| r.get(0)) {
        Err(e) if cannot_create_wal_index(&e) && !sibling(path, "-wal").exists() => {
            // After a clean stop the WAL and its index are gone, and a technician in the
            // service's group cannot create the index in its folder. With no WAL nobody is
            // writing (the daemon keeps one open while it runs): read the file as it is.
            conn = open_immutable(path).map_err(open_err)?;
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))?
        }
        r => r?,
    };
    if version == 0 {
        return Err(StoreError::Corrupt(format!(
            "{} is not a leap-edge database (no schema); is storage.path right?",
            path.display()
        )));
    }
    Ok(conn)
}

fn cannot_create_wal_index(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ReadOnly || f.code == rusqlite::ErrorCode::CannotOpen)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// SQLite's `immutable=1`: no locks, no WAL index, the file taken as unchanging.
fn open_immutable(path: &Path) -> rusqlite::Result<Connection> {
    let text = path
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(path.to_path_buf()))?;
    // In a URI these three would end or escape the path.
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
}

/// [`open_read_only`] for the gateway's database, refused unless its schema is the one
/// this build reads.
pub(crate) fn open_gateway_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_read_only(path)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let needed = migrations::latest();
    if found > needed {
        return Err(StoreError::TooNew {
            found,
            supported: needed,
        });
    }
    if found < needed {
        return Err(StoreError::Outdated {
            path: path.to_path_buf(),
            found,
            needed,
        });
    }
    Ok(conn)
}

/// Times are stored as RFC 3339 UTC with milliseconds, which sort as text.
pub(crate) use crate::textfmt::ts;

pub(crate) fn parse_ts(s: &str) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {s:?}: {e}")))
}
