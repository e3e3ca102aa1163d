//! Time. Dispatch timing uses the system clock in UTC (SPEC §2.11); tests substitute a clock
//! driven by tokio's (pausable) time so boundaries can be crossed without sleeping.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The kernel's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time = a fixed origin + tokio's monotonic time since creation. Under
/// `tokio::time::pause()` it advances only when the runtime auto-advances, which makes
/// timer tests exact and instant.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    pub(crate) fn starting_at(origin: DateTime<Utc>) -> TokioClock {
        TokioClock {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.origin + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

/// SPEC §2.11: whether the kernel considers the clock synchronised; `None` when it cannot
/// be told. Issue 9: the kernel's own state first (`adjtimex`, `STA_UNSYNC`), which turns
/// unsynchronised the moment NTP discipline is lost — unlike timesyncd's
/// `/run/systemd/timesync/synchronized`, a file that outlives the sync. Where a seccomp
/// filter refuses `adjtimex` (the shipped unit's `ProtectClock=yes`), timedated's view.
pub(crate) fn synchronised() -> Option<bool> {
    match kernel_synchronised() {
        Some(true) => Some(true),
        // The kernel's flag says "nobody disciplines this clock". That is a fault where a
        // time service is meant to run (every gateway); on a machine without one (a
        // container, a CI runner) it stays "unknown", as timedated would say.
        Some(false) if time_service_present() => Some(false),
        _ => timedated_synchronised(),
    }
}

/// systemd-timesyncd, chrony or ntpd is installed and running.
fn time_service_present() -> bool {
    [
        "/run/systemd/timesync",
        "/run/chrony",
        "/run/ntpd.pid",
        "/var/run/ntpd.pid",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}

/// `adjtimex(2)` with `modes = 0` only reads the kernel's NTP state.
#[allow(unsafe_code)]
fn kernel_synchronised() -> Option<bool> {
    // SAFETY: `timex` is plain data, valid when zeroed; with `modes = 0` the call only
    // writes the kernel's state into it and changes nothing.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    (state >= 0).then_some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

fn timedated_synchronised() -> Option<bool> {
    let out = std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        // systemd tools report their exit to $NOTIFY_SOCKET ("ERRNO=..."); under our unit
        // systemd would log each as a rejected message from a foreign PID.
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// The kernel answers a read-only `adjtimex` outside a seccomp sandbox, and the answer
    /// agrees with the raw status bits (checked independently through the same call).
    #[test]
    fn the_kernel_state_is_read_not_a_file() {
        let k = super::kernel_synchronised();
        assert!(k.is_some(), "adjtimex refused outside a sandbox");
        if k == Some(true) || super::time_service_present() {
            assert_eq!(super::synchronised(), k);
        }
    }
}
