//! Modbus faults in one run (issue 6), twice: at the driver level (`device::open`, the
//! test re-sends like a control loop would) and through the closed control loop
//! (`ControlCommander`, which must keep the timeslot's command on the device by itself).
//! Both talk to the SunSpec simulator over real TCP through a proxy the test controls, to
//! make answers slow and to turn live connections into half-open ones (silent, never
//! closed). In sequence:
//! 1. answers at half the timeout: every operation still succeeds, no reconnect;
//! 2. answers slower than the timeout: a Timeout error, then recovery when speed returns;
//! 3. half-open connection: the driver times out, drops it, reconnects, command taken;
//! 4. device restart in the middle of a timeslot: the restarted device (fresh state, same
//!    address) gets the command again and is finally released.

use crate::device_common;

use device_common::*;
use leap_edge::clock::SystemClock;
use leap_edge::config::{Config, MeterConfig};
use leap_edge::control::ControlCommander;
use leap_edge::device::{Battery, DeviceError};
use leap_edge::dispatch::Commander;
use leap_edge::model::Command;
use leap_edge::sim::Mode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT_MS: u64 = 1500;
const LONG: Duration = Duration::from_secs(30);

/// A TCP proxy to the device. `delay_ms` holds back every answer; connections numbered
/// below `dead_below` forward nothing any more but stay open (half-open).
#[derive(Default)]
struct Proxy {
    delay_ms: AtomicU64,
    dead_below: AtomicU64,
    next_id: AtomicU64,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> (Arc<Proxy>, SocketAddr) {
        let proxy = Arc::new(Proxy::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let id = p.next_id.fetch_add(1, Ordering::SeqCst);
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue; // device down: the driver sees the connection close
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(p.clone(), id, dr, uw, false));
                tokio::spawn(pump(p.clone(), id, ur, dw, true));
            }
        });
        (proxy, addr)
    }

    /// Every connection open now goes silent without being closed.
    fn half_open_all(&self) {
        self.dead_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pump(
    p: Arc<Proxy>,
    id: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    answers: bool,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = p.delay_ms.load(Ordering::SeqCst);
        if answers && delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if id < p.dead_below.load(Ordering::SeqCst) {
            // Half-open: swallow the bytes, keep the socket. Hold the write half so the
            // driver's side never sees a FIN.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The device is in remote control holding `kw` (the physics publish on their next tick).
async fn holds(sim: &leap_edge::sim::SimHandle, kw: f64) -> bool {
    eventually(LONG, || {
        let s = sim.snapshot();
        s.mode == Mode::Remote124 && (s.target_kw - kw).abs() < 0.01
    })
    .await
}

fn connects(bat: &leap_edge::device::ModbusBattery) -> u64 {
    bat.state().lock().unwrap().connects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_half_open_connection_and_device_restart_in_one_run() {
    let t0 = Instant::now();
    let sim = start_sim().await;
    let sim_addr = sim.local_addr();
    let (proxy, addr) = Proxy::start(sim_addr).await;
    let mut bat = leap_edge::device::open(
        "bess",
        &device_cfg("sunspec", addr, TIMEOUT_MS),
        &devices_dir(),
    )
    .unwrap();
    bat.set_power(10.0, 30).await.unwrap();
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Remote124).await);

    // 1. Slow, but inside the timeout: no error, same connection.
    proxy.delay_ms.store(TIMEOUT_MS / 2, Ordering::SeqCst);
    let before = connects(&bat);
    bat.read().await.unwrap();
    bat.set_power(12.0, 30).await.unwrap();
    assert!(holds(&sim, 12.0).await, "{:?}", sim.snapshot());
    assert_eq!(
        connects(&bat),
        before,
        "a slow answer is not a reason to reconnect"
    );

    // 2. Slower than the timeout: reported as a timeout; fine again once answers speed up.
    proxy.delay_ms.store(TIMEOUT_MS * 2, Ordering::SeqCst);
    let e = bat.read().await.unwrap_err();
    assert!(matches!(e, DeviceError::Timeout { .. }), "{e}");
    proxy.delay_ms.store(0, Ordering::SeqCst);
    retry(LONG, async || bat.set_power(11.0, 30).await)
        .await
        .unwrap();
    assert!(holds(&sim, 11.0).await, "{:?}", sim.snapshot());

    // 3. Half-open: the live connection goes silent without a FIN or RST.
    bat.read().await.unwrap();
    proxy.half_open_all();
    let before = connects(&bat);
    let e = bat.set_power(8.0, 30).await.unwrap_err();
    assert!(matches!(e, DeviceError::Timeout { .. }), "{e}");
    retry(LONG, async || bat.set_power(8.0, 30).await)
        .await
        .unwrap();
    assert!(
        connects(&bat) > before,
        "a fresh connection replaced the half-open one"
    );
    assert!(holds(&sim, 8.0).await, "{:?}", sim.snapshot());

    // 4. The device restarts in the middle of the timeslot: it comes back on the same
    // address in normal mode, having forgotten the command.
    let mut sim = sim;
    sim.shutdown();
    drop(sim);
    let down = bat.set_power(8.0, 30).await;
    assert!(down.is_err(), "a device that is down cannot take a command");
    let listener = tokio::net::TcpListener::bind(sim_addr).await.unwrap();
    let sim = leap_edge::sim::spawn_with(&sim_cfg(), listener, Default::default()).unwrap();
    assert_eq!(
        sim.snapshot().mode,
        Mode::Normal,
        "restarted device is fresh"
    );
    retry(LONG, async || bat.set_power(8.0, 30).await)
        .await
        .unwrap();
    assert!(holds(&sim, 8.0).await, "{:?}", sim.snapshot());
    // End of the timeslot: handed back to normal operation.
    retry(LONG, async || bat.release().await).await.unwrap();
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Normal).await);
    eprintln!(
        "modbus faults: slow ({} ms, {} ms), half-open, restart; {} connects; {:.1} s",
        TIMEOUT_MS / 2,
        TIMEOUT_MS * 2,
        connects(&bat),
        t0.elapsed().as_secs_f64()
    );
}

