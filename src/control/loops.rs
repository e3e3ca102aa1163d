//! [`ControlCommander`]: the [`Commander`] that drives real batteries. It starts one
//! control loop per configured meter and hands each its commands through a watch
//! channel; `apply`/`release` wait (bounded) for the loop's first outcome so dispatch can
//! audit a failure, while the loop keeps retrying regardless.

use super::law::Limits;
use super::meter_loop::{Channels, Desired, LoopSettings, MeterLoop, Outcome, Request};
use super::status::ControlStatus;
use crate::clock::Clock;
use crate::config::{Config, DeviceConfig};
use crate::device::{Battery, DeviceError};
use crate::dispatch::{CommandError, Commander};
use crate::model::Command;
use crate::seam::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long `apply`/`release` wait for the loop's first outcome by default.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("meter {meter}: device \"{device}\" is not configured")]
    UnknownDevice { meter: String, device: String },
    #[error(
        "devices.{device} serves meters {first} and {second}: one battery can follow only \
         one meter's command; give each meter its own device"
    )]
    SharedDevice {
        device: String,
        first: String,
        second: String,
    },
    #[error(
        "site.control_period_ms = {period_ms} is longer than half of devices.{device}.reversion_secs \
         = {reversion_secs}: the command could not be refreshed before the device reverts \
         (SPEC §2.10); shorten the period or lengthen the reversion timeout"
    )]
    PeriodTooLong {
        device: String,
        period_ms: u64,
        reversion_secs: u32,
    },
    #[error("meter {meter}: cannot open device: {source}")]
    Open { meter: String, source: DeviceError },
}

/// Configuration problems the control loop cannot run with, worded for `config check`.
/// One loop per meter owns its battery: two meters on one device would fight over it; and
/// the loop must be able to refresh a command before the device reverts it.
pub fn check_meters(config: &Config) -> Vec<String> {
    control_problems(config)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn control_problems(config: &Config) -> Vec<ControlError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let mut problems = Vec::new();
    for m in &config.meters {
        let period_ms = config.site.control_period_ms;
        if let Some(d) = config.devices.get(&m.device)
            && period_ms > u64::from(d.reversion_secs) * 500
            && !seen.contains_key(m.device.as_str())
        {
            problems.push(ControlError::PeriodTooLong {
                device: m.device.clone(),
                period_ms,
                reversion_secs: d.reversion_secs,
            });
        }
        if let Some(first) = seen.insert(&m.device, &m.id) {
            problems.push(ControlError::SharedDevice {
                device: m.device.clone(),
                first: first.to_string(),
                second: m.id.clone(),
            });
        }
    }
    problems
}

struct MeterHandle {
    device: String,
    requests: watch::Sender<Request>,
    outcomes: watch::Receiver<Outcome>,
    /// Serialises apply/release on one meter so each waits for its own outcome.
    turn: tokio::sync::Mutex<()>,
}

pub struct ControlCommander {
    meters: BTreeMap<String, MeterHandle>,
    seq: AtomicU64,
    shutdown: watch::Sender<Option<Duration>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    status: ControlStatus,
    apply_timeout: Duration,
    readings: tokio::sync::broadcast::Sender<crate::intervals::MeterReading>,
}

/// Beyond a loop's own stop bound: the device call it may be in when asked to stop.
pub(super) const SHUTDOWN_MARGIN: Duration = Duration::from_secs(3);

impl ControlCommander {
    /// Open every meter's device with `open(name, device_config)` and start its loop.
    /// Must be called inside a tokio runtime.
    pub fn start<F>(
        config: &Config,
        clock: Arc<dyn Clock>,
        mut open: F,
    ) -> Result<ControlCommander, ControlError>
    where
        F: FnMut(&str, &DeviceConfig) -> Result<Box<dyn Battery>, DeviceError>,
    {
        if let Some(problem) = control_problems(config).into_iter().next() {
            return Err(problem);
        }
        // Open every device before starting any loop, so a failure leaves nothing running.
        let mut opened = Vec::new();
        for m in &config.meters {
            let Some(dev) = config.devices.get(&m.device) else {
                return Err(ControlError::UnknownDevice {
                    meter: m.id.clone(),
                    device: m.device.clone(),
                });
            };
            let battery = open(&m.device, dev).map_err(|source| ControlError::Open {
                meter: m.id.clone(),
                source,
            })?;
            let settings = LoopSettings {
                meter_id: m.id.clone(),
                device: m.device.clone(),
                period: Duration::from_millis(config.site.control_period_ms.max(1)),
                reversion_secs: dev.reversion_secs,
                site: config.site.clone(),
                nameplate: Limits {
                    max_discharge_kw: dev.max_discharge_kw,
                    max_charge_kw: dev.max_charge_kw,
                    capacity_kwh: dev.capacity_kwh,
                },
            };
            // Issue 9: shown in status, so nobody relies on a reversion that is not there.
            let profile = config.devices_dir.join(format!("{}.toml", dev.profile));
            let no_reversion =
                crate::device::profile::load(&profile).is_ok_and(|p| !p.reverts_by_itself());
            opened.push((settings, battery, no_reversion));
        }
        let mut cc = ControlCommander {
            meters: BTreeMap::new(),
            seq: AtomicU64::new(0),
            shutdown: watch::channel(None).0,
            tasks: std::sync::Mutex::new(Vec::new()),
            status: ControlStatus::default(),
            apply_timeout: DEFAULT_APPLY_TIMEOUT,
            // Room for a few seconds of readings from every meter while the recorder writes.
            readings: tokio::sync::broadcast::channel(1024).0,
        };
        for (settings, battery, no_reversion) in opened {
            cc.spawn_loop(settings, battery, clock.clone(), no_reversion);
        }
        Ok(cc)
    }

