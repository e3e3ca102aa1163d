//! Periodic housekeeping, none of it timing-critical: retention pruning of raw
//! notifications (SPEC §2.5), a daily database integrity check, and the clock-sync check
//! (SPEC §2.11). Pruning and the integrity check run on `[schedule]` cron expressions
//! (see `schedule.rs`); dispatch boundaries are timed by the dispatch loop, never here.

use crate::metrics::gauge;
use crate::seam::StatusSource;
use crate::store::{Store, query};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Housekeeping {
    clock_synchronised: Mutex<Option<bool>>,
    integrity: Mutex<Option<String>>,
}

impl StatusSource for Housekeeping {
    fn render_metrics(&self, out: &mut String) {
        let v = match *self.clock_synchronised.lock().expect("hk lock") {
            Some(true) => 1.0,
            Some(false) => 0.0,
            None => -1.0,
        };
        gauge(
            out,
            "leap_edge_clock_synchronised",
            "1 synchronised, 0 not, -1 unknown (SPEC §2.11).",
            v,
        );
    }

    fn health_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if *self.clock_synchronised.lock().expect("hk lock") == Some(false) {
            p.push("system clock is not synchronised (check NTP: timedatectl)".into());
        }
        if let Some(e) = self.integrity.lock().expect("hk lock").clone() {
            p.push(format!("database integrity check failed: {e}"));
        }
        p
    }
}

impl Housekeeping {
    pub(super) async fn run(
        self: std::sync::Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut clock = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = clock.tick() => self.check_clock().await,
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// The last clock-sync answer (SPEC §2.11), for `status`: checking costs a
    /// `timedatectl` process where `adjtimex` is refused, so it is asked once a minute here.
    pub(super) fn clock_synchronised(&self) -> Option<bool> {
        *self.clock_synchronised.lock().expect("hk lock")
    }

    async fn check_clock(&self) {
        let now = tokio::task::spawn_blocking(crate::clock::synchronised)
            .await
            .ok()
            .flatten();
        let before = std::mem::replace(&mut *self.clock_synchronised.lock().expect("hk lock"), now);
        if now == Some(false) && before != Some(false) {
            tracing::warn!(
                "system clock is not synchronised: dispatch timing follows it (SPEC §2.11)"
            );
        } else if now == Some(true) && before == Some(false) {
            tracing::info!("system clock synchronised again");
        }
    }

    /// SPEC §2.5 retention (`[schedule] prune`).
    pub(crate) async fn prune(&self, store: &Store, retention_days: u32) {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
        match store
            .call(move |c| query::prune_notifications(c, cutoff))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                retention_days,
                "notifications, rejected timeslots and superseded revisions past retention removed"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
        }
    }

    /// SQLite `quick_check` (`[schedule] integrity`).
    pub(crate) async fn integrity(&self, store: &Store) {
        let check = store.quick_check().await;
        let problem = match check {
            Ok(s) if s == "ok" => None,
            Ok(s) => Some(s),
            Err(e) => Some(e.to_string()),
        };
        if let Some(p) = &problem {
            tracing::error!(problem = %p, "database integrity check failed");
        }
        *self.integrity.lock().expect("hk lock") = problem;
    }
}
