//! One Modbus TCP connection to one device, with the house rules built in: every call
//! (connect, read, write) under the device's timeout; after a timeout or an I/O error the
//! connection is dropped (a late reply would otherwise be taken as the answer to the next
//! request) and re-opened on the next call, with a growing pause between failed connects.
//! The per-device state (connected, last error, last good read) is shared for status and
//! metrics.

use super::DeviceError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

/// Which Modbus table a register lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Function {
    #[default]
    Holding,
    Input,
}

/// What status and metrics show about a device.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DeviceState {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) unit_id: u8,
    pub(crate) profile: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Last successful read of any register.
    pub(crate) last_ok_at: Option<DateTime<Utc>>,
    pub error_count: u64,
    pub connects: u64,
    /// What the driver found on the device: SunSpec base address and model ids.
    pub sunspec_base: Option<u16>,
    pub models: Vec<u16>,
    /// The control method in use (a profile `[[control]]` label) and the points read.
    pub control: Option<String>,
    pub points: Vec<String>,
}

pub(crate) type SharedState = Arc<Mutex<DeviceState>>;

/// One block per device for `leap-edge devices`.
impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = |t: &Option<DateTime<Utc>>| {
            t.map_or("never".to_string(), |t| {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            })
        };
        writeln!(
            f,
            "{} ({}, unit {}, profile {}): {}",
            self.name,
            self.addr,
            self.unit_id,
            self.profile,
            if self.connected {
                "connected"
            } else {
                "NOT connected"
            }
        )?;
        writeln!(f, "  last good read: {}", when(&self.last_ok_at))?;
        if let Some(e) = &self.last_error {
            writeln!(f, "  last error ({}): {e}", when(&self.last_error_at))?;
        }
        writeln!(
            f,
            "  errors: {}  connects: {}",
            self.error_count, self.connects
        )?;
        if let Some(b) = self.sunspec_base {
            let models: Vec<String> = self.models.iter().map(u16::to_string).collect();
            writeln!(f, "  SunSpec map at {b}: models {}", models.join(", "))?;
        }
        writeln!(
            f,
            "  control: {}",
            self.control.as_deref().unwrap_or("none usable")
        )?;
        if !self.points.is_empty() {
            writeln!(f, "  points: {}", self.points.join(", "))?;
        }
        Ok(())
    }
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub(crate) struct ModbusClient {
    device: String,
    addr: String,
    unit: u8,
    timeout: Duration,
    ctx: Option<Context>,
    failed_connects: u32,
    next_attempt: Option<Instant>,
    /// Why the last connect failed (a back-off error says it, not only that it waits).
    last_connect_error: Option<String>,
    /// Bumped on every new connection, so callers can redo discovery after a reconnect.
    generation: u64,
    state: SharedState,
    /// Register spans (unit, first, count) this connection's device refused to read in
    /// one request: read apart from then on, not refused (and logged) every period.
    refused_spans: std::collections::HashSet<(Option<u8>, u16, u16)>,
}

impl ModbusClient {
    pub(crate) fn new(device: &str, addr: &str, unit: u8, timeout: Duration) -> Self {
        let state = DeviceState {
            name: device.to_string(),
            addr: addr.to_string(),
            unit_id: unit,
            ..DeviceState::default()
        };
        ModbusClient {
            device: device.to_string(),
            addr: addr.to_string(),
            unit,
            timeout,
            ctx: None,
            failed_connects: 0,
            next_attempt: None,
            last_connect_error: None,
            generation: 0,
            state: Arc::new(Mutex::new(state)),
            refused_spans: std::collections::HashSet::new(),
        }
    }

    /// Whether this device refused reading this span in one request since it connected.
    pub(crate) fn refused_span(&self, unit: Option<u8>, addr: u16, count: u16) -> bool {
        self.refused_spans.contains(&(unit, addr, count))
    }

    pub(crate) fn note_refused_span(&mut self, unit: Option<u8>, addr: u16, count: u16) {
        self.refused_spans.insert((unit, addr, count));
    }

    pub(crate) fn state(&self) -> SharedState {
        self.state.clone()
    }

