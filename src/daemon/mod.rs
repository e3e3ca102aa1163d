//! `leap-edge run`: wire the stages together, serve until SIGTERM/SIGINT, then shut down in
//! order — stop accepting, finish in-flight requests, stop dispatch (which hands every
//! battery back to normal operation), close the database.

mod admin_handler;
pub mod control_audit;
mod housekeeping;
mod limits;
pub(crate) mod lock;
mod report;
mod schedule;

pub(crate) use admin_handler::{
    describe as describe_override, not_configured as not_configured_meter,
};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LiveConfig, SharedConfig};
use crate::control::ControlCommander;
use crate::dispatch::{Commander, DispatchStatus, Dispatcher};
use crate::seam::{ChangeSignal, StatusBoard};
use crate::server::{self, App, WebhookSettings};
use crate::store::{Store, StoreThread};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("site simulator: {0}")]
    Sim(String),
    #[error(
        "cannot listen on {addr} for the site simulator: {reason} (set by sim.listen; change it, or set sim.autostart = false)"
    )]
    SimBind { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Admin(#[from] crate::admin::SocketError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("uplink.mqtt: {0}")]
    Uplink(String),
}

impl DaemonError {
    /// Problems that a restart cannot fix, only a change to the configuration or the
    /// files it names: `leap-edge run` exits 78 for them (systemd then does not loop).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::Store(crate::store::StoreError::ReadOnly { .. })
                | DaemonError::Server(server::ServerError::Tls { .. })
        )
    }
}

/// What a caller may substitute (tests: a recording commander, a controllable clock).
pub struct Parts {
    pub commander: Arc<dyn Commander>,
    pub clock: Arc<dyn Clock>,
    /// Live per-meter device state for `status`, in configuration order.
    pub live: Arc<dyn Fn() -> Vec<crate::control::MeterStatus> + Send + Sync>,
}

/// A started daemon; [`Running::stop`] shuts it down in order.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` and `/healthz` are served (plain HTTP, loopback).
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
    /// The configuration in force (`reload` replaces parts of it).
    pub config: SharedConfig,
    /// Every part's `/metrics` and `/healthz` contribution, held by the App: weak here, so
    /// dropping the App at shutdown releases the store handles the sources hold.
    status: std::sync::Weak<StatusBoard>,
    pub dispatch: Arc<DispatchStatus>,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    metrics_http: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    admin: JoinHandle<()>,
    uplink: Option<JoinHandle<()>>,
    scheduler: Option<tokio_cron_scheduler::JobScheduler>,
    store_thread: StoreThread,
    recorder: Option<JoinHandle<()>>,
}