const METER: &str = "dd21c76c-0000-4000-8000-0000000000aa";

fn control_config(device: SocketAddr) -> Config {
    let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
    let mut c = Config::parse_str(text, std::path::Path::new("test.toml")).unwrap();
    c.site.control_period_ms = 500;
    c.devices_dir = devices_dir();
    c.devices
        .insert("bess".into(), device_cfg("sunspec", device, TIMEOUT_MS));
    c.meters.push(MeterConfig {
        id: METER.into(),
        device: "bess".into(),
        weight: 1.0,
        name: None,
    });
    c
}

fn command(kw: f64) -> Command {
    Command::award(
        "ev-faults",
        kw,
        chrono::Utc::now() + chrono::Duration::minutes(30),
    )
}

/// The device takes new writes from the loop (its write counter moves on).
async fn writes_resume(sim: &leap_edge::sim::SimHandle) -> bool {
    let before = sim.snapshot().writes;
    eventually(LONG, || sim.snapshot().writes > before).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_loop_keeps_the_command_through_slow_half_open_and_restarted_devices() {
    let t0 = Instant::now();
    let sim = start_sim().await;
    let sim_addr = sim.local_addr();
    let (proxy, addr) = Proxy::start(sim_addr).await;
    let cfg = control_config(addr);
    let dir = cfg.devices_dir.clone();
    let cc = ControlCommander::start(&cfg, Arc::new(SystemClock), |name, dev| {
        Ok(Box::new(leap_edge::device::open(name, dev, &dir)?) as Box<dyn Battery>)
    })
    .unwrap();
    let status = cc.status();
    let errors = || status.meter(METER).unwrap().errors_total;
    cc.apply(METER, &command(10.0)).await.unwrap();
    assert!(holds(&sim, 10.0).await, "{:?}", sim.snapshot());

    // 1. Slow answers well within the timeout: the loop keeps writing, no error, and the
    // battery is not handed back. 100 ms an answer keeps a reading's five requests inside
    // two control periods; slower, a reading is stale (SPEC §2.13), a hand-back by design.
    proxy.delay_ms.store(TIMEOUT_MS / 15, Ordering::SeqCst);
    let e0 = errors();
    assert!(writes_resume(&sim).await);
    // Three readings' worth of requests, at least, all at that pace.
    let asked = sim.snapshot().requests;
    assert!(eventually(LONG, || sim.snapshot().requests >= asked + 15).await);
    let now = status.meter(METER).unwrap();
    assert_eq!(now.errors_total, e0, "{now:?}");
    assert_eq!(now.blind, None, "{now:?}");
    assert!(holds(&sim, 10.0).await, "{:?}", sim.snapshot());

    // 2. Slower than the timeout: errors, then writes again once the answers speed up.
    proxy.delay_ms.store(TIMEOUT_MS * 2, Ordering::SeqCst);
    assert!(eventually(LONG, || errors() > e0).await);
    proxy.delay_ms.store(0, Ordering::SeqCst);
    assert!(writes_resume(&sim).await);
    assert!(holds(&sim, 10.0).await);

    // 3. Half-open connection: the loop's next call times out, it reconnects, writes on.
    let e1 = errors();
    proxy.half_open_all();
    assert!(eventually(LONG, || errors() > e1).await);
    assert!(writes_resume(&sim).await);
    assert!(holds(&sim, 10.0).await);

    // 4. The device restarts mid-timeslot and comes back in normal mode: the loop puts
    // the command back without any new apply from dispatch.
    let mut sim = sim;
    sim.shutdown();
    drop(sim);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = tokio::net::TcpListener::bind(sim_addr).await.unwrap();
    let sim = leap_edge::sim::spawn_with(&sim_cfg(), listener, Default::default()).unwrap();
    assert!(holds(&sim, 10.0).await, "{:?}", sim.snapshot());
    assert!(
        eventually(LONG, || status.meter(METER).unwrap().consecutive_errors
            == 0)
        .await,
        "{:?}",
        status.meter(METER)
    );

    // End of the timeslot: back to normal operation.
    cc.release(METER).await.unwrap();
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Normal).await);
    cc.shutdown(Duration::from_secs(5)).await;
    eprintln!(
        "modbus faults through ControlCommander: {} failed steps in all; {:.1} s",
        errors(),
        t0.elapsed().as_secs_f64()
    );
}
