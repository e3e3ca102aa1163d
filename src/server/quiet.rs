//! Log rate limiting for requests without a valid key (issue 10.8): anyone who can reach
//! the listener can send them, so each one must not cost a journal line. The first in each
//! interval is logged, the rest are counted, and one summary line per interval says how
//! many were not logged. Every one is still counted in `/metrics`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct QuietLog {
    /// Requests not logged in the current interval.
    pending: Mutex<u64>,
    /// Lines suppressed since start (a metric).
    pub(crate) suppressed: AtomicU64,
}

impl QuietLog {
    /// Log this rejection if it is the first of the interval; otherwise count it.
    pub(crate) fn rejected(&self, peer: SocketAddr, path: &str) {
        let mut pending = self.pending.lock().expect("quiet log lock");
        if *pending == 0 {
            tracing::warn!(%peer, path, "webhook rejected: missing or wrong credentials (further ones are counted, summarised every 60 s)");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        *pending += 1;
    }

    /// Called once per interval: one line for everything not logged since the last call.
    pub(crate) fn summarise(&self) {
        let mut pending = self.pending.lock().expect("quiet log lock");
        if *pending > 1 {
            tracing::warn!(
                rejected = *pending,
                not_logged = *pending - 1,
                interval_secs = INTERVAL.as_secs(),
                "requests without a valid key in the last interval"
            );
        }
        *pending = 0;
    }
}
