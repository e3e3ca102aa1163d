//! `leap-edge relay` (SPEC §2.12): the same binary on the partner's public host. Leap posts
//! the whole fleet's dispatches to one URL; the relay checks them as a gateway would,
//! commits them with one delivery per concerned gateway to its outbox, acks, and delivers
//! each gateway its own entries, at least once, in order. It reuses the gateway's server,
//! auth, parser and store thread; its outbox is its own SQLite file with its own schema.

mod client;
pub(crate) mod config;
mod deliver;
mod http;
mod mqtt;
mod outbox;
mod route;
mod status;

pub use config::RelayConfig;
pub(crate) use status::{RelayProcess, RelayStatus};

/// `relay status`: the outbox read read-only, so it works whether or not the relay runs.
pub(crate) fn read_status(
    config: &RelayConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RelayStatus, crate::store::StoreError> {
    let conn = crate::store::open_read_only(&config.storage.path)?;
    if !outbox::is_relay_db(&conn)? {
        return Err(crate::store::StoreError::Corrupt(format!(
            "{} is not a relay outbox (is storage.path right?)",
            config.storage.path.display()
        )));
    }
    let names: Vec<String> = config.gateways.iter().map(|g| g.name.clone()).collect();
    let mut s = status::query(&conn, &names, now)?;
    mqtt::attach(&conn, config, &mut s)?;
    let db = &config.storage.path;
    s.process = Some(status::RelayProcess {
        running: crate::runlock::held(db),
        last_run: crate::runlock::read(&crate::runlock::path_for(db)),
    });
    Ok(s)
}

/// How far back a gateway that now serves a meter is sent what it missed: any timeslot a
/// gateway accepts from an older notification has ended (it starts at most
/// `max_start_ahead_days` after it and lasts at most `max_timeslot_hours`), a day to spare.
fn replay_since(config: &RelayConfig) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::hours(replay_window_hours(&config.limits))
}

pub(crate) fn replay_window_hours(l: &crate::config::LimitsConfig) -> i64 {
    i64::from(l.max_start_ahead_days) * 24 + i64::from(l.max_timeslot_hours) + 24
}

/// The outbox schema version this build reads (`relay check` refuses a newer outbox).
pub(crate) fn outbox_latest() -> i64 {
    outbox::latest()
}

/// `relay check`: each HTTP gateway's address and TLS files as the delivery worker loads
/// them (it would otherwise log and wait, with nothing in `relay status`).
pub(crate) fn target_problems(config: &RelayConfig) -> Vec<String> {
    config
        .gateways
        .iter()
        .filter(|g| g.transport == config::Transport::Http)
        .filter_map(|g| {
            client::Target::parse(g)
                .err()
                .map(|e| format!("gateways \"{}\": {e}", g.name))
        })
        .collect()
}

/// `relay requeue`: dead letters of `gateways` back to pending (the operator fixed what the
/// gateway refused), with what was delivered after them.
pub(crate) fn requeue_dead(
    conn: &mut rusqlite::Connection,
    config: &RelayConfig,
    gateways: &[String],
) -> Result<outbox::Requeued, crate::store::StoreError> {
    outbox::requeue_dead(conn, gateways, replay_since(config))
}

pub(crate) fn is_outbox(conn: &rusqlite::Connection) -> Result<bool, crate::store::StoreError> {
    outbox::is_relay_db(conn)
}

use crate::server;
use crate::stage::Stage;
use crate::store::{Store, StoreThread};
use http::RelayApp;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error(transparent)]
    Lock(#[from] crate::runlock::LockError),
}

impl RelayError {
    /// A read-only outbox or unusable TLS files are configuration problems: exit 78, so
    /// systemd does not restart in a loop (as the gateway, issue 10.4).
    pub(crate) fn is_config(&self) -> bool {
        matches!(
            self,
            RelayError::Store(
                crate::store::StoreError::ReadOnly { .. }
                    | crate::store::StoreError::TooNew { .. }
                    | crate::store::StoreError::OrphanedWal { .. }
            ) | RelayError::Server(server::ServerError::Tls { .. })
        ) || matches!(self, RelayError::Lock(e) if e.is_config())
    }
}

/// A started relay; [`Running::stop`] shuts it down in order.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    app: Arc<RelayApp>,
    /// Re-read on reload, like the gateway's (certificate renewals, issue 10.3).
    tls: Option<Arc<server::tls::ReloadableTls>>,
    stages: Stages,
    store_thread: StoreThread,
}

/// The relay's tasks by shutdown stage, stopped in this order (issue 16.5): first nothing
/// new is accepted, then the delivery workers, the broker link and the prune end.
struct Stages {
    intake: Stage,
    delivery: Stage,
}

