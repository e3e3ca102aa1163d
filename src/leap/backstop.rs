//! The polling backstop in the daemon: runs a poll at start, when the tunnel comes back,
//! after storage recovers, on its `[schedule] poll` expression, and on request from the CLI —
//! never two runs within a minute (Leap's rate guidance), triggers arriving meanwhile
//! coalesced into one. Keeps what `status` and `/metrics` show: the last successful poll and
//! the timeslots first seen by polling (pushes that never arrived: the push path is broken).

use super::LeapClient;
use super::poll::{self, PollError, PollReport, Targets, Window};
use crate::config::SharedConfig;
use crate::metrics::gauge;
use crate::seam::{ChangeSignal, StatusSource};
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the tunnel and storage are looked at for a recovery.
const WATCH_PERIOD: Duration = Duration::from_secs(5);

/// How many pushes the webhook has refused for lack of storage so far (503s).
pub(crate) type RefusalCount = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct BackstopStatus {
    pub(crate) enabled: bool,
    pub(crate) last_success: Option<DateTime<Utc>>,
    pub(crate) last_attempt: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_trigger: Option<String>,
    pub(crate) last_report: Option<PollReport>,
    /// Timeslots in the database that were first seen by polling.
    pub(crate) first_seen_by_poll: u64,
    /// Of those, first received in the last 7 days: what makes `status` raise the alarm.
    #[serde(default)]
    pub(crate) first_seen_by_poll_recent: u64,
    #[serde(default)]
    pub(crate) first_seen_by_poll_newest: Option<DateTime<Utc>>,
    pub(crate) polls_ok: u64,
    pub(crate) polls_failed: u64,
}

impl BackstopStatus {
    fn set_first_seen(&mut self, n: poll::FirstSeen) {
        self.first_seen_by_poll = n.total;
        self.first_seen_by_poll_recent = n.recent;
        self.first_seen_by_poll_newest = n.newest;
    }
}

pub(crate) struct Backstop {
    config: SharedConfig,
    store: Store,
    changes: ChangeSignal,
    state: Mutex<BackstopStatus>,
    /// Serialises runs (scheduled and manual).
    running: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    triggers: mpsc::Sender<&'static str>,
    rx: Mutex<Option<mpsc::Receiver<&'static str>>>,
    refusals: RefusalCount,
    /// MQTT uplink connections that found no session at the broker (what it held is gone).
    new_sessions: RefusalCount,
}

impl Backstop {
    pub(crate) fn new(
        config: SharedConfig,
        store: Store,
        changes: ChangeSignal,
        refusals: RefusalCount,
        new_sessions: RefusalCount,
    ) -> Arc<Backstop> {
        let (tx, rx) = mpsc::channel(4);
        let enabled = config.get().leap.api_key.is_some();
        Arc::new(Backstop {
            config,
            store,
            changes,
            state: Mutex::new(BackstopStatus {
                enabled,
                ..Default::default()
            }),
            running: tokio::sync::Mutex::new(None),
            triggers: tx,
            rx: Mutex::new(Some(rx)),
            refusals,
            new_sessions,
        })
    }

    /// Ask for a run; coalesced with any already waiting.
    pub(crate) fn trigger(&self, reason: &'static str) {
        let _ = self.triggers.try_send(reason);
    }

    pub(crate) fn status(&self) -> BackstopStatus {
        self.state.lock().expect("backstop lock").clone()
    }

