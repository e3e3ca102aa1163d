//! `leap-edge sim`: a site simulator for tests, the default configuration and technicians'
//! dry runs. A Modbus TCP server presents a battery inverter and a site meter through a
//! SunSpec map (models 1, 103, 124, 704, 713, 203) at `base_address` on `unit_id`, with
//! physics on a 100 ms tick (see `physics` for the modes). Signs: model 103 W and 713 follow
//! the battery (discharge positive); model 203 W is the site's grid power, import positive
//! (the SunSpec meter convention).

mod cli;
mod load;
mod map;
mod meter_fault;
mod physics;
mod server;
mod victron;

pub(crate) use cli::run_cli;

pub(crate) use load::LoadProfile;
pub use meter_fault::{MeterFault, ScheduledFault};
pub use physics::{Mode, NormalMode};

use crate::config::SimConfig;
use chrono::{DateTime, Utc};
use map::Image;
use physics::Physics;
use serde::Serialize;
use server::{KillableStream, Killer, SimService};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim.load = \"{spec}\": {reason}")]
    Load { spec: String, reason: String },
    #[error("sim.pv = \"{spec}\": {reason}")]
    Pv { spec: String, reason: String },
    #[error("sim.meter_fault = \"{spec}\": {reason}")]
    MeterFault { spec: String, reason: String },
    #[error("sim: {what} = {value} is out of range ({expected})")]
    Config {
        what: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("sim: cannot listen on {addr}: {source} (is another simulator running? use --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sim: {0}")]
    Io(#[from] std::io::Error),
}

/// Faults tests switch on to see the driver cope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    #[default]
    None,
    /// Live connections are dropped and new ones closed at once.
    Offline,
    /// Connections stay open but no request is ever answered.
    Silent,
    /// Every write gets exception 0x04 (server device failure).
    RejectWrites,
    /// Writes are acknowledged but not stored (read-back then differs).
    IgnoreWrites,
    /// A write closes the connection without an answer.
    DropOnWrite,
    /// Writes of a power setpoint (124 `OutWRte`/`InWRte`, 704 `WSet`) get exception 0x03
    /// (illegal data value); every other write is stored: a device refusing the value.
    RejectPowerWrites,
    /// Reads of the site meter's energy counters (203 `TotWhImp`/`TotWhExp`) get exception
    /// 0x02: a meter without them at that address.
    RejectCounterReads,
}

/// What the simulated site is doing now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub soc_pct: f64,
    /// Positive = discharge.
    pub battery_kw: f64,
    pub target_kw: f64,
    /// Positive = import.
    pub grid_kw: f64,
    pub(crate) load_kw: f64,
    pub(crate) pv_kw: f64,
    pub mode: Mode,
    pub(crate) last_command_at: Option<DateTime<Utc>>,
    pub reversions: u64,
    pub writes: u64,
    pub requests: u64,
    pub(crate) fault: Fault,
    /// The site-meter fault in force now, if any.
    pub(crate) meter_fault: Option<MeterFault>,
}

pub(crate) struct SimInner {
    image: Image,
    physics: Physics,
    load: LoadProfile,
    load_override: Option<f64>,
    pv: LoadProfile,
    pv_override: Option<f64>,
    meter_fault: Option<ScheduledFault>,
    started: Instant,
    fault: Fault,
    unit: u8,
    last_command_at: Option<DateTime<Utc>>,
    writes: u64,
    requests: u64,
    /// Every answer waits this long (a slow device or Modbus gateway).
    latency: std::time::Duration,
    victron: Option<victron::VictronImage>,
}

/// Which control models the simulated inverter offers (both by default).
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    pub model_124: bool,
    pub model_704: bool,
    /// Also answer on unit 100 as a Victron GX in ESS mode 2 (see `victron`).
    pub victron: bool,
    pub tick: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            model_124: true,
            model_704: true,
            victron: false,
            tick: Duration::from_millis(100),
        }
    }
}

