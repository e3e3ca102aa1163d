//! The simulator's Modbus TCP side (tokio-modbus server): reads from the register image,
//! writes only to writable SunSpec points and within their ranges (else a Modbus
//! exception, as a real inverter answers), and the fault switches tests use: offline,
//! silent, writes rejected, writes ignored, connection dropped on write.

use super::{Fault, MeterFault, SimInner, victron};
use chrono::Utc;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};

/// Ends every live connection at once (device going offline, shutdown).
#[derive(Default)]
pub(crate) struct Killer {
    epoch: AtomicU64,
    notify: Arc<Notify>,
}

impl Killer {
    pub(crate) fn kill_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A TCP stream that fails as soon as it is killed, so tokio-modbus's per-connection task
/// ends and closes the socket.
pub(crate) struct KillableStream {
    inner: TcpStream,
    own: Arc<AtomicBool>,
    killer: Arc<Killer>,
    epoch: u64,
    notified: Pin<Box<OwnedNotified>>,
}

impl KillableStream {
    pub(crate) fn new(inner: TcpStream, killer: Arc<Killer>, own: Arc<AtomicBool>) -> Self {
        // Created before reading the epoch: a kill in between is still seen.
        let notified = Box::pin(killer.notify.clone().notified_owned());
        let epoch = killer.epoch.load(Ordering::SeqCst);
        KillableStream {
            inner,
            own,
            killer,
            epoch,
            notified,
        }
    }

    fn dead(&mut self, cx: &mut Context<'_>) -> bool {
        if self.own.load(Ordering::SeqCst) || self.killer.epoch.load(Ordering::SeqCst) != self.epoch
        {
            return true;
        }
        self.notified.as_mut().poll(cx).is_ready()
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "simulated device dropped the connection",
    )
}

impl std::fmt::Debug for KillableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillableStream").finish_non_exhaustive()
    }
}

use std::future::Future;

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.dead(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.dead(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) struct SimService {
    pub(crate) inner: Arc<Mutex<SimInner>>,
    pub(crate) own: Arc<AtomicBool>,
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let answer = self.handle(req);
        let latency = self.inner.lock().map(|s| s.latency).unwrap_or_default();
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer
        })
    }
}

impl SimService {
    fn handle(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        s.requests += 1;
        if s.fault == Fault::Silent {
            return Ok(None);
        }
        if req.slave == victron::UNIT && s.victron.is_some() && s.unit != victron::UNIT {
            return self.victron(&mut s, req.request);
        }
        if req.slave != s.unit {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        match req.request {
            Request::ReadHoldingRegisters(a, n)
                if s.fault == Fault::RejectCounterReads
                    && (s.image.overlaps(203, "TotWhImp", a, n)
                        || s.image.overlaps(203, "TotWhExp", a, n)) =>
            {
                Err(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadHoldingRegisters(a, n) if s.image.overlaps(203, "W", a, n) => {
                match s.active_meter_fault() {
                    Some(MeterFault::Exception(code)) => Err(ExceptionCode::new(code)),
                    Some(MeterFault::Timeout) => Ok(None),
                    _ => s
                        .image
                        .read(a, n)
                        .map(|w| Some(Response::ReadHoldingRegisters(w)))
                        .ok_or(ExceptionCode::IllegalDataAddress),
                }
            }
            Request::ReadHoldingRegisters(a, n) => s
                .image
                .read(a, n)
                .map(|w| Some(Response::ReadHoldingRegisters(w)))
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(a, v) => self
                .write(&mut s, a, &[v])?
                .map_or(Ok(None), |()| Ok(Some(Response::WriteSingleRegister(a, v)))),
            Request::WriteMultipleRegisters(a, words) => {
                let n = words.len() as u16;
                self.write(&mut s, a, &words)?.map_or(Ok(None), |()| {
                    Ok(Some(Response::WriteMultipleRegisters(a, n)))
                })
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn victron(
        &self,
        s: &mut SimInner,
        req: Request<'static>,
    ) -> Result<Option<Response>, ExceptionCode> {
        let v = s
            .victron
            .as_mut()
            .ok_or(ExceptionCode::GatewayTargetDevice)?;
        match req {
            Request::ReadHoldingRegisters(a, n) => v
                .read(a, n)
                .map(|w| Some(Response::ReadHoldingRegisters(w)))
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(a, w) => {
                if !v.write(a, &[w]) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                s.last_command_at = Some(Utc::now());
                s.writes += 1;
                Ok(Some(Response::WriteSingleRegister(a, w)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// `Ok(None)`: no answer (the connection is being dropped).
    fn write(
        &self,
        s: &mut SimInner,
        addr: u16,
        words: &[u16],
    ) -> Result<Option<()>, ExceptionCode> {
        match s.fault {
            Fault::RejectWrites => return Err(ExceptionCode::ServerDeviceFailure),
            Fault::DropOnWrite => {
                self.own.store(true, Ordering::SeqCst);
                return Ok(None);
            }
            _ => {}
        }
        let mut models = Vec::new();
        for i in 0..words.len() as u16 {
            let p = s
                .image
                .writable_point_at(addr.wrapping_add(i))
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            if s.fault == Fault::RejectPowerWrites && POWER_POINTS.contains(&p.name) {
                return Err(ExceptionCode::IllegalDataValue);
            }
            models.push(p.model);
        }
        if s.fault == Fault::IgnoreWrites {
            return Ok(Some(()));
        }
        let old = s
            .image
            .read(addr, words.len() as u16)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        s.image.write_raw(addr, words);
        if !valid(s) {
            s.image.write_raw(addr, &old);
            return Err(ExceptionCode::IllegalDataValue);
        }
        let now = Instant::now();
        if models.contains(&124) {
            s.physics.last_124_write = Some(now);
        }
        if models.contains(&704) {
            s.physics.last_704_write = Some(now);
        }
        s.last_command_at = Some(Utc::now());
        s.writes += 1;
        Ok(Some(()))
    }
}

/// The setpoints [`Fault::RejectPowerWrites`] refuses.
const POWER_POINTS: [&str; 3] = ["OutWRte", "InWRte", "WSet"];

/// Values a real inverter would refuse.
fn valid(s: &SimInner) -> bool {
    let img = &s.image;
    let pct_ok = |p: &str| {
        img.get(124, p)
            .is_none_or(|v| (-100.0..=100.0).contains(&v))
    };
    img.raw(124, "StorCtl_Mod")
        .is_none_or(|b| (0..=3).contains(&b))
        && pct_ok("OutWRte")
        && pct_ok("InWRte")
        && img
            .get(704, "WSetPct")
            .is_none_or(|v| (-100.0..=100.0).contains(&v))
        && img.raw(704, "WSetEna").is_none_or(|v| v <= 1)
        && img.raw(704, "WSetMod").is_none_or(|v| v <= 1)
        && img
            .get(704, "WSet")
            .is_none_or(|w| w.abs() <= s.physics.max_kw * 1000.0 * 1.5)
}