    pub(crate) fn device(&self) -> &str {
        &self.device
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.ctx.is_some()
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    fn with_state(&self, f: impl FnOnce(&mut DeviceState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    fn record_error(&self, e: &DeviceError) {
        let msg = e.to_string();
        let connected = self.ctx.is_some();
        self.with_state(|s| {
            s.connected = connected;
            s.last_error = Some(msg);
            s.last_error_at = Some(Utc::now());
            s.error_count += 1;
        });
    }

    /// Forget the connection; the next call opens a new one.
    pub(crate) fn drop_connection(&mut self) {
        self.ctx = None;
        self.with_state(|s| s.connected = false);
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        if let Some(at) = self.next_attempt
            && Instant::now() < at
        {
            let wait = at - Instant::now();
            return Err(DeviceError::Connect {
                device: self.device.clone(),
                addr: self.addr.clone(),
                reason: format!(
                    "waiting {} ms before the next attempt after {} failed connect(s), the last: {}",
                    wait.as_millis(),
                    self.failed_connects,
                    self.last_connect_error.as_deref().unwrap_or("?")
                ),
            });
        }
        match try_connect(self.addr.clone(), self.unit, self.timeout).await {
            Ok(ctx) => {
                self.ctx = Some(ctx);
                self.failed_connects = 0;
                self.next_attempt = None;
                self.generation += 1;
                self.refused_spans.clear();
                self.with_state(|s| {
                    s.connected = true;
                    s.connects += 1;
                });
                tracing::info!(device = %self.device, addr = %self.addr, "modbus connected");
                Ok(())
            }
            Err(reason) => {
                self.failed_connects += 1;
                let pause = BACKOFF_START
                    .saturating_mul(1 << self.failed_connects.min(8).saturating_sub(1))
                    .min(BACKOFF_MAX);
                self.next_attempt = Some(Instant::now() + pause);
                self.last_connect_error = Some(reason.clone());
                Err(DeviceError::Connect {
                    device: self.device.clone(),
                    addr: self.addr.clone(),
                    reason,
                })
            }
        }
    }

    /// Run one request on the live connection (connecting first if needed).
    async fn call<T>(
        &mut self,
        op: String,
        unit: Option<u8>,
        req: impl AsyncFnOnce(&mut Context) -> tokio_modbus::Result<T>,
    ) -> Result<T, DeviceError> {
        if self.ctx.is_none()
            && let Err(e) = self.connect().await
        {
            self.record_error(&e);
            return Err(e);
        }
        let dur = self.timeout;
        let ctx = self.ctx.as_mut().expect("connected above");
        use tokio_modbus::slave::SlaveContext;
        ctx.set_slave(Slave(unit.unwrap_or(self.unit)));
        let outcome = timeout(dur, req(ctx)).await;
        let err = match outcome {
            Ok(Ok(Ok(v))) => return Ok(v),
            Ok(Ok(Err(code))) => DeviceError::Exception {
                device: self.device.clone(),
                op,
                code: exception_name(code),
            },
            Ok(Err(e)) => {
                self.drop_connection();
                DeviceError::Io {
                    device: self.device.clone(),
                    op,
                    reason: e.to_string(),
                }
            }
            Err(_) => {
                self.drop_connection();
                DeviceError::Timeout {
                    device: self.device.clone(),
                    op,
                    ms: self.timeout_ms(),
                }
            }
        };
        tracing::warn!(device = %self.device, error = %err, "modbus call failed");
        self.record_error(&err);
        Err(err)
    }

    pub(crate) async fn read(
        &mut self,
        unit: Option<u8>,
        function: Function,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        let op = format!("read {count} {function:?} register(s) at {addr}");
        let words = match function {
            Function::Holding => {
                self.call(op, unit, async |c| {
                    c.read_holding_registers(addr, count).await
                })
                .await?
            }
            Function::Input => {
                self.call(op, unit, async |c| {
                    c.read_input_registers(addr, count).await
                })
                .await?
            }
        };
        if words.len() != count as usize {
            self.drop_connection();
            return Err(DeviceError::Io {
                device: self.device.clone(),
                op: format!("read {count} register(s) at {addr}"),
                reason: format!("got {} registers", words.len()),
            });
        }
        self.with_state(|s| {
            s.connected = true;
            s.last_ok_at = Some(Utc::now());
        });
        Ok(words)
    }

    /// One register: function 6; more: function 16.
    pub(crate) async fn write(
        &mut self,
        unit: Option<u8>,
        addr: u16,
        words: &[u16],
    ) -> Result<(), DeviceError> {
        let op = format!("write {words:?} at {addr}");
        let owned = words.to_vec();
        if owned.len() == 1 {
            self.call(op, unit, async |c| {
                c.write_single_register(addr, owned[0]).await
            })
            .await
        } else {
            self.call(op, unit, async |c| {
                c.write_multiple_registers(addr, &owned).await
            })
            .await
        }
    }
}

/// Free function (not a method) so the future holds no `&ModbusClient`, whose Modbus
/// context is not `Sync`.
async fn try_connect(addr: String, unit: u8, dur: Duration) -> Result<Context, String> {
    let ms = dur.as_millis();
    let addrs = timeout(dur, tokio::net::lookup_host(addr.as_str()))
        .await
        .map_err(|_| format!("name lookup timed out after {ms} ms"))?
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let mut last = "no address".to_string();
    for sa in addrs {
        match timeout(dur, tcp::connect_slave(sa, Slave(unit))).await {
            Ok(Ok(ctx)) => return Ok(ctx),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("connect timed out after {ms} ms"),
        }
    }
    Err(last)
}

pub(crate) fn exception_name(code: ExceptionCode) -> String {
    let n: u8 = code.into();
    format!("0x{n:02X} ({code:?})")
}