/// A running simulator. Dropping it stops the server and the physics.
pub struct SimHandle {
    inner: Arc<Mutex<SimInner>>,
    killer: Arc<Killer>,
    tasks: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

fn check_cfg(cfg: &SimConfig) -> Result<(), SimError> {
    let checks: [(&'static str, f64, bool, &'static str); 4] = [
        (
            "capacity_kwh",
            cfg.capacity_kwh,
            cfg.capacity_kwh > 0.0 && cfg.capacity_kwh <= 1e6,
            "> 0",
        ),
        (
            "max_power_kw",
            cfg.max_power_kw,
            cfg.max_power_kw > 0.0 && cfg.max_power_kw <= 1e5,
            "> 0",
        ),
        (
            "initial_soc_pct",
            cfg.initial_soc_pct,
            (0.0..=100.0).contains(&cfg.initial_soc_pct),
            "0..=100",
        ),
        (
            "ramp_kw_per_s",
            cfg.ramp_kw_per_s,
            cfg.ramp_kw_per_s > 0.0,
            "> 0",
        ),
    ];
    for (what, value, ok, expected) in checks {
        if !ok || !value.is_finite() {
            return Err(SimError::Config {
                what,
                value,
                expected,
            });
        }
    }
    Ok(())
}

fn build(cfg: &SimConfig, opts: SimOptions) -> Result<SimInner, SimError> {
    check_cfg(cfg)?;
    let load = LoadProfile::parse(&cfg.load)?;
    let pv = LoadProfile::parse(&cfg.pv).map_err(|e| match e {
        SimError::Load { spec, reason } => SimError::Pv { spec, reason },
        e => e,
    })?;
    let meter_fault = cfg
        .meter_fault
        .as_deref()
        .map(ScheduledFault::parse)
        .transpose()?;
    let max_site_kw = load.max_kw() + pv.max_kw() + cfg.max_power_kw;
    let mut img = Image::initial(cfg, opts, max_site_kw);
    let physics = Physics::initial(cfg, load.at(0.0), pv.at(0.0).max(0.0));
    physics.publish(&mut img);
    Ok(SimInner {
        image: img,
        physics,
        load,
        load_override: None,
        pv,
        pv_override: None,
        meter_fault,
        started: Instant::now(),
        fault: Fault::None,
        unit: cfg.unit_id,
        last_command_at: None,
        writes: 0,
        requests: 0,
        latency: std::time::Duration::ZERO,
        victron: opts.victron.then(victron::VictronImage::default),
    })
}

impl SimInner {
    fn active_meter_fault(&self) -> Option<MeterFault> {
        let secs = self.started.elapsed().as_secs_f64();
        self.meter_fault
            .filter(|f| secs >= f.from_secs)
            .map(|f| f.fault)
    }
}

/// Start the simulator on `listener` (tasks on the current tokio runtime).
pub fn spawn(cfg: &SimConfig, listener: TcpListener) -> Result<SimHandle, SimError> {
    spawn_with(cfg, listener, SimOptions::default())
}

pub fn spawn_with(
    cfg: &SimConfig,
    listener: TcpListener,
    opts: SimOptions,
) -> Result<SimHandle, SimError> {
    let addr = listener.local_addr()?;
    let inner = Arc::new(Mutex::new(build(cfg, opts)?));
    let killer = Arc::new(Killer::default());
    let ticker = tokio::spawn(tick_loop(inner.clone(), opts.tick));
    let server = tokio::spawn(serve_modbus(listener, inner.clone(), killer.clone()));
    tracing::info!(%addr, unit = cfg.unit_id, base = cfg.base_address, "site simulator listening");
    Ok(SimHandle {
        inner,
        killer,
        tasks: vec![ticker, server],
        addr,
    })
}

async fn tick_loop(inner: Arc<Mutex<SimInner>>, tick: Duration) {
    let mut iv = tokio::time::interval(tick);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        iv.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let Ok(mut s) = inner.lock() else { return };
        let s = &mut *s;
        let secs = now.duration_since(s.started).as_secs_f64();
        s.physics.load_kw = s.load_override.unwrap_or_else(|| s.load.at(secs));
        s.physics.pv_kw = s.pv_override.unwrap_or_else(|| s.pv.at(secs)).max(0.0);
        let sp = s.victron.as_ref().map(|v| v.setpoint_kw());
        s.physics.step(&mut s.image, now, dt, sp);
        s.physics.publish(&mut s.image);
        if let Some(MeterFault::Value(kw)) = s.active_meter_fault() {
            s.image.set(203, "W", kw * 1000.0);
        }
        if let Some(v) = s.victron.as_mut() {
            v.publish(&s.physics);
        }
    }
}