pub async fn start(config: Config, parts: Parts) -> Result<Running, DaemonError> {
    let config = Arc::new(config);
    let (store, store_thread) = Store::open(&config.storage.path)?;
    tracing::info!(path = %config.storage.path.display(), "database open (WAL, synchronous=FULL)");
    let admin_listener = crate::admin::bind(&config.admin.socket)?;
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(server::tls::ReloadableTls::load(&t.cert, &t.key)?)),
        None => None,
    };
    let (listener, addr) = bind(config.server.listen).await?;
    let (metrics_listener, metrics_addr) = bind(config.server.metrics_listen).await?;
    let live: SharedConfig = Arc::new(LiveConfig::new(config.clone()));
    let status = Arc::new(StatusBoard::default());
    let changes = ChangeSignal::default();
    let app = Arc::new(App::new(
        WebhookSettings::of(&config),
        store.clone(),
        changes.clone(),
        status.clone(),
    ));
    if let Some(t) = &tls {
        app.set_tls(t.clone());
        tracing::info!(fingerprint = %t.fingerprint(), "TLS certificate loaded");
    }
    let (stop, stop_rx) = watch::channel(false);

    let dispatcher = Dispatcher::new(
        config.clone(),
        store.clone(),
        parts.commander,
        parts.clock.clone(),
    );
    let dispatcher = dispatcher
        .with_live_config(live.clone())
        .with_heartbeat(crate::systemd::watchdog_heartbeat());
    let dispatch = dispatcher.status();
    status.add(dispatch.clone());
    // Issue 13: the polling backstop (a no-op without [leap] api_key).
    // A weak handle: the App holds the backstop (as a status source), not the reverse.
    let weak = Arc::downgrade(&app);
    let backstop = crate::leap::backstop::Backstop::new(
        live.clone(),
        store.clone(),
        changes.clone(),
        Arc::new(move || {
            weak.upgrade()
                .map_or(0, |a| a.metrics.requests.get("storage_unavailable"))
        }),
    );
    status.add(backstop.clone());
    tokio::spawn(backstop.clone().run(stop_rx.clone()));
    let handler = Arc::new(admin_handler::Handler {
        backstop: backstop.clone(),
        app: app.clone(),
        config: live.clone(),
        changes: changes.clone(),
        dispatch: dispatch.clone(),
        overrides: dispatcher.overrides(),
        started_at: parts.clock.now(),
        listen: addr,
        clock: parts.clock,
        live: parts.live,
    });
    let dispatcher = tokio::spawn(dispatcher.run(changes.subscribe(), stop_rx.clone()));
    let hk = Arc::new(housekeeping::Housekeeping::default());
    status.add(hk.clone());
    tokio::spawn(hk.clone().run(stop_rx.clone()));
    let scheduler = start_schedule(&app, &live, &hk, &backstop).await;
    let admin_path = config.admin.socket.clone();
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(async move {
        let stopped = async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        };
        crate::admin::serve(admin_listener, &admin_path, handler, stopped).await;
    });

    // SPEC §2.12: the relay's dispatches may also come through a broker the gateway dials.
    let uplink = match &config.uplink.mqtt {
        Some(m) => Some(
            crate::mqtt::uplink::spawn(m.clone(), app.clone(), dispatch.clone(), stop_rx.clone())
                .map_err(DaemonError::Uplink)?,
        ),
        None => None,
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_http = tokio::spawn(server::serve(
        metrics_listener,
        None,
        app.clone(),
        server::Role::Metrics,
        stopped(stop_rx.clone()),
    ));
    tracing::info!(addr = %metrics_addr, "serving /metrics and /healthz (loopback only)");
    let http = tokio::spawn(server::serve(
        listener,
        tls.clone(),
        app.clone(),
        server::Role::Webhook,
        stopped(stop_rx),
    ));
    tracing::info!(
        addr = %addr, path = %config.server.path, tls = tls.is_some(),
        "listening for Leap notifications"
    );
    Ok(Running {
        addr,
        metrics_addr,
        metrics_http,
        app,
        config: live,
        status: Arc::downgrade(&status),
        dispatch,
        stop,
        http,
        dispatcher,
        admin,
        uplink,
        scheduler,
        store_thread,
        recorder: None,
    })
}

/// `[schedule]`: the poll, pruning and the integrity check on their cron expressions; the
/// last two also run once at start, as they always have. A scheduler that cannot start is
/// logged, not fatal: dispatch does not depend on housekeeping. The jobs hold only weak
/// handles: the scheduler must never keep the database open past shutdown.
async fn start_schedule(
    app: &Arc<App>,
    live: &SharedConfig,
    hk: &Arc<housekeeping::Housekeeping>,
    backstop: &Arc<crate::leap::backstop::Backstop>,
) -> Option<tokio_cron_scheduler::JobScheduler> {
    let cfg = live.get();
    let (a, h, l) = (Arc::downgrade(app), Arc::downgrade(hk), live.clone());
    let prune: schedule::Task = Arc::new(move || {
        let (a, h, retention_days) = (a.upgrade(), h.upgrade(), l.get().storage.retention_days);
        Box::pin(async move {
            if let (Some(a), Some(h)) = (a, h) {
                h.prune(&a.store, retention_days).await;
            }
        })
    });
    let (a, h) = (Arc::downgrade(app), Arc::downgrade(hk));
    let integrity: schedule::Task = Arc::new(move || {
        let (a, h) = (a.upgrade(), h.upgrade());
        Box::pin(async move {
            if let (Some(a), Some(h)) = (a, h) {
                h.integrity(&a.store).await;
            }
        })
    });
    let b = Arc::downgrade(backstop);
    let poll: schedule::Task = Arc::new(move || {
        if let Some(b) = b.upgrade() {
            b.trigger("schedule");
        }
        Box::pin(async {})
    });
    tokio::spawn({
        let (p, i) = (prune.clone(), integrity.clone());
        async move {
            p().await;
            i().await;
        }
    });
    // Weak, like the others: a job must not keep the store open past shutdown.
    let (a, l) = (Arc::downgrade(app), live.clone());
    let upload: schedule::Task = Arc::new(move || {
        let (a, config) = (a.upgrade(), l.get());
        Box::pin(async move {
            if let Some(a) = a {
                daily_upload(&config, &a.store).await;
            }
        })
    });
    let jobs = vec![
        ("upload", cfg.schedule.upload.clone(), upload),
        ("poll", cfg.schedule.poll.clone(), poll),
        ("prune", cfg.schedule.prune.clone(), prune),
        ("integrity", cfg.schedule.integrity.clone(), integrity),
    ];
    match schedule::start(jobs).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "housekeeping schedule not running");
            None
        }
    }
}

