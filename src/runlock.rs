//! One process per database: `leap-edge run` (and `leap-edge relay run`, on its outbox) takes
//! an exclusive lock on `<database>.lock` (in the database's directory) before it binds
//! anything, and writes who it is into the file. A second one on the same database refuses
//! with the first one's pid; after a stop or a crash the file stays, and `status` (`relay
//! status`) reads it to say how it was last run.

use crate::admin::state::LastRun;
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Which long-lived role holds the lock: named in the refusal, with its systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Relay,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Gateway => "leap-edge",
            Role::Relay => "leap-edge relay",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Role::Gateway => "leap-edge",
            Role::Relay => "leap-edge-relay",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{} is already running (pid {pid}) on the database {db}; stop it first (`systemctl stop {}`, or kill {pid})",
        role.name(), role.unit()
    )]
    Held {
        role: Role,
        pid: String,
        db: PathBuf,
    },
    #[error("cannot lock {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The folder or the lock file cannot be written: storage.path or its owner or mode is
    /// wrong, which a restart will not fix (exit 78, as for a read-only database).
    #[error(
        "cannot lock {path}: {reason}; the service must be able to write there (check storage.path, and the folder's owner, mode and mount){owner}"
    )]
    NotWritable {
        path: PathBuf,
        reason: String,
        /// Who owns what is in the way, and the fix when it is not this process's user.
        owner: String,
    },
}

impl LockError {
    /// What a restart cannot fix (exit 78, which the units do not restart): the lock's
    /// folder, or another daemon on the same database — restarting every 5 s would run the
    /// unit's `ExecStopPost=leap-edge release` under the running one each time.
    pub(crate) fn is_config(&self) -> bool {
        matches!(self, LockError::NotWritable { .. } | LockError::Held { .. })
    }
}

/// Held for the daemon's life; the OS releases it when the process ends, however it ends.
pub(crate) struct DaemonLock {
    _file: std::fs::File,
}

pub(crate) fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

/// "; it is owned by uid 0 … chown …" when the file (or its folder) belongs to another user
/// than this process: typically `sudo leap-edge run` by hand, then the service.
fn ownership_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = this_uid();
    let Some((what, m)) = [path, path.parent().unwrap_or(path)]
        .into_iter()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))
    else {
        return String::new();
    };
    if m.uid() == me {
        return String::new();
    }
    let dir = path.parent().unwrap_or(path);
    format!(
        "; {} is owned by uid {} (mode {:04o}) and this process runs as uid {me}: if leap-edge was run by hand as another user, give the folder back with `chown -R leap-edge:leap-edge {}`",
        what.display(),
        m.uid(),
        m.mode() & 0o7777,
        dir.display()
    )
}

/// This process's effective uid: the owner of its /proc entry.
fn this_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

pub(crate) fn acquire(
    role: Role,
    db: &Path,
    config: Option<&Path>,
) -> Result<DaemonLock, LockError> {
    let path = path_for(db);
    let io = |e: std::io::Error| {
        let (path, reason) = (path.clone(), e.to_string());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                let owner = ownership_hint(&path);
                LockError::NotWritable {
                    path,
                    reason,
                    owner,
                }
            }
            _ => LockError::Io { path, reason },
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The lock comes before the store: create the state folder with the store's mode
        // (issue 10.10), not the umask's.
        crate::store::files::create_state_dir(dir).map_err(io)?;
    }
    // Readable by the group, so `status` (a technician in the leap-edge group) can say how
    // the daemon was last run.
    let mut file = std::fs::OpenOptions::new()
        .mode(0o640)
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = read(&path).map_or("unknown".into(), |r| r.pid.to_string());
            return Err(LockError::Held {
                role,
                pid,
                db: db.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let me = LastRun {
        pid: std::process::id(),
        started_at: chrono::Utc::now(),
        systemd_unit: systemd_unit(),
        config: config.map(|c| {
            std::fs::canonicalize(c)
                .unwrap_or_else(|_| c.to_path_buf())
                .display()
                .to_string()
        }),
    };
    let text = serde_json::to_string(&me).map_err(|e| io(std::io::Error::other(e)))?;
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(DaemonLock { _file: file })
}

/// What the last (or current) daemon on this database wrote; None if it never ran.
pub(crate) fn read(path: &Path) -> Option<LastRun> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Whether a daemon holds the lock now (the file exists and cannot be locked).
pub(crate) fn held(db: &Path) -> bool {
    std::fs::File::open(path_for(db))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// systemd sets INVOCATION_ID for every unit it starts; the unit's name comes from the
/// process's cgroup (`…/leap-edge.service`).
fn systemd_unit() -> Option<String> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let unit = cgroup
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|s| s.ends_with(".service"))
        .map_or_else(|| "a systemd unit".to_string(), str::to_string);
    Some(unit)
}