async fn serve_modbus(listener: TcpListener, inner: Arc<Mutex<SimInner>>, killer: Arc<Killer>) {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: tokio::net::TcpStream, _peer: SocketAddr| {
        let inner = inner.clone();
        let killer = killer.clone();
        async move {
            let offline = inner
                .lock()
                .map(|s| s.fault == Fault::Offline)
                .unwrap_or(true);
            if offline {
                return Ok(None);
            }
            let own = Arc::new(AtomicBool::new(false));
            let service = SimService {
                inner,
                own: own.clone(),
            };
            Ok(Some((service, KillableStream::new(stream, killer, own))))
        }
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "sim: connection ended");
    if let Err(e) = server.serve(&on_connected, on_error).await {
        tracing::error!(error = %e, "sim: Modbus server stopped");
    }
}

impl SimHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.inner.lock().expect("sim state");
        Snapshot {
            soc_pct: s.physics.soc_pct,
            battery_kw: s.physics.battery_kw,
            target_kw: s.physics.target_kw,
            grid_kw: s.physics.grid_kw(),
            load_kw: s.physics.load_kw,
            pv_kw: s.physics.pv_kw,
            mode: s.physics.mode,
            last_command_at: s.last_command_at,
            reversions: s.physics.reversions,
            writes: s.writes,
            requests: s.requests,
            fault: s.fault,
            meter_fault: s.active_meter_fault(),
        }
    }

    /// Start a site-meter fault now (`None`: the meter answers again).
    pub fn set_meter_fault(&self, fault: Option<MeterFault>) {
        let mut s = self.inner.lock().expect("sim state");
        let from_secs = s.started.elapsed().as_secs_f64();
        s.meter_fault = fault.map(|fault| ScheduledFault { fault, from_secs });
    }

    /// Override the load profile (`None`: back to the profile).
    pub fn set_load(&self, kw: Option<f64>) {
        self.inner.lock().expect("sim state").load_override = kw;
    }

    pub fn set_soc(&self, pct: f64) {
        self.inner.lock().expect("sim state").physics.soc_pct = pct.clamp(0.0, 100.0);
    }

    /// Answer every request this much later (a slow device or Modbus gateway).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.inner.lock().expect("sim state").latency = latency;
    }

    pub fn set_fault(&self, fault: Fault) {
        self.inner.lock().expect("sim state").fault = fault;
        if matches!(fault, Fault::Offline) {
            self.killer.kill_all();
        }
    }

    /// Change a SunSpec scale factor live (`W_SF` of model 203, ...), the values it scales
    /// kept: a device re-ranging its measurements.
    pub fn set_scale_factor(&self, model: u16, name: &str, sf: i16) {
        self.inner
            .lock()
            .expect("sim state")
            .image
            .rescale(model, name, sf);
    }

    /// A SunSpec point as the device holds it (scale factor applied); `None` if the model
    /// is absent.
    pub fn point(&self, model: u16, name: &str) -> Option<f64> {
        self.inner.lock().expect("sim state").image.get(model, name)
    }

    /// Raw registers at `addr`.
    pub fn registers(&self, addr: u16, count: u16) -> Option<Vec<u16>> {
        self.inner
            .lock()
            .expect("sim state")
            .image
            .read(addr, count)
    }

    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.killer.kill_all();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