/// Issue 14: `[schedule] upload`. Without `[leap] api_key` there is nobody to send to.
async fn daily_upload(config: &Config, store: &Store) {
    let client = match crate::leap::LeapClient::from_config(&config.leap) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "upload: interval data not sent to Leap");
            return;
        }
    };
    let now = chrono::Utc::now();
    match crate::intervals::upload::run_once(&client, store, config, now).await {
        Ok(s) => tracing::info!(sent = s.sent_rows, job_id = ?s.job_id, accepted = s.rows_accepted,
            failed_rows = s.rows_failed, missing = s.missing_named, "upload: done"),
        Err(e) => {
            tracing::warn!(error = %e, "upload: interval data upload failed; the next run retries")
        }
    }
}

impl Running {
    /// Add a part's `/metrics` and `/healthz` contribution (the control loops').
    pub fn add_status(&self, source: Arc<dyn crate::seam::StatusSource>) {
        if let Some(board) = self.status.upgrade() {
            board.add(source);
        }
    }

    /// Issue 14: record 15-minute interval energy from these readings (the control loops').
    pub fn record_intervals(
        &mut self,
        readings: tokio::sync::broadcast::Receiver<crate::intervals::MeterReading>,
    ) {
        let task = crate::intervals::task::run(
            self.app.store.clone(),
            Some(self.config.get()),
            readings,
            self.stop.subscribe(),
        );
        self.recorder = Some(tokio::spawn(task));
    }

    pub async fn stop(self) {
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = self.stop.send(true);
        let _ = self.http.await;
        let _ = self.metrics_http.await;
        let _ = self.dispatcher.await;
        let _ = self.admin.await;
        if let Some(u) = self.uplink {
            let _ = u.await;
        }
        if let Some(r) = self.recorder {
            let _ = r.await;
        }
        if let Some(mut s) = self.scheduler {
            let _ = s.shutdown().await;
        }
        drop(self.app);
        self.store_thread.join();
        tracing::info!("stopped cleanly");
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), DaemonError> {
    let listener = server::bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| server::ServerError::Bind { addr, source })?;
    Ok((listener, local))
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    // First, before binding anything: a second daemon on this database says so plainly.
    let _lock = lock::acquire(&config.storage.path, config.source.as_deref())?;
    // Development and dry runs: the simulator lives inside the daemon, so one command shows
    // the whole chain. It is dropped (stopped) only after dispatch has released the meters.
    let _sim = if config.sim.autostart {
        let listener = tokio::net::TcpListener::bind(config.sim.listen)
            .await
            .map_err(|e| DaemonError::SimBind {
                addr: config.sim.listen,
                reason: e.to_string(),
            })?;
        let sim = crate::sim::spawn(&config.sim, listener)
            .map_err(|e| DaemonError::Sim(e.to_string()))?;
        tracing::info!(addr = %sim.local_addr(), "site simulator started (sim.autostart)");
        Some(sim)
    } else {
        None
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // One closed loop per meter drives its battery over Modbus (SPEC §2.9–2.10).
    let control = Arc::new(ControlCommander::start_modbus(&config, clock.clone())?);
    let status = control.status();
    let readings = control.readings();
    let mut running = start(
        config,
        Parts {
            commander: control.clone(),
            clock,
            live: Arc::new(move || status.snapshot()),
        },
    )
    .await?;
    running.add_status(Arc::new(control.status()));
    let control_audit = control_audit::spawn(running.app.store.clone(), control.status());
    running.record_intervals(readings);
    // Type=notify: systemd counts the service as started only now, with the listener
    // bound and the database open.
    if let Err(e) = crate::systemd::notify_ready() {
        tracing::warn!(error = %e, "cannot tell systemd the daemon is ready");
    }
    let limits = tokio::spawn(limits::watch(control.status(), running.app.store.clone()));
    wait_for_signal().await?;
    let _ = crate::systemd::notify_stopping();
    limits.abort();
    control_audit.abort();
    control_audit::flush(&running.app.store, &control.status()).await;
    running.stop().await;
    // Dispatch has released every meter; make sure the loops wrote it before exiting.
    control.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
    Ok(())
}