    /// The daemon's task: wait for triggers, keep the minimum gap, run.
    pub(crate) async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let Some(rx) = self.rx.lock().expect("backstop lock").take() else {
            return;
        };
        if let Ok(n) = self.store.read(poll::first_seen_by_poll).await {
            self.state.lock().expect("backstop lock").set_first_seen(n);
        }
        // Both end on `stop`; joined here, not spawned, so the daemon's tracker holds both
        // and shutdown waits for them (issue 16.5).
        tokio::join!(
            self.clone().watch_recoveries(stop.clone()),
            self.serve_triggers(rx, stop),
        );
    }

    async fn serve_triggers(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<&'static str>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.trigger("start");
        loop {
            let reason = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = stop.wait_for(|s| *s) => return,
            };
            let gap = self.wait_needed().await.max(self.fleet_offset(reason));
            if !gap.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(gap) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            while rx.try_recv().is_ok() {}
            if self.status().enabled {
                // Shutdown must not wait for Leap's retries: the database closes after us.
                tokio::select! {
                    _ = self.run_now(reason, None) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// A relay or broker restart reconnects every gateway of a fleet within seconds, and
    /// Leap's rate limit is per account: such a poll first waits this site's own number of
    /// seconds (0–59, its scheduled poll's second), so the fleet's polls spread over a
    /// minute.
    fn fleet_offset(&self, reason: &str) -> Duration {
        if !matches!(reason, TUNNEL_RECONNECTED | MQTT_SESSION_LOST) {
            return Duration::ZERO;
        }
        let ids: Vec<String> = self
            .config
            .get()
            .meters
            .iter()
            .map(|m| m.id.clone())
            .collect();
        Duration::from_secs(crate::config::leap::site_second(&ids))
    }

    async fn wait_needed(&self) -> Duration {
        let last = *self.running.lock().await;
        let min = Duration::from_secs(super::MIN_POLL_GAP_SECS as u64);
        last.map_or(Duration::ZERO, |l| min.saturating_sub(l.elapsed()))
    }

    /// Run one poll now (`days_back` overrides `leap.poll_days_back`) and record it.
    pub(crate) async fn run_now(
        &self,
        reason: &'static str,
        days_back: Option<u32>,
    ) -> Result<PollReport, String> {
        let mut last = self.running.lock().await;
        *last = Some(tokio::time::Instant::now());
        let started = Utc::now();
        let result = self.poll(days_back).await;
        let first_seen = self.store.read(poll::first_seen_by_poll).await.ok();
        let mut s = self.state.lock().expect("backstop lock");
        s.last_attempt = Some(started);
        s.last_trigger = Some(reason.to_string());
        if let Some(n) = first_seen {
            s.set_first_seen(n);
        }
        match result {
            Ok(report) => {
                s.last_success = Some(started);
                s.last_error = None;
                s.polls_ok += 1;
                log_report(reason, &report);
                s.last_report = Some(report.clone());
                Ok(report)
            }
            Err(e) => {
                tracing::warn!(trigger = reason, error = %e, "Leap poll failed; the next trigger retries");
                s.polls_failed += 1;
                s.last_error = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    async fn poll(&self, days_back: Option<u32>) -> Result<PollReport, PollError> {
        let cfg = self.config.get();
        let client = LeapClient::from_config(&cfg.leap)?;
        let now = Utc::now();
        let window = Window::around(
            now,
            days_back.unwrap_or(cfg.leap.poll_days_back),
            cfg.leap.poll_days_ahead,
        );
        let configured = cfg.leap.market_group_ids.clone();
        let groups = self
            .store
            .read(move |c| poll::known_groups(c, &configured, now))
            .await?;
        let targets = Targets {
            meter_ids: cfg.meters.iter().map(|m| m.id.clone()).collect(),
            market_group_ids: groups,
            limits: cfg.limits.clone(),
        };
        let changes = self.changes.clone();
        let bump = move || changes.bump();
        poll::poll_once(&client, &self.store, &targets, window, &bump).await
    }

    /// Poll again when the tunnel reconnects or storage recovers: both mean pushes may
    /// have been refused while Leap retried. Storage is probed only when there is a reason
    /// (a refused push, a failed probe or a poll that could not store), so a healthy
    /// gateway's flash is not written every few seconds.
    async fn watch_recoveries(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tunnel = tunnel_active().await;
        let mut refused = (self.refusals)();
        let mut sessions = (self.new_sessions)();
        let mut suspect = false;
        let mut tick = tokio::time::interval(WATCH_PERIOD);
        for n in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // systemctl is a process: ask it every third tick only.
            if n % 3 == 0 {
                let now = tunnel_active().await;
                if tunnel == Some(false) && now == Some(true) {
                    tracing::info!(
                        "tunnel reconnected; polling Leap for dispatches pushed meanwhile"
                    );
                    self.trigger(TUNNEL_RECONNECTED);
                }
                tunnel = now;
            }
            let n = (self.new_sessions)();
            if n > sessions {
                tracing::warn!(
                    "the MQTT broker lost this gateway's session; polling Leap for dispatches it held"
                );
                self.trigger(MQTT_SESSION_LOST);
            }
            sessions = n;
            let r = (self.refusals)();
            let poll_failed = self
                .status()
                .last_error
                .is_some_and(|e| e.contains("storing"));
            suspect |= r > refused || poll_failed;
            refused = r;
            if suspect && self.store.check_writable().await.is_ok() {
                suspect = false;
                tracing::info!(
                    "storage writable again; polling Leap for dispatches refused meanwhile"
                );
                self.trigger("storage recovered");
            }
        }
    }
}

/// Triggers that every gateway of a fleet sees at once.
const TUNNEL_RECONNECTED: &str = "tunnel reconnected";
const MQTT_SESSION_LOST: &str = "mqtt session lost";

fn log_report(reason: &str, r: &PollReport) {
    if r.new > 0 {
        tracing::warn!(
            trigger = reason, new = r.new, event_ids = ?r.new_event_ids,
            "Leap poll found timeslots that were never pushed: check the public path (leap-edge leap test)"
        );
    }
    tracing::info!(
        trigger = reason,
        pages = r.pages,
        results = r.results,
        new = r.new,
        updated = r.updated,
        duplicate = r.duplicate,
        rejected = r.rejected,
        conflict = r.conflict,
        "Leap poll done"
    );
}

/// Whether the reverse-tunnel unit is active; None when it is not installed or systemd
/// cannot be asked (then reconnects are caught by the schedule instead).
async fn tunnel_active() -> Option<bool> {
    tokio::task::spawn_blocking(tunnel_active_blocking)
        .await
        .ok()
        .flatten()
}

fn tunnel_active_blocking() -> Option<bool> {
    let unit = "leap-edge-tunnel.service";
    let installed = [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(unit).exists());
    if !installed {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args(["is-active", unit])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim() == "active")
}

impl StatusSource for Backstop {
    fn render_metrics(&self, out: &mut String) {
        let s = self.status();
        gauge(
            out,
            "leap_edge_poll_last_success_timestamp_seconds",
            "Unix time of the last successful Leap poll (0 = never).",
            s.last_success.map_or(0.0, |t| t.timestamp() as f64),
        );
        gauge(
            out,
            "leap_edge_poll_first_seen_timeslots",
            "Timeslots first seen by polling, not by push: pushes that never arrived.",
            s.first_seen_by_poll as f64,
        );
        gauge(
            out,
            "leap_edge_poll_failures",
            "Leap polls that failed since start.",
            s.polls_failed as f64,
        );
    }

    fn health_problems(&self) -> Vec<String> {
        Vec::new()
    }
}