async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), RelayError> {
    let l = server::bind(addr).await?;
    let local = l
        .local_addr()
        .map_err(|source| server::ServerError::Bind { addr, source })?;
    Ok((l, local))
}

pub async fn start(config: RelayConfig) -> Result<Running, RelayError> {
    let config = Arc::new(config);
    let (store, store_thread) = Store::open_with_schema(&config.storage.path, outbox::migrate)?;
    tracing::info!(path = %config.storage.path.display(), "relay outbox open (WAL, synchronous=FULL)");
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(server::tls::ReloadableTls::load(&t.cert, &t.key)?)),
        None => None,
    };
    let (public, addr) = listen(config.server.listen).await?;
    let (private, metrics_addr) = listen(config.relay.metrics_listen).await?;
    // Dropped on an early return below, the stages cancel whatever was already spawned.
    let stages = Stages {
        intake: Stage::new("intake"),
        delivery: Stage::new("delivery"),
    };
    let delivery_stop = stages.delivery.stop_rx();
    let tracker = stages.delivery.tracker();
    let link = mqtt::start_link(&config, &store, delivery_stop.clone(), tracker)
        .map_err(RelayError::Mqtt)?;
    let timeout = Duration::from_secs(config.relay.delivery_timeout_secs);
    let fleet = deliver::Fleet::new(store.clone(), timeout, delivery_stop)
        .with_link(link.clone())
        .with_tracker(stages.delivery.tracker().clone());
    let fleet = Arc::new(fleet);
    let app = Arc::new(RelayApp::new(config.clone(), store.clone(), fleet.clone()));
    // The configuration may have changed while the relay was down: re-route first.
    let routes = app.routes();
    let since = replay_since(&config);
    let n = store
        .call(move |c| outbox::reroute_all(c, &routes, since))
        .await?;
    tracing::info!(notifications = n, "outbox re-routed at start");
    fleet.apply(&config.gateways);
    serve(&app, (public, private), tls.clone(), &stages);
    if let Some(link) = link {
        watch_link(&app, link, &stages.delivery);
    }
    tracing::info!(%addr, path = %config.server.path, tls = config.server.tls.is_some(), "listening for Leap notifications");
    tracing::info!(addr = %metrics_addr, "relay /metrics and /healthz on loopback");
    Ok(Running {
        addr,
        metrics_addr,
        app,
        tls,
        stages,
        store_thread,
    })
}

/// The public webhook listener, the loopback metrics listener and the hourly prune.
fn serve(
    app: &Arc<RelayApp>,
    (public, private): (tokio::net::TcpListener, tokio::net::TcpListener),
    tls: Option<Arc<server::tls::ReloadableTls>>,
    stages: &Stages,
) {
    let intake = &stages.intake;
    let webhook = server::Role::Webhook;
    intake.spawn(server::serve(
        public,
        tls,
        app.clone(),
        webhook,
        intake.stopped(),
    ));
    let metrics = server::Role::Metrics;
    intake.spawn(server::serve(
        private,
        None,
        app.clone(),
        metrics,
        intake.stopped(),
    ));
    let delivery = &stages.delivery;
    delivery.spawn(prune_loop(app.clone(), delivery.stop_rx()));
}

/// After each connection to the broker, the MQTT gateways' queued parts are due at once.
fn watch_link(app: &Arc<RelayApp>, link: Arc<crate::mqtt::link::Link>, delivery: &Stage) {
    let a = app.clone();
    let names = move || {
        let all: Vec<String> = a.config().gateways.iter().map(|g| g.name.clone()).collect();
        mqtt::mqtt_gateways(&a.config(), &all)
    };
    let (store, fleet) = (app.store.clone(), app.fleet.clone());
    delivery.spawn(mqtt::on_connect(
        link,
        store,
        fleet,
        names,
        delivery.stop_rx(),
    ));
}

