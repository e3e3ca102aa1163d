//! The database's files on disk (issue 10.10): the state folder 0750 and the database 0640
//! whatever the process umask (a daemon started by hand must not leave a world-readable
//! database); SQLite gives its -wal and -shm files the database file's mode. Also the
//! read-only checks of issue 10.4.

use super::StoreError;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub(crate) const DIR_MODE: u32 = 0o750;
pub(crate) const DB_MODE: u32 = 0o640;

/// Create the folder (and missing parents) with mode 0750; folders that already exist are
/// left as they are (it may be a shared one the operator chose).
pub(crate) fn create_state_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && !d.exists() {
        missing.push(d.to_path_buf());
        d = d.parent().unwrap_or(Path::new(""));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    // The mode given at creation passes through the umask; set it exactly.
    for m in missing {
        std::fs::set_permissions(&m, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Create the database file 0640 before SQLite does, or take "other" access away from an
/// existing one.
pub(crate) fn prepare_db_file(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                // Fails harmlessly when the file is not ours; then it is not ours to fix.
                let _ = std::fs::set_permissions(path, Permissions::from_mode(mode & 0o770));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new().write(true).create_new(true).open(path)?;
            std::fs::set_permissions(path, Permissions::from_mode(DB_MODE))
        }
        Err(e) => Err(e),
    }
}

/// -wal and -shm left by an earlier run under another umask get the database's mode too.
pub(crate) fn tighten_journal_files(db: &Path) {
    let Ok(mode) = std::fs::metadata(db).map(|m| m.permissions().mode() & 0o777) else {
        return;
    };
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        let p = Path::new(&name);
        if let Ok(m) = std::fs::metadata(p)
            && m.permissions().mode() & 0o777 != mode
        {
            let _ = std::fs::set_permissions(p, Permissions::from_mode(mode));
        }
    }
}

pub(crate) fn read_only_error(path: &Path) -> StoreError {
    let (uid, gid, mode) = std::fs::metadata(path)
        .map(|m| (m.uid(), m.gid(), m.permissions().mode() & 0o7777))
        .unwrap_or((u32::MAX, u32::MAX, 0));
    StoreError::ReadOnly {
        path: path.to_path_buf(),
        uid,
        gid,
        mode,
    }
}

/// Opening the file for writing changes nothing, and fails as soon as it is immutable,
/// on a read-only mount, or no longer ours to write.
pub(crate) fn check_still_writable(db: &Path) -> Result<(), StoreError> {
    match OpenOptions::new().write(true).open(db) {
        Ok(_) => Ok(()),
        Err(e) => Err(StoreError::BecameReadOnly(format!("{}: {e}", db.display()))),
    }
}

/// Which file the daemon opened: the path may later name another (a backup restored with
/// `mv`) or nothing (`rm`), while SQLite goes on writing to the file it holds open, which
/// no later run or reader sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    pub(crate) fn of(path: &Path) -> io::Result<Identity> {
        let m = std::fs::metadata(path)?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// `Err` when the path no longer names the opened file: whatever were written now
    /// would be acknowledged and lost (SPEC §2.1).
    pub(crate) fn check(&self, path: &Path) -> Result<(), StoreError> {
        let deleted = match Identity::of(path) {
            Ok(now) if now == *self => return Ok(()),
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            // Not knowable now (permissions on a parent): the write itself will tell.
            Err(_) => return Ok(()),
        };
        Err(StoreError::Replaced(replaced_text(path, deleted)))
    }
}

/// What happened and how to get out of it without losing what only the open file holds:
/// a clean stop copies the WAL into that unnamed file and deletes the WAL by name.
fn replaced_text(path: &Path, deleted: bool) -> String {
    let p = path.display();
    let pid = std::process::id();
    let head = format!(
        "database {p} was {} while the daemon ran: notifications are refused (503, Leap \
         retries for 50 minutes), because what the daemon writes goes to the file it opened, \
         which no one will read again.",
        if deleted {
            "deleted"
        } else {
            "replaced by another file"
        }
    );
    let fix = if deleted {
        format!(
            "If it was renamed, rename it back: the daemon resumes at once. If it was \
             deleted, copy it out of the daemon before stopping it: `ls -l /proc/{pid}/fd | \
             grep deleted` names it, `cp /proc/{pid}/fd/N {p}.rescued` and `cp {p}-wal \
             {p}.rescued-wal`; then stop the daemon, move the copies to {p} and {p}-wal and \
             start it."
        )
    } else {
        format!(
            "Rename the file the daemon opened back to {p} and it resumes at once. To \
             restore a backup, stop the daemon first (a clean stop, not a kill), then put \
             the backup in place and start it."
        )
    };
    format!("{head} {fix}")
}

impl Identity {
    /// The same check as a status line: None when the path still names the opened file.
    pub(crate) fn problem(&self, path: &Path) -> Option<String> {
        self.check(path).err().map(|e| e.to_string())
    }
}

/// A database missing while its write-ahead log is still there: the database was
/// deleted or moved after an earlier run. Creating an empty one would make SQLite throw
/// that log (acknowledged notifications) away.
pub(crate) fn orphaned_wal(db: &Path) -> Option<std::path::PathBuf> {
    let mut name = db.as_os_str().to_os_string();
    name.push("-wal");
    let wal = std::path::PathBuf::from(name);
    let has_frames = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    (has_frames && !db.exists()).then_some(wal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database gone while its WAL holds frames is not silently recreated empty (SQLite
    /// would then drop the log and the notifications in it).
    #[test]
    fn a_missing_database_with_its_wal_left_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("leap-edge.db");
        std::fs::write(dir.path().join("leap-edge.db-wal"), b"frames").unwrap();
        let e = crate::store::Store::open(&db).err().expect("refused");
        let text = e.to_string();
        assert!(matches!(e, StoreError::OrphanedWal { .. }), "{text}");
        assert!(text.contains("leap-edge.db-wal is still there"), "{text}");
        assert!(!db.exists(), "no empty database was created");
    }
}
