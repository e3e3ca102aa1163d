//! Log setup: structured `tracing` events to stderr (journald picks them up under systemd).
//! `LEAP_EDGE_LOG` (or `RUST_LOG`) overrides the default `info` filter.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("LEAP_EDGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
