//! Issue 10, points 4 and 10: the database and TLS files on disk. The daemon runs as a real
//! process under a permissive umask; read-only files are made with `chattr +i`, which binds
//! root too (file modes do not), so those tests need root and are `#[ignore]`d: `.ci/run`
//! runs them with `--ignored`.

use crate::common;

use common::{Daemon, Immutable, local_get};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A config for a daemon whose database lives in a folder that does not exist yet.
fn config(dir: &Path, tls_key_mode: u32) -> std::path::PathBuf {
    common::write_cert(dir);
    std::fs::set_permissions(
        dir.join("key.pem"),
        std::fs::Permissions::from_mode(tls_key_mode),
    )
    .unwrap();
    let config = common::TestConfig {
        db: "state/leap-edge.db".into(),
        ..Default::default()
    };
    config.write(dir)
}

/// `leap-edge ARGS` under umask 000 (a hand-run daemon in a careless shell).
fn under_umask_000(config: &Path, args: &str, log: &Path) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec \"$0\" --config \"$1\" {args} 2>\"$2\""
        ))
        .arg(common::bin())
        .arg(config)
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(log: &Path, what: &str) -> String {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let seen = common::eventually_blocking(Duration::from_secs(30), || text().contains(what));
    assert!(seen, "no {what:?} in:\n{}", text());
    text()
}

/// 10.10: folder 0750, database, WAL and shared-memory files 0640, whatever the umask.
#[test]
fn database_files_get_explicit_modes_under_any_umask() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    let log = dir.path().join("log");
    let mut child = under_umask_000(&cfg, "run", &log);
    wait_for(&log, "listening for Leap notifications");
    let state = dir.path().join("state");
    let modes: Vec<(String, u32)> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let p = state.join(format!("leap-edge.db{s}"));
            (p.display().to_string(), mode(&p))
        })
        .collect();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    assert_eq!(mode(&state), 0o750, "state folder");
    for (p, m) in modes {
        assert_eq!(m, 0o640, "{p} is {m:o}");
    }
}

/// 10.10: a TLS key readable by others, or encrypted, is refused by `config check` (and so
/// at start) with what to do.
#[test]
fn readable_or_encrypted_tls_keys_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o644);
    let check = || {
        let out = Command::new(common::bin())
            .args(["--config", cfg.to_str().unwrap(), "config", "check"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check();
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    let key = dir.path().join("key.pem");
    assert!(
        err.contains(&format!("chmod 0640 {}", key.display())),
        "{err}"
    );

    let out = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(&key)
        .args(["-aes256", "-passout", "pass:secret", "-out"])
        .arg(dir.path().join("key.enc"))
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        other => panic!("openssl pkey -aes256 failed: {other:?}"),
    }
    std::fs::rename(dir.path().join("key.enc"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = check();
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("encrypted with a passphrase"), "{err}");
    assert!(err.contains("openssl pkey"), "{err}");
}

/// Start the daemon on `cfg`, wait until it listens, stop it with SIGTERM (a clean stop).
fn run_and_stop_cleanly(dir: &Path, cfg: &Path) {
    let log = dir.join("log");
    let mut child = under_umask_000(cfg, "run", &log);
    wait_for(&log, "listening for Leap notifications");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
}

/// A folder's files and the folder itself.
fn folder_and_files(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(folder.to_path_buf());
    files
}

/// 10.4: a database the service cannot write stops the start with exit 78 and the path,
/// owner and mode, instead of a daemon that answers every webhook with 503.
#[test]
#[ignore = "needs root (chattr +i)"]
fn read_only_database_at_start_exits_78_with_path_owner_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    run_and_stop_cleanly(dir.path(), &cfg);
    let db = dir.path().join("state/leap-edge.db");
    let _frozen = Immutable::set(std::slice::from_ref(&db));
    let out = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert!(err.contains("uid 0") && err.contains("mode 0640"), "{err}");
}

/// 10.4, the whole state folder frozen (a read-only mount): the run lock, taken before the
/// database, cannot be written either; that too is exit 78 naming what to check, not a
/// failure systemd would restart in a loop.
#[test]
#[ignore = "needs root (chattr +i)"]
fn state_folder_it_cannot_write_stops_the_start_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    run_and_stop_cleanly(dir.path(), &cfg);
    let state = dir.path().join("state");
    let files = folder_and_files(&state);
    // As after `sudo leap-edge run` by hand, then the service: another user's files.
    for f in &files {
        std::os::unix::fs::chown(f, Some(12345), None).unwrap();
    }
    let _frozen = Immutable::set(&files);
    let out = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("leap-edge.db.lock"), "{err}");
    assert!(err.contains("check storage.path"), "{err}");
    assert!(
        err.contains("owned by uid 12345") && err.contains("chown -R leap-edge:leap-edge"),
        "{err}"
    );
}