impl Running {
    /// SPEC §2.12: re-read `[[gateways]]` (and the keys) without a restart. Undelivered items
    /// follow a meter that moved; dead letters of a gateway whose url or key changed are
    /// queued again (they were refused because of the old setting).
    pub(crate) async fn reload(&self) {
        let Some(path) = self.app.config().source.clone() else {
            return;
        };
        let new = match RelayConfig::load(&path) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the configuration is not valid; keeping the old one");
                return;
            }
        };
        let old = self.app.config();
        // The broker link is built once, at the start: a reload that took a new [mqtt]
        // would log "reloaded" while every MQTT part kept failing on the old settings
        // (or on none).
        if old.mqtt != new.mqtt {
            tracing::error!(
                "reload refused: [mqtt] changed, which takes a restart (`systemctl restart leap-edge-relay`); keeping the old configuration"
            );
            return;
        }
        let changed: Vec<String> = new
            .gateways
            .iter()
            .filter(|g| {
                old.gateways.iter().any(|o| {
                    o.name == g.name && (o.url != g.url || o.key != g.key || o.header != g.header)
                })
            })
            .map(|g| g.name.clone())
            .collect();
        self.app.set_config(new.clone());
        let routes = self.app.routes();
        let since = replay_since(&new);
        let done = self
            .app
            .store
            .call(move |c| {
                let requeued = outbox::requeue_dead(c, &changed, since)?;
                Ok((requeued, outbox::reroute_all(c, &routes, since)?))
            })
            .await;
        match done {
            Ok((requeued, n)) => tracing::info!(
                gateways = new.gateways.len(),
                rerouted = n,
                requeued = requeued.dead,
                resent_after_them = requeued.later,
                "relay configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "reload: cannot re-route the outbox"),
        }
        self.app.fleet.apply(&new.gateways);
        self.app.fleet.wake_all();
        self.reload_tls();
    }

    /// Certificate renewals apply without a restart; a bad pair leaves the old one serving.
    fn reload_tls(&self) {
        let Some(tls) = &self.tls else { return };
        let before = tls.fingerprint();
        match tls.reload() {
            Ok(fp) if fp != before => {
                tracing::info!(fingerprint = %fp, "relay TLS certificate renewed")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS files not reloaded; the old certificate stays")
            }
        }
    }

    pub async fn stop(self) {
        self.stages.intake.stop(Duration::from_secs(10)).await;
        self.stages.delivery.stop(Duration::from_secs(10)).await;
        drop(self.app);
        // Awaited, never joined on a runtime thread; bounded (with the runtime's 5 s) under TimeoutStopSec=40s.
        if tokio::time::timeout(Duration::from_secs(8), self.store_thread.closed())
            .await
            .is_err()
        {
            tracing::error!("the outbox is still open after shutdown; a task holds it");
        }
    }
}

/// Settled notifications received before this are forgotten: the retention, but never
/// less than a replay reaches back, so a gateway added later is still sent every dispatch
/// it could act on (`replay_since`), whatever `retention_days` says.
fn prune_before(
    config: &RelayConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let hours =
        (i64::from(config.storage.retention_days) * 24).max(replay_window_hours(&config.limits));
    now - chrono::Duration::hours(hours)
}

/// Hourly: forget settled notifications older than the retention.
async fn prune_loop(app: Arc<RelayApp>, mut stop: watch::Receiver<bool>) {
    loop {
        let before = prune_before(&app.config(), chrono::Utc::now());
        match app.store.call(move |c| outbox::prune(c, before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                notifications = n,
                "pruned settled notifications past retention"
            ),
            Err(e) => tracing::warn!(error = %e, "prune failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `leap-edge relay run`: serve until SIGTERM/SIGINT; SIGHUP (`systemctl reload`) reloads.
pub async fn run(config: RelayConfig) -> Result<(), RelayError> {
    use tokio::signal::unix::{SignalKind, signal};
    // First, before binding anything: two relays on one outbox would deliver everything twice.
    let _lock = crate::runlock::acquire(
        crate::runlock::Role::Relay,
        &config.storage.path,
        config.source.as_deref(),
    )?;
    let running = start(config).await?;
    let mut term = signal(SignalKind::terminate()).map_err(RelayError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RelayError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RelayError::Signals)?;
    if let Err(e) = crate::systemd::notify_ready() {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = crate::systemd::notify("RELOADING=1");
                running.reload().await;
                let _ = crate::systemd::notify_ready();
            }
        }
    }
    tracing::info!("relay stopping");
    let _ = crate::systemd::notify_stopping();
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retention shorter than the replay window does not forget what a gateway added
    /// later is still to be sent; a longer one is kept as set.
    #[test]
    fn pruning_keeps_at_least_the_replay_window() {
        let config = |days: u32| -> RelayConfig {
            toml::from_str(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[storage]\nretention_days = {days}\n"
            ))
            .unwrap()
        };
        let now = chrono::Utc::now();
        let kept = |days| now - prune_before(&config(days), now);
        let replay = replay_window_hours(&config(7).limits);
        assert_eq!(kept(7), chrono::Duration::hours(replay));
        assert!(replay > 7 * 24, "{replay}");
        assert_eq!(kept(400), chrono::Duration::days(400));
    }
}
