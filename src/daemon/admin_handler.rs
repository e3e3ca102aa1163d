//! The daemon's answers on the admin socket: the state snapshot behind `leap-edge status`,
//! and the technician's commands (overrides, reload). Every command that changes state is
//! logged and audited with the peer's uid and pid (issue 10 point 9).

use super::report;
use crate::admin::state::{ClearReply, OverrideReply, ReloadReply, Reply};
use crate::admin::{AdminHandler, OverrideAction, Peer, Request, Response};
use crate::clock::Clock;
use crate::config::SharedConfig;
use crate::control::MeterStatus;
use crate::dispatch::DispatchStatus;
use crate::dispatch::overrides::{MAX_OVERRIDE_SECS, ManualAction, Override, Overrides};
use crate::seam::ChangeSignal;
use crate::server::{App, WebhookSettings};
use crate::store::audit::{Action, AuditEntry};
use crate::store::query;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub(crate) struct Handler {
    pub(crate) app: Arc<App>,
    /// The configuration in force; `reload` replaces parts of it.
    pub(crate) config: SharedConfig,
    /// Wakes dispatch after an override, a clear or a reload.
    pub(crate) changes: ChangeSignal,
    pub(crate) backstop: Arc<crate::leap::backstop::Backstop>,
    /// Its cached clock-sync answer goes into `status` (no process per request).
    pub(super) hk: Arc<super::housekeeping::Housekeeping>,
    pub(crate) dispatch: Arc<DispatchStatus>,
    pub(crate) overrides: Arc<Overrides>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) started_at: DateTime<Utc>,
    /// The webhook listener's bound address (the configured one may say port 0).
    pub(crate) listen: std::net::SocketAddr,
    /// Each control loop's state (devices), in configuration order.
    pub(crate) live: Arc<dyn Fn() -> Vec<MeterStatus> + Send + Sync>,
    /// The MQTT uplink's broker connection, when `[uplink.mqtt]` is set.
    pub(crate) uplink: Option<Arc<crate::mqtt::broker_state::BrokerWatch>>,
}

impl AdminHandler for Handler {
    async fn handle(&self, req: Request, peer: Peer) -> Response {
        match req {
            Request::Status => self.status().await,
            Request::Override(o) => {
                if let Some(t) = o.expires_at.filter(|t| chrono::Utc::now() > *t) {
                    tracing::warn!(expired_at = %t, "override request read after its client gave up: not applied");
                    return Response::err(format!(
                        "the request reached the daemon after the command gave up at {}; nothing was changed",
                        crate::textfmt::ts(t)
                    ));
                }
                let r = self
                    .set_override(o.meter, o.action, o.seconds, o.expires_at, peer)
                    .await;
                r.unwrap_or_else(Response::err)
            }
            Request::OverrideClear { meter } => self.clear(meter, peer).await,
            Request::Reload => self.reload(peer).await,
            Request::LeapPoll { days } => match self.backstop.run_now("cli", days).await {
                Ok(report) => Response::ok(Reply::LeapPoll(Box::new(report))),
                Err(e) => Response::err(e),
            },
        }
    }

    fn time_limit(&self, req: &Request) -> std::time::Duration {
        match req {
            Request::LeapPoll { .. } => crate::leap::poll_time_limit(&self.config.get().leap),
            _ => crate::admin::EXCHANGE_TIMEOUT,
        }
    }
}

impl Handler {
    async fn status(&self) -> Response {
        // A database that cannot be read is said, not shown as "none stored".
        let (last, unreadable) = match self.app.store.read(query::last_notification).await {
            Ok(last) => (last, None),
            Err(e) => (None, Some(format!("the database could not be read: {e}"))),
        };
        let config = self.config.get();
        let report = report::build(report::Inputs {
            config: &config,
            now: self.clock.now(),
            clock_synchronised: self.hk.clock_synchronised(),
            listen: self.listen,
            started_at: self.started_at,
            last,
            snap: self.dispatch.snapshot(),
            overrides: self.overrides.snapshot(),
            live: (self.live)(),
        });
        let report = crate::admin::state::StatusReport {
            leap: Some(self.leap_status(&config, self.clock.now())),
            uplink: self.uplink.as_ref().map(|w| w.snapshot()),
            storage_error: self
                .app
                .store
                .file_problem()
                .or_else(|| {
                    let failed = self.app.store.batch_stats().failure();
                    failed.map(|e| format!("the last notification could not be stored: {e}"))
                })
                .or(unreadable),
            ..report
        };
        Response::ok(Reply::Status(Box::new(report)))
    }