    fn spawn_loop(
        &mut self,
        settings: LoopSettings,
        battery: Box<dyn Battery>,
        clock: Arc<dyn Clock>,
        no_reversion: bool,
    ) {
        let (req_tx, req_rx) = watch::channel(Request {
            seq: 0,
            desired: Desired::Normal,
        });
        let (out_tx, out_rx) = watch::channel(Outcome {
            seq: 0,
            result: Ok(()),
        });
        let channels = Channels {
            requests: req_rx,
            outcomes: out_tx,
            shutdown: self.shutdown.subscribe(),
            readings: self.readings.clone(),
        };
        let (id, device) = (settings.meter_id.clone(), settings.device.clone());
        let st = self.status.add(&id, &device);
        st.lock().expect("meter status lock").no_reversion = no_reversion;
        let lp = MeterLoop::new(settings, battery, clock, channels, st);
        let task = tokio::spawn(lp.run());
        self.tasks.lock().expect("tasks lock").push(task);
        let handle = MeterHandle {
            device,
            requests: req_tx,
            outcomes: out_rx,
            turn: tokio::sync::Mutex::new(()),
        };
        self.meters.insert(id, handle);
    }

    /// [`ControlCommander::start`] over the Modbus driver and the profiles in
    /// `config.devices_dir` (what the daemon runs).
    pub fn start_modbus(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> Result<ControlCommander, ControlError> {
        let dir = config.devices_dir.clone();
        ControlCommander::start(config, clock, |name, dev| {
            Ok(Box::new(crate::device::open(name, dev, &dir)?) as Box<dyn Battery>)
        })
    }

    /// Every meter's readings as the loops take them (issue 14: the interval recorder).
    pub fn readings(&self) -> tokio::sync::broadcast::Receiver<crate::intervals::MeterReading> {
        self.readings.subscribe()
    }

    /// A cloneable view of every meter's loop (also a `/metrics` and `/healthz` source).
    pub fn status(&self) -> ControlStatus {
        self.status.clone()
    }

    /// SPEC §2.10 shutdown: every loop releases its battery (each bounded by `limit`)
    /// and exits. Returns when all loops have stopped or `limit` (plus a margin) passed.
    pub async fn shutdown(&self, limit: Duration) {
        self.shutdown.send_replace(Some(limit));
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_join(tasks);
        // Each loop's own bound starts after the device call it is in, so the wait here
        // allows for one such call more.
        if tokio::time::timeout(limit + SHUTDOWN_MARGIN, all)
            .await
            .is_err()
        {
            // A loop stuck in a device call: the device reverts by its own timeout (or the
            // unit's ExecStopPost release, for one that cannot).
            let left: Vec<String> = self
                .status
                .snapshot()
                .into_iter()
                .filter(|m| !m.released)
                .map(|m| format!("{} (device {})", m.meter_id, m.device))
                .collect();
            tracing::error!(
                timeout_ms = (limit + SHUTDOWN_MARGIN).as_millis() as u64,
                not_released = %left.join(", "),
                "control: loops did not stop in time at shutdown; abandoning them (`leap-edge release` hands those batteries back)"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    async fn request(&self, meter: &str, desired: Desired) -> Result<(), CommandError> {
        let Some(h) = self.meters.get(meter) else {
            return Err(CommandError::UnknownMeter {
                meter: meter.to_string(),
            });
        };
        let _turn = h.turn.lock().await;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        h.requests.send_replace(Request { seq, desired });
        let mut rx = h.outcomes.clone();
        let fail = |reason: String| CommandError::Device {
            meter: meter.to_string(),
            device: h.device.clone(),
            reason,
        };
        let waited = tokio::time::timeout(self.apply_timeout, rx.wait_for(|o| o.seq >= seq)).await;
        match waited {
            Ok(Ok(o)) => o.result.clone().map_err(fail),
            Ok(Err(_)) => Err(fail("the control loop has stopped".into())),
            Err(_) => Err(fail(format!(
                "no answer within {} ms; the control loop keeps retrying",
                self.apply_timeout.as_millis()
            ))),
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Commander for ControlCommander {
    fn apply<'a>(
        &'a self,
        meter: &'a str,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(self.request(meter, Desired::Follow(command.clone())))
    }

    fn release<'a>(&'a self, meter: &'a str) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(self.request(meter, Desired::Normal))
    }
}
