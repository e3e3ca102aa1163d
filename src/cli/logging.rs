//! Log setup. Under systemd, events go to journald natively, each `tracing` field becoming a
//! journal field (`journalctl -u leap-edge METER_ID=…` works); elsewhere, human-readable
//! lines on stderr. `LEAP_EDGE_LOG` (or `RUST_LOG`) overrides the default `info` filter.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub(crate) fn init() {
    let filter = std::env::var("LEAP_EDGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new(&filter))
            // Fields as named (`METER_ID=`), not with the crate's default `F_` prefix.
            .with(
                journald
                    .with_syslog_identifier("leap-edge".into())
                    .with_field_prefix(None),
            )
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A failed log write (stderr to a full disk) is otherwise reported with eprintln!,
        // which panics on the same failed write and aborts the daemon (found by the soak).
        .log_internal_errors(false)
        .try_init();
}

/// systemd's documented test: JOURNAL_STREAM holds "device:inode" of the stream it gave us;
/// a child that inherited the variable but writes elsewhere (a test, a pipe) must not use it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    v.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}