    async fn clear(&self, meter: Option<String>, peer: Peer) -> Response {
        // The configured spelling: ids are matched without regard to case (as `set` does),
        // but the overrides are kept under it.
        let meter = meter.map(|m| {
            let config = self.config.get();
            config.meter(&m).map_or(m, |c| c.id.clone())
        });
        let targets: Vec<String> = self
            .overrides
            .snapshot()
            .into_keys()
            .filter(|k| meter.as_ref().is_none_or(|m| m == k))
            .collect();
        let n = self.overrides.clear(meter.as_deref());
        let m = meter.clone();
        let forgotten = self
            .app
            .store
            .call(move |c| crate::store::overrides::delete(c, m.as_deref()))
            .await;
        let mut warnings = Vec::new();
        if let Err(e) = forgotten {
            // Cleared now; after a restart the saved one would hold again until its end.
            tracing::error!(error = %e, "cannot delete the saved manual override");
            warnings.push(format!(
                "cleared now, but the saved copy could not be deleted ({e}): after a restart the \
                 override would hold again until its end; run `leap-edge override clear` again \
                 once the database is writable"
            ));
        }
        tracing::info!(
            meter_id = meter.as_deref().unwrap_or("all"),
            cleared = n,
            peer_uid = peer.uid,
            peer_pid = peer.pid,
            "manual override cleared"
        );
        // A database that refused the delete would keep each audit row waiting its own
        // busy timeout too, past the CLI's patience: those rows are only logged (above).
        for id in targets.iter().filter(|_| warnings.is_empty()) {
            self.audit(id, "override cleared from the CLI".into(), None, peer)
                .await;
        }
        self.changes.bump();
        Response::ok(Reply::Cleared(ClearReply {
            cleared: n,
            warnings,
        }))
    }

    /// Issue 13: the polling backstop and the next fire time of each `[schedule]` job.
    fn leap_status(
        &self,
        config: &crate::config::Config,
        now: DateTime<Utc>,
    ) -> crate::admin::state::LeapStatus {
        let schedule = config
            .schedule
            .jobs()
            .iter()
            .map(|(key, expr)| crate::admin::state::ScheduleJob {
                job: key.to_string(),
                cron: expr.to_string(),
                next_fire: crate::leap::next_fire(expr, now),
            })
            .collect();
        crate::admin::state::LeapStatus {
            backstop: self.backstop.status(),
            schedule,
        }
    }

    /// Re-read the configuration file. Auth keys, test policies, strategies and retention
    /// apply at once; anything else that changed is reported as needing a restart and is
    /// not applied, so the running daemon never runs a half-applied configuration.
    pub(super) async fn reload(&self, peer: Peer) -> Response {
        let current = self.config.get();
        let Some(path) = current.source.clone() else {
            return Response::err("this daemon was not started from a file; restart it instead");
        };
        let new = match crate::preflight::load_for_start(&path) {
            Ok(c) => c,
            Err(e) => return Response::err(format!("configuration not reloaded: {e}")),
        };
        let restart: Vec<String> = current
            .restart_needed(&new)
            .into_iter()
            .map(String::from)
            .collect();
        // Issue 10.3: certbot/ACME replace the files in place; re-read them first, so a
        // broken renewal refuses the whole reload and the old pair stays in service.
        let tls_before = self.app.tls().map(|t| t.fingerprint());
        let tls = match self.app.tls().map(|t| t.reload()).transpose() {
            Ok(fp) => fp,
            Err(e) => {
                return Response::err(format!(
                    "configuration not reloaded: {e}; the certificate in service is unchanged"
                ));
            }
        };
        let applied = applied_sections(&current, &new, tls != tls_before);
        let mut merged = (*current).clone();
        merged.auth = new.auth;
        merged.policy = new.policy;
        merged.strategy = new.strategy;
        merged.limits = new.limits;
        merged.storage.retention_days = new.storage.retention_days;
        // Said at start and by `config check`; a reload applies them at once (the next
        // prune uses a lowered retention), so it says them too.
        let warnings = crate::preflight::warnings(&merged);
        for w in &warnings {
            tracing::warn!(warning = %w, "configuration warning after reload");
        }
        self.app.set_settings(WebhookSettings::of(&merged));
        self.config.set(Arc::new(merged));
        self.changes.bump();
        tracing::info!(path = %path.display(), applied = %list(&applied),
            restart_needed_for = %list(&restart), tls_fingerprint = tls.as_deref().unwrap_or("-"), peer_uid = peer.uid, peer_pid = peer.pid,
            "configuration reloaded");
        if !applied.is_empty() {
            // Site-wide: the audit row names no single meter.
            let detail = format!("reload applied {}", list(&applied));
            self.audit(SITE, detail, None, peer).await;
        }
        Response::ok(Reply::Reload(ReloadReply {
            applied,
            restart_needed_for: restart,
            tls_fingerprint: tls,
            warnings,
        }))
    }

