//! The daemon's answers on the admin socket: the state snapshot behind `leap-edge status`,
//! and the technician's commands (overrides).

use crate::admin::{AdminHandler, OverrideAction, Request, Response};
use crate::clock::Clock;
use crate::dispatch::DispatchStatus;
use crate::dispatch::overrides::{MAX_OVERRIDE_SECS, Override, Overrides};
use crate::server::App;
use crate::store::query;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;

pub struct Handler {
    pub app: Arc<App>,
    pub backstop: Arc<crate::leap::backstop::Backstop>,
    pub dispatch: Arc<DispatchStatus>,
    pub overrides: Arc<Overrides>,
    pub clock: Arc<dyn Clock>,
    pub started_at: DateTime<Utc>,
    /// Extra per-meter live state (devices), keyed by Leap meter id.
    pub live: Arc<dyn Fn() -> Value + Send + Sync>,
}

impl AdminHandler for Handler {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => self.status().await,
            Request::Override(o) => self.set_override(o.meter, o.action, o.seconds),
            Request::OverrideClear { meter } => {
                let n = self.overrides.clear(meter.as_deref());
                tracing::info!(meter_id = ?meter, cleared = n, "manual override cleared");
                self.app.changes.send_modify(|n| *n += 1);
                Response::ok(json!({"cleared": n}))
            }
            Request::Reload => self.reload(),
            Request::LeapPoll { days } => match self.backstop.run_now("cli", days).await {
                Ok(report) => Response::ok(serde_json::to_value(report).unwrap_or_default()),
                Err(e) => Response::err(e),
            },
        }
    }
}

impl Handler {
    async fn status(&self) -> Response {
        let now = self.clock.now();
        let last = self
            .app
            .store
            .read(query::last_notification)
            .await
            .ok()
            .flatten();
        let config = self.app.config();
        let snap = self.dispatch.snapshot();
        let overrides = self.overrides.snapshot();
        let live = (self.live)();
        let meters: Vec<Value> = config
            .meters
            .iter()
            .map(|m| {
                let d = snap.meters.get(&m.id);
                json!({
                    "meter_id": m.id, "name": m.name, "device": m.device,
                    "command": d.and_then(|d| d.command.as_ref()),
                    "last_error": d.and_then(|d| d.last_error.clone()),
                    "override": overrides.get(&m.id),
                    "live": live.get(&m.id).cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        Response::ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": crate::store::ts(self.started_at),
            "uptime_secs": (now - self.started_at).num_seconds(),
            "now": crate::store::ts(now),
            "clock_synchronised": crate::clock::synchronised(),
            "last_notification": last,
            "listen": config.server.listen.to_string(),
            "next_boundary": snap.next_boundary.map(crate::store::ts),
            "plan_error": snap.plan_error,
            "meters": meters,
            "leap": self.leap_status(&config, now),
        }))
    }

    /// Issue 13: the polling backstop and the next fire time of each `[schedule]` job.
    fn leap_status(&self, config: &crate::config::Config, now: DateTime<Utc>) -> Value {
        let schedule: Vec<Value> = config
            .schedule
            .jobs()
            .iter()
            .map(|(key, expr)| {
                json!({"job": key, "cron": expr,
                       "next_fire": crate::leap::next_fire(expr, now).map(crate::store::ts)})
            })
            .collect();
        json!({"backstop": self.backstop.status(), "schedule": schedule})
    }

    /// Re-read the configuration file. Auth keys, test policies, strategies and retention
    /// apply at once; anything else that changed is reported as needing a restart and is
    /// not applied, so the running daemon never runs a half-applied configuration.
    fn reload(&self) -> Response {
        let current = self.app.config();
        let Some(path) = current.source.clone() else {
            return Response::err("this daemon was not started from a file; restart it instead");
        };
        let new = match crate::config::Config::load(&path) {
            Ok(c) => c,
            Err(e) => return Response::err(format!("configuration not reloaded: {e}")),
        };
        let restart = current.restart_needed(&new);
        let mut merged = (*current).clone();
        merged.auth = new.auth;
        merged.policy = new.policy;
        merged.strategy = new.strategy;
        merged.storage.retention_days = new.storage.retention_days;
        self.app.set_config(Arc::new(merged));
        self.app.changes.send_modify(|n| *n += 1);
        tracing::info!(path = %path.display(), restart_needed = ?restart, "configuration reloaded");
        Response::ok(
            json!({"reloaded": ["auth", "policy", "strategy", "storage.retention_days"], "restart_needed_for": restart}),
        )
    }

    fn set_override(
        &self,
        meter: Option<String>,
        action: OverrideAction,
        seconds: u64,
    ) -> Response {
        if seconds == 0 || seconds > MAX_OVERRIDE_SECS {
            return Response::err(format!(
                "--for must be between 1 s and {} h",
                MAX_OVERRIDE_SECS / 3600
            ));
        }
        if let OverrideAction::Charge(kw) | OverrideAction::Discharge(kw) = action
            && !(kw > 0.0 && kw.is_finite())
        {
            return Response::err("the power must be a positive number of kW");
        }
        let config = self.app.config();
        let targets: Vec<String> = match &meter {
            Some(id) => match config.meter(id) {
                Some(m) => vec![m.id.clone()],
                None => return Response::err(format!("meter {id} is not configured here")),
            },
            None => config.meters.iter().map(|m| m.id.clone()).collect(),
        };
        let until = self.clock.now() + chrono::Duration::seconds(seconds as i64);
        for id in &targets {
            self.overrides.set(id, Override { action, until });
            tracing::warn!(meter_id = %id, ?action, until = %until, "manual override set");
        }
        self.app.changes.send_modify(|n| *n += 1);
        Response::ok(json!({"meters": targets, "until": crate::store::ts(until)}))
    }
}
