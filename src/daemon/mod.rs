//! `leap-edge run`: wire the stages together, serve until SIGTERM/SIGINT, then shut down in
//! order — stop accepting, finish in-flight requests, stop dispatch (which hands every
//! battery back to normal operation), close the database.

mod admin_handler;
pub mod control_audit;
mod housekeeping;
mod limits;
mod report;
mod schedule;

pub use admin_handler::{describe as describe_override, not_configured as not_configured_meter};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LiveConfig, SharedConfig};
use crate::control::ControlCommander;
use crate::dispatch::{Commander, DispatchStatus, Dispatcher};
use crate::mqtt::broker_state::BrokerWatch;
use crate::seam::{ChangeSignal, StatusBoard};
use crate::server::{self, App, WebhookSettings};
use crate::stage::Stage;
use crate::store::{Store, StoreThread};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    Lock(#[from] crate::runlock::LockError),
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
            DaemonError::Store(
                crate::store::StoreError::ReadOnly { .. }
                    | crate::store::StoreError::TooNew { .. }
                    | crate::store::StoreError::OrphanedWal { .. }
            ) | DaemonError::Server(server::ServerError::Tls { .. })
        ) || matches!(self, DaemonError::Lock(e) if e.is_config())
            // Every control-loop start problem is in the configuration or a profile it
            // names (opening a device connects to nothing): a restart cannot fix it.
            || matches!(self, DaemonError::Control(_))
            || matches!(self, DaemonError::Admin(e) if e.is_config())
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
    stages: Stages,
    store_thread: StoreThread,
    /// For SIGHUP: the admin socket's task owns the handler.
    reloader: std::sync::Weak<admin_handler::Handler>,
}

/// Every task the daemon spawns, by shutdown stage, stopped in this order (issue 16.5).
pub(crate) struct Stages {
    /// What takes work in: the webhook and metrics servers, the admin socket and its
    /// connections, the MQTT uplink, the Leap backstop.
    pub(crate) intake: Stage,
    /// The dispatch loop: stopping it hands every battery back to normal operation.
    pub(crate) dispatch: Stage,
    /// What writes on its own: housekeeping, scheduled jobs, the interval recorder, the
    /// control audit and limits watchers. Last, so the batteries' release is recorded.
    pub background: Stage,
}

/// Per-stage bounds; together well under the units' `TimeoutStopSec=60s`.
const INTAKE_BOUND: Duration = Duration::from_secs(12);
const DISPATCH_BOUND: Duration = Duration::from_secs(15);
const BACKGROUND_BOUND: Duration = Duration::from_secs(5);
const STORE_BOUND: Duration = Duration::from_secs(10);

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
    let (app, shared) = build_app(&config, store, tls.clone());
    // Dropped on an early return below, the stages cancel whatever was already spawned.
    let stages = Stages {
        intake: Stage::new("intake"),
        dispatch: Stage::new("dispatch"),
        background: Stage::new("background"),
    };
    let handler = start_dispatch(&app, &shared, parts, addr, &stages);
    start_schedule(
        &app,
        &shared.live,
        &handler.hk,
        &handler.backstop,
        &stages.background,
    );
    let dispatch = handler.dispatch.clone();
    let reloader = Arc::downgrade(&handler);
    start_uplink(&config, &app, &shared, &dispatch, &stages.intake)?;
    let admin_path = config.admin.socket.clone();
    let (tracker, token) = (stages.intake.tracker().clone(), stages.intake.token());
    stages.intake.spawn(async move {
        crate::admin::serve(admin_listener, &admin_path, handler, tracker, token).await;
    });
    let http = (listener, metrics_listener);
    serve_http(&app, http, tls, &stages.intake);
    tracing::info!(addr = %metrics_addr, "serving /metrics and /healthz (loopback only)");
    tracing::info!(addr = %addr, path = %config.server.path, tls = app.tls().is_some(),
        "listening for Leap notifications");
    Ok(Running {
        addr,
        metrics_addr,
        app,
        config: shared.live,
        status: Arc::downgrade(&shared.status),
        dispatch,
        stages,
        store_thread,
        reloader,
    })
}

/// What the daemon's parts share besides the App: the configuration in force (`reload`
/// replaces parts of it), the status board, the change signal that wakes dispatch, and the
/// MQTT uplink's broker connection (`status`, `/metrics`, `/healthz`).
struct Shared {
    live: SharedConfig,
    status: Arc<StatusBoard>,
    changes: ChangeSignal,
    uplink: Option<Arc<BrokerWatch>>,
}