/// An admin socket whose folder the service cannot write (under systemd: outside its
/// RuntimeDirectory and ReadWritePaths) stops the start with exit 78 and what to change;
/// it used to be exit 1, which systemd restarts every 5 s forever.
#[test]
#[ignore = "needs root (chattr +i)"]
fn an_admin_socket_folder_it_cannot_write_stops_the_start_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("socket = \"admin.sock\"", "socket = \"run/admin.sock\""),
    )
    .unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let _frozen = Immutable::set(std::slice::from_ref(&run));
    let out = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("run/admin.sock") && err.contains("ReadWritePaths"),
        "{err}"
    );
}

/// After a clean stop the WAL and its index are gone; a technician in the service's group
/// cannot create the index in the 0750 state folder (made immutable here, which binds root
/// too). `history` and `events` still read the database, as the README promises for a
/// stopped daemon, instead of failing with "attempt to write a readonly database".
#[test]
#[ignore = "needs root (chattr +i)"]
fn read_only_commands_work_after_a_clean_stop_in_a_folder_they_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    run_and_stop_cleanly(dir.path(), &cfg);
    let state = dir.path().join("state");
    assert!(
        !state.join("leap-edge.db-wal").exists(),
        "a clean stop removes the WAL"
    );
    let files = folder_and_files(&state);
    let _frozen = Immutable::set(&files);
    for cmd in ["history", "events", "schedule"] {
        let out = Command::new(common::bin())
            .args(["--config", cfg.to_str().unwrap(), cmd])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {err}");
        assert!(!err.contains("readonly"), "{cmd}: {err}");
    }
}

/// `history --follow` started in that state reads the file as immutable; once the daemon
/// runs again, what it writes must still be printed. Before, the follow loop kept that
/// first connection and never showed a new entry.
#[test]
#[ignore = "needs root (chattr +i)"]
fn history_follow_started_while_stopped_shows_what_the_daemon_writes_later() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0o600);
    run_and_stop_cleanly(dir.path(), &cfg);
    let state = dir.path().join("state");
    let frozen = Immutable::set(&folder_and_files(&state));
    let mut follow = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "history", "-f", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    drop(frozen);
    let log = dir.path().join("log2");
    let mut daemon = under_umask_000(&cfg, "run", &log);
    wait_for(&log, "listening for Leap notifications");
    // A reload that applies something writes an audit row.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let rotated = text.replace(common::KEY, "rotated-key-0123456789-abcdefghijklmnop");
    std::fs::write(&cfg, rotated).unwrap();
    let reload = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "reload"])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    assert!(seen.contains("reload"), "history -f printed {seen:?}");
}

/// 10.4: a database file that becomes read-only while the daemon runs (its folder still
/// writable) makes /healthz unhealthy, and healthy again once writable.
#[tokio::test]
#[ignore = "needs root (chattr +i)"]
async fn healthz_reports_a_database_that_became_read_only() {
    let d = Daemon::start();
    assert_eq!(local_get(d.metrics_addr, "/healthz").await.status, 200);
    let frozen = Immutable::set(&[d.db_path()]);
    let h = local_get(d.metrics_addr, "/healthz").await;
    assert_eq!(h.status, 503, "{}", h.text);
    assert!(h.text.contains("has become read-only"), "{}", h.text);
    drop(frozen);
    assert_eq!(local_get(d.metrics_addr, "/healthz").await.status, 200);
}

/// A package downgrade: the database was written by a newer build. `config check` (which
/// the package runs before restarting the daemon) refuses, so the previous daemon keeps the
/// site instead of being restarted into a start that exits 78.
#[test]
fn config_check_refuses_a_database_from_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = common::inproc_config(dir.path(), "leap-edge.db", &[], "");
    let db = dir.path().join("leap-edge.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    let out = Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("schema version 999 is newer than this build"),
        "{err}"
    );
}
