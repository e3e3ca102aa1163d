//! The few pieces of systemd's service protocol the daemon needs, written by hand so the
//! gateway needs no libsystemd: `sd_notify` datagrams (READY, WATCHDOG, STOPPING, STATUS),
//! the watchdog interval systemd hands us, and whether we run under systemd at all.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`), so the daemon calls them
//! unconditionally.

use std::ffi::{OsStr, OsString};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error(
        "NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name ('@...'); \
         check the unit's environment"
    )]
    BadAddress(OsString),
    #[error("cannot send {state:?} to systemd at NOTIFY_SOCKET {socket:?}: {source}")]
    Send {
        socket: OsString,
        state: String,
        source: std::io::Error,
    },
}

/// READY=1: the listener and the database are up (`Type=notify`).
pub(crate) fn notify_ready() -> Result<bool, NotifyError> {
    notify("READY=1")
}

/// WATCHDOG=1: the dispatch loop is alive. Send it at least every `watchdog_interval() / 2`.
pub(crate) fn notify_watchdog() -> Result<bool, NotifyError> {
    notify("WATCHDOG=1")
}

/// STOPPING=1: shutdown has begun, so systemd does not mistake a slow drain for a hang.
pub(crate) fn notify_stopping() -> Result<bool, NotifyError> {
    notify("STOPPING=1")
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when not started by systemd with a notify socket.
pub(crate) fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notify socket `socket`: an absolute path, or `@name` for an
/// abstract socket (systemd uses those in containers and for user managers).
pub(crate) fn notify_to(socket: &OsStr, state: &str) -> Result<(), NotifyError> {
    let addr = socket_addr(socket)?;
    let send_err = |source| NotifyError::Send {
        socket: socket.to_owned(),
        state: state.to_owned(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send_err)?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(())
}

fn socket_addr(socket: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bytes = socket.as_bytes();
    let bad = || NotifyError::BadAddress(socket.to_owned());
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad()),
        Some(b'/') => SocketAddr::from_pathname(socket).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The watchdog timeout systemd enforces (`WatchdogSec=`), if it is meant for this process.
/// Ping at half of it.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

fn watchdog_from(usec: Option<&OsStr>, pid: Option<&OsStr>, my_pid: u32) -> Option<Duration> {
    // WATCHDOG_PID names the process the watchdog is for; a child that inherited the
    // environment (a helper we spawn) must not take it as its own.
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The dispatch loop's heartbeat: WATCHDOG=1 on every call when systemd watches this
/// process (`WatchdogSec=`), nothing otherwise. A failing ping is logged once, not on every
/// loop turn; systemd's restart then says the rest.
pub(crate) fn watchdog_heartbeat() -> impl Fn() + Send + Sync + 'static {
    let enabled = watchdog_interval().is_some();
    let warned = AtomicBool::new(false);
    move || {
        if !enabled {
            return;
        }
        if let Err(e) = notify_watchdog()
            && !warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "systemd watchdog ping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn receiver() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let (_dir, path, sock) = receiver();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!(
            "leap-edge-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn refuses_relative_and_empty_addresses() {
        for bad in ["notify.sock", ""] {
            assert!(matches!(
                notify_to(OsStr::new(bad), "READY=1"),
                Err(NotifyError::BadAddress(_))
            ));
        }
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = notify_to(path.as_os_str(), "READY=1").unwrap_err();
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }

    #[test]
    fn watchdog_interval_is_for_our_pid_only() {
        let us = |s: &str| Some(OsStr::new(s).to_owned());
        let w = |usec: Option<OsString>, pid: Option<OsString>| {
            watchdog_from(usec.as_deref(), pid.as_deref(), 42)
        };
        assert_eq!(w(us("30000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(w(us("30000000"), us("42")), Some(Duration::from_secs(30)));
        assert_eq!(w(us("30000000"), us("41")), None);
        assert_eq!(w(us("30000000"), us("x")), None);
        assert_eq!(w(us("0"), None), None);
        assert_eq!(w(us("soon"), None), None);
        assert_eq!(w(None, us("42")), None);
    }

    /// The public functions read the environment systemd sets: run a child process (this
    /// test binary, filtered to `child_reports_to_systemd`) with that environment and read
    /// what it sends.
    #[test]
    fn spawned_child_notifies_through_the_environment() {
        let (_dir, path, sock) = receiver();
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "systemd::tests::child_reports_to_systemd",
                "--exact",
                "--ignored",
            ])
            .arg("--test-threads=1")
            .env("LEAP_EDGE_SYSTEMD_CHILD", "1")
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "30000000")
            .env_remove("WATCHDOG_PID")
            .env("INVOCATION_ID", "0123456789abcdef")
            .output()
            .unwrap();
        assert!(status.status.success(), "child failed: {status:?}");
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    #[ignore = "run as a child process by spawned_child_notifies_through_the_environment"]
    fn child_reports_to_systemd() {
        if std::env::var_os("LEAP_EDGE_SYSTEMD_CHILD").is_none() {
            return;
        }
        assert!(notify_ready().unwrap());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(30)));
        watchdog_heartbeat()();
        assert!(notify_stopping().unwrap());
    }

    #[test]
    fn spawned_child_outside_systemd_sends_nothing() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "systemd::tests::child_outside_systemd",
                "--exact",
                "--ignored",
            ])
            .env("LEAP_EDGE_SYSTEMD_CHILD", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .output()
            .unwrap();
        assert!(out.status.success(), "child failed: {out:?}");
    }

    #[test]
    #[ignore = "run as a child process by spawned_child_outside_systemd_sends_nothing"]
    fn child_outside_systemd() {
        if std::env::var_os("LEAP_EDGE_SYSTEMD_CHILD").is_none() {
            return;
        }
        assert!(!notify_ready().unwrap());
        watchdog_heartbeat()();
        assert_eq!(watchdog_interval(), None);
    }
}