fn build_app(
    config: &Arc<Config>,
    store: Store,
    tls: Option<Arc<server::tls::ReloadableTls>>,
) -> (Arc<App>, Shared) {
    let uplink = config.uplink.mqtt.as_ref().map(|m| {
        Arc::new(BrokerWatch::new(
            &m.url,
            m.keep_alive_secs,
            "leap_edge_mqtt",
        ))
    });
    let shared = Shared {
        live: Arc::new(LiveConfig::new(config.clone())),
        status: Arc::new(StatusBoard::default()),
        // The store bumps it after each commit that changed a timeslot (`writer.rs`).
        changes: store.changes(),
        uplink,
    };
    if let Some(w) = &shared.uplink {
        shared.status.add(w.clone());
    }
    let settings = WebhookSettings::of(config);
    let app = App::new(
        settings,
        store,
        shared.changes.clone(),
        shared.status.clone(),
    );
    if let Some(t) = tls {
        tracing::info!(fingerprint = %t.fingerprint(),
            not_after = %t.not_after().map_or("unknown".into(), crate::textfmt::ts),
            "TLS certificate loaded");
        // /metrics shows its expiry, /healthz fails a week before it.
        shared.status.add(t.clone());
        app.set_tls(t);
    }
    (Arc::new(app), shared)
}

/// SPEC §2.12: the relay's dispatches may also come through a broker the gateway dials.
fn start_uplink(
    config: &Config,
    app: &Arc<App>,
    shared: &Shared,
    dispatch: &Arc<crate::dispatch::DispatchStatus>,
    intake: &Stage,
) -> Result<(), DaemonError> {
    let (Some(m), Some(broker)) = (&config.uplink.mqtt, &shared.uplink) else {
        return Ok(());
    };
    let rx = intake.stop_rx();
    let up =
        crate::mqtt::uplink::spawn(m.clone(), app.clone(), dispatch.clone(), broker.clone(), rx)
            .map_err(DaemonError::Uplink)?;
    intake.spawn(async move {
        let _ = up.await;
    });
    Ok(())
}

/// The dispatch loop, the Leap backstop and housekeeping, and the admin handler over them.
fn start_dispatch(
    app: &Arc<App>,
    shared: &Shared,
    parts: Parts,
    listen: SocketAddr,
    stages: &Stages,
) -> Arc<admin_handler::Handler> {
    let (live, status, changes) = (&shared.live, &shared.status, &shared.changes);
    let dispatcher = Dispatcher::new(
        live.get(),
        app.store.clone(),
        parts.commander,
        parts.clock.clone(),
    )
    .with_live_config(live.clone())
    .with_heartbeat(crate::systemd::watchdog_heartbeat());
    let dispatch = dispatcher.status();
    status.add(dispatch.clone());
    // Issue 13: the polling backstop (a no-op without [leap] api_key).
    // A weak handle: the App holds the backstop (as a status source), not the reverse.
    let weak = Arc::downgrade(app);
    let backstop = crate::leap::backstop::Backstop::new(
        live.clone(),
        app.store.clone(),
        changes.clone(),
        Arc::new(move || {
            weak.upgrade().map_or(0, |a| {
                a.metrics
                    .requests
                    .get(crate::metrics::RequestResult::StorageUnavailable)
            })
        }),
        {
            let uplink = shared.uplink.clone();
            Arc::new(move || uplink.as_ref().map_or(0, |b| b.new_sessions()))
        },
    );
    status.add(backstop.clone());
    stages
        .intake
        .spawn(backstop.clone().run(stages.intake.stop_rx()));
    let overrides = dispatcher.overrides();
    stages
        .dispatch
        .spawn(dispatcher.run(changes.subscribe(), stages.dispatch.stop_rx()));
    let hk = Arc::new(housekeeping::Housekeeping::default());
    status.add(hk.clone());
    stages
        .background
        .spawn(hk.clone().run(stages.background.stop_rx()));
    Arc::new(admin_handler::Handler {
        backstop,
        hk,
        app: app.clone(),
        config: live.clone(),
        changes: changes.clone(),
        dispatch,
        overrides,
        started_at: parts.clock.now(),
        listen,
        clock: parts.clock,
        live: parts.live,
        uplink: shared.uplink.clone(),
    })
}

/// The webhook listener and the loopback metrics listener, until the intake stage stops.
fn serve_http(
    app: &Arc<App>,
    (listener, metrics_listener): (tokio::net::TcpListener, tokio::net::TcpListener),
    tls: Option<Arc<server::tls::ReloadableTls>>,
    intake: &Stage,
) {
    intake.spawn(server::serve(
        metrics_listener,
        None,
        app.clone(),
        server::Role::Metrics,
        intake.stopped(),
    ));
    intake.spawn(server::serve(
        listener,
        tls,
        app.clone(),
        server::Role::Webhook,
        intake.stopped(),
    ));
}