    async fn set_override(
        &self,
        meter: Option<String>,
        action: OverrideAction,
        seconds: u64,
        expires_at: Option<DateTime<Utc>>,
        peer: Peer,
    ) -> Result<Response, String> {
        if seconds == 0 || seconds > MAX_OVERRIDE_SECS {
            return Err(format!(
                "--for must be between 1 s and {} h",
                MAX_OVERRIDE_SECS / 3600
            ));
        }
        if let OverrideAction::Charge(kw) | OverrideAction::Discharge(kw) = action
            && !(kw > 0.0 && kw.is_finite())
        {
            return Err("the power must be a positive number of kW".into());
        }
        let config = self.config.get();
        let targets: Vec<String> = match &meter {
            Some(id) => match config.meter(id) {
                Some(m) => vec![m.id.clone()],
                None => return Err(not_configured(id, &config)),
            },
            None => config.meters.iter().map(|m| m.id.clone()).collect(),
        };
        let now = self.clock.now();
        let until = now + chrono::Duration::seconds(seconds as i64);
        let words = describe(action);
        let mut warnings = Vec::new();
        let o = Override {
            action: manual(action),
            until,
        };
        // Saved first, so an override that was answered outlives a restart.
        let saved: Vec<_> = targets.iter().map(|id| o.saved(id)).collect();
        warnings.extend(self.save_overrides(saved, now, expires_at).await?);
        for id in &targets {
            self.overrides.set(id, o);
            tracing::warn!(meter_id = %id, action = %words, until = %until,
                peer_uid = peer.uid, peer_pid = peer.pid, "manual override set");
            if let Some(w) = self.over_rating(id, action) {
                warnings.push(w);
            }
            let detail = format!(
                "override {words} until {} set from the CLI",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
            let row = self.audit(id, detail, Some(words.clone()), peer);
            within(expires_at, row).await;
        }
        self.changes.bump();
        Ok(Response::ok(Reply::Override(OverrideReply {
            meters: targets,
            until,
            warnings,
        })))
    }

    /// Save the overrides; a warning if that failed. Err when the save outlasted the
    /// client's wait (it was told nothing was applied): the saved rows are withdrawn.
    async fn save_overrides(
        &self,
        saved: Vec<crate::store::overrides::SavedOverride>,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Option<String>, String> {
        use crate::store::overrides as saved_rows;
        let late = move || expires_at.is_some_and(|t| Utc::now() > t);
        let ids: Vec<String> = saved.iter().map(|s| s.meter_id.clone()).collect();
        // The rows these replace, to put back if the save ends after the client gave up:
        // withdrawing by deleting would also take away an earlier override still in force.
        let stored = self
            .app
            .store
            .call(move |c| {
                let before: Vec<_> = saved_rows::active(c, now)?
                    .into_iter()
                    .filter(|o| ids.contains(&o.meter_id))
                    .collect();
                // Past the client's wait, queued or waiting for the database's lock:
                // nothing is saved at all. Checked again just before the commit: this job
                // runs to its end even when the request's handler was dropped at its own
                // timeout, and nothing after this call would withdraw the rows then.
                let save = !late() && saved_rows::save_if(c, &saved, now, || !late())?;
                Ok((before, ids, save))
            })
            .await;
        if late() {
            if let Ok((before, ids, true)) = stored {
                // The rows it replaced come back first (one transaction); only the ids that
                // had none are then deleted, so a failure keeps the earlier override.
                let _ = self
                    .app
                    .store
                    .call(move |c| {
                        saved_rows::save(c, &before, now)?;
                        for id in ids
                            .iter()
                            .filter(|id| !before.iter().any(|b| b.meter_id == **id))
                        {
                            saved_rows::delete(c, Some(id))?;
                        }
                        Ok(())
                    })
                    .await;
            }
            tracing::warn!("override saved after its client gave up: withdrawn, not applied");
            return Err("the daemon was too slow to answer in time; nothing was changed".into());
        }
        Ok(stored.err().map(|e| {
            tracing::error!(error = %e, "cannot save the manual override; it ends if the daemon restarts");
            format!("not saved in the database ({e}): it holds now but ends if the daemon restarts")
        }))
    }

    /// An override above the battery's rating is applied at the rating; say so.
    fn over_rating(&self, meter: &str, action: OverrideAction) -> Option<String> {
        let config = self.config.get();
        let dev = config
            .meter(meter)
            .and_then(|m| config.devices.get(&m.device));
        let tel = (self.live)()
            .into_iter()
            .find(|m| m.meter_id == meter)
            .and_then(|m| m.last_telemetry);
        let (kw, rated, what) = match action {
            OverrideAction::Discharge(kw) => (
                kw,
                min(
                    tel.and_then(|t| t.max_discharge_kw),
                    dev.and_then(|d| d.max_discharge_kw),
                ),
                "discharge",
            ),
            OverrideAction::Charge(kw) => (
                kw,
                min(
                    tel.and_then(|t| t.max_charge_kw),
                    dev.and_then(|d| d.max_charge_kw),
                ),
                "charge",
            ),
            _ => return None,
        };
        let rated = rated?;
        (kw > rated).then(|| {
            format!("meter {meter}: {kw} kW is above the battery's rated {what} of {rated} kW; it will {what} at most {rated} kW")
        })
    }

    async fn audit(&self, meter: &str, detail: String, target: Option<String>, peer: Peer) {
        let entry = AuditEntry {
            at: self.clock.now(),
            meter_id: meter.to_string(),
            action: Action::Manual,
            kind: None,
            event_id: None,
            cap: None,
            target,
            boundary: None,
            lateness_ms: None,
            error: None,
            detail: Some(format!("{detail} by {peer}")),
        };
        let r = self
            .app
            .store
            .call(move |c| crate::store::audit::insert(c, &entry))
            .await;
        if let Err(e) = r {
            tracing::error!(meter_id = meter, error = %e, "cannot audit a manual command");
        }
    }
}

/// Waits for an audit row at most until the CLI's `deadline`: the command is in force
/// already, and an answer after the CLI gave up would tell the technician it was not
/// applied (a database held by another writer keeps each row up to its busy timeout).
async fn within(deadline: Option<DateTime<Utc>>, row: impl std::future::Future<Output = ()>) {
    let Some(deadline) = deadline else {
        return row.await;
    };
    let left = (deadline - Utc::now()).to_std().unwrap_or_default();
    if tokio::time::timeout(left, row).await.is_err() {
        tracing::warn!(
            "the audit row of a manual command is still waiting for the database; answering the CLI first (the command is in force)"
        );
    }
}

/// The audit log's meter column for commands that concern the whole site (reload).
const SITE: &str = "(site)";

fn min(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// The live-reloadable sections whose values changed (only those are named, so "nothing
/// changed" is true when it is said).
fn applied_sections(
    current: &crate::config::Config,
    new: &crate::config::Config,
    tls_renewed: bool,
) -> Vec<String> {
    let json = |v: &dyn erased_json::Json| v.json();
    let mut applied = Vec::new();
    if current.auth.header != new.auth.header || current.auth.keys != new.auth.keys {
        applied.push("auth".to_string());
    }
    if json(&current.policy) != json(&new.policy) {
        applied.push("policy".into());
    }
    if json(&current.strategy) != json(&new.strategy) {
        applied.push("strategy".into());
    }
    if json(&current.limits) != json(&new.limits) {
        applied.push("limits".into());
    }
    if current.storage.retention_days != new.storage.retention_days {
        applied.push("storage.retention_days".into());
    }
    if tls_renewed {
        applied.push("server.tls (renewed certificate)".into());
    }
    applied
}

/// The admin socket's override as dispatch's own type (the admin edge converts, so
/// dispatch does not depend on the wire protocol).
pub(crate) fn manual(a: OverrideAction) -> ManualAction {
    match a {
        OverrideAction::Hold => ManualAction::Hold,
        OverrideAction::Charge(kw) => ManualAction::Charge(kw),
        OverrideAction::Discharge(kw) => ManualAction::Discharge(kw),
        OverrideAction::Release => ManualAction::Release,
    }
}

/// Dispatch's override as the admin socket reports it (`status`).
pub(super) fn wire(a: ManualAction) -> OverrideAction {
    match a {
        ManualAction::Hold => OverrideAction::Hold,
        ManualAction::Charge(kw) => OverrideAction::Charge(kw),
        ManualAction::Discharge(kw) => OverrideAction::Discharge(kw),
        ManualAction::Release => OverrideAction::Release,
    }
}

/// An override in words: `discharge 5 kW`, `hold`.
pub fn describe(a: OverrideAction) -> String {
    match a {
        OverrideAction::Hold => "hold".into(),
        OverrideAction::Release => "release".into(),
        OverrideAction::Charge(kw) => format!("charge {kw} kW"),
        OverrideAction::Discharge(kw) => format!("discharge {kw} kW"),
    }
}

pub fn not_configured(id: &str, config: &crate::config::Config) -> String {
    let ids: Vec<&str> = config.meters.iter().map(|m| m.id.as_str()).collect();
    if ids.is_empty() {
        format!("meter {id} is not configured here (no meters are configured)")
    } else {
        format!(
            "meter {id} is not configured here; configured: {}",
            ids.join(", ")
        )
    }
}

mod erased_json {
    pub(crate) trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
