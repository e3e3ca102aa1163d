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
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(origin: DateTime<Utc>) -> TokioClock {
        TokioClock {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.origin + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

/// SPEC §2.11: whether the kernel considers the clock synchronised. Reads what systemd's
/// timesyncd or chrony leave behind; `None` when it cannot be told.
pub fn synchronised() -> Option<bool> {
    // timesyncd touches this file on every successful sync.
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some(true);
    }
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