/// `[schedule]`: the poll, pruning and the integrity check on their cron expressions; the
/// last two also run once at start, as they always have. A schedule that cannot start is
/// logged, not fatal: dispatch does not depend on housekeeping. The jobs hold only weak
/// handles: a job must never keep the database open past shutdown.
fn start_schedule(
    app: &Arc<App>,
    live: &SharedConfig,
    hk: &Arc<housekeeping::Housekeeping>,
    backstop: &Arc<crate::leap::backstop::Backstop>,
    background: &Stage,
) {
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
    background.spawn({
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
    if let Err(e) = schedule::start(jobs, background) {
        tracing::error!(error = %e, "housekeeping schedule not running");
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
    /// SIGHUP: the same reload as `leap-edge reload`, its outcome logged (no one to answer).
    async fn reload_on_hangup(&self) {
        tracing::info!(
            signal = "SIGHUP",
            "signal received: reloading the configuration"
        );
        let Some(handler) = self.reloader.upgrade() else {
            return;
        };
        let peer = crate::admin::Peer {
            signal: Some("SIGHUP"),
            ..Default::default()
        };
        let r = handler.reload(peer).await;
        if let Some(e) = r.error {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded");
        }
    }

    /// Add a part's `/metrics` and `/healthz` contribution (the control loops').
    pub(crate) fn add_status(&self, source: Arc<dyn crate::seam::StatusSource>) {
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
            self.stages.background.stop_rx(),
        );
        self.stages.background.spawn(task);
    }

    /// Where `run` puts its own background writers (control audit, limits).
    pub(crate) fn background(&self) -> &Stage {
        &self.stages.background
    }

    /// Tasks of the daemon not yet ended (0 after [`Running::stop_and_count`]).
    pub fn tasks_running(&self) -> usize {
        let s = &self.stages;
        s.intake.running() + s.dispatch.running() + s.background.running()
    }

    pub async fn stop(self) {
        self.stop_and_count().await;
    }

    /// Stop in order — intake, dispatch (which releases the batteries), background
    /// writers, then the database — and return how many tasks outlived their bound.
    pub async fn stop_and_count(self) -> usize {
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        self.stages.intake.stop(INTAKE_BOUND).await;
        self.stages.dispatch.stop(DISPATCH_BOUND).await;
        self.stages.background.stop(BACKGROUND_BOUND).await;
        let left = self.tasks_running();
        drop(self.app);
        // The writer thread ends (checkpointing the WAL) once the last handle is gone; it
        // is awaited, never joined on a runtime thread.
        if tokio::time::timeout(STORE_BOUND, self.store_thread.closed())
            .await
            .is_err()
        {
            tracing::error!("the database is still open after shutdown; a task holds it");
        } else {
            tracing::info!(tasks_left = left, "stopped cleanly");
        }
        left
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
    // Before anything that takes time (migrations after an upgrade, the first bindings):
    // a SIGHUP or SIGTERM meanwhile is kept for after the start, not the default action
    // that ends the process on the spot.
    let signals = Signals::new()?;
    // First, before binding anything: a second daemon on this database says so plainly.
    let _lock = crate::runlock::acquire(
        crate::runlock::Role::Gateway,
        &config.storage.path,
        config.source.as_deref(),
    )?;
    // What `config check` warns of, in the journal too: a site started with
    // `systemctl start` alone must still say that a device cannot revert by itself.
    for w in crate::preflight::warnings(&config) {
        tracing::warn!(warning = %w, "configuration");
    }
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
    let (store, background) = (running.app.store.clone(), running.background());
    background.spawn(control_audit::run(
        store.clone(),
        control.status(),
        background.token(),
    ));
    background.spawn(limits::watch(control.status(), store, background.token()));
    running.record_intervals(readings);
    // Type=notify: systemd counts the service as started only now, with the listener
    // bound and the database open.
    if let Err(e) = crate::systemd::notify_ready() {
        tracing::warn!(error = %e, "cannot tell systemd the daemon is ready");
    }
    wait_for_stop(&running, signals).await;
    let _ = crate::systemd::notify_stopping();
    running.stop().await;
    // Dispatch has released every meter; make sure the loops wrote it before exiting.
    control.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

/// The daemon's signal streams, taken at the very start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let take = |k| signal(k).map_err(DaemonError::Signals);
        Ok(Signals {
            term: take(SignalKind::terminate())?,
            int: take(SignalKind::interrupt())?,
            hup: take(SignalKind::hangup())?,
        })
    }
}

/// Until SIGTERM or SIGINT. SIGHUP reloads, as `leap-edge reload` and the relay do: its
/// default action ended the daemon on the spot, battery not handed back — a technician's
/// SSH session closing on a daemon run by hand sends exactly that.
async fn wait_for_stop(running: &Running, mut s: Signals) {
    loop {
        tokio::select! {
            _ = s.term.recv() => break tracing::info!(signal = "SIGTERM", "signal received"),
            _ = s.int.recv() => break tracing::info!(signal = "SIGINT", "signal received"),
            _ = s.hup.recv() => running.reload_on_hangup().await,
        }
    }
}
