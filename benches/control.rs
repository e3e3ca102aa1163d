//! Control benchmark (issue 4): on the site simulator over real Modbus TCP,
//! 1. boundary → setpoint readable in the inverter's registers, through the whole daemon
//!    (plain HTTP on loopback → SQLite → plan → dispatch timer → control loop → Modbus);
//! 2. no-export violation after a load step: how long grid import stays below the margin
//!    when the site load drops under the discharge during an up-to-site-load timeslot.
//!
//! Run: `cargo bench --bench control` (add `-- quick` for a shorter run).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leap_edge::clock::SystemClock;
use leap_edge::config::{Config, SimConfig};
use leap_edge::control::ControlCommander;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::Commander;
use leap_edge::model::{Cap, Command, ExecMode, Kind, Strategy, Target};
use leap_edge::sim::{self, SimHandle, SimOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "bench-key-0123456789-abcdefghijklmn";
const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
const PERIOD_MS: u64 = 1000;

async fn start_sim() -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = SimConfig {
        load: "constant:30".into(),
        ramp_kw_per_s: 100.0,
        ..SimConfig::default()
    };
    sim::spawn_with(&cfg, listener, SimOptions::default()).unwrap()
}

fn config(dir: &Path, sim: &SimHandle) -> Config {
    let devices = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
    let text = format!(
        "devices_dir = {devices:?}\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n\
         [storage]\npath = \"bench.db\"\n[admin]\nsocket = \"admin.sock\"\n[site]\ncontrol_period_ms = {PERIOD_MS}\n\
         [[meters]]\nid = \"{METER}\"\ndevice = \"sim\"\n[devices.sim]\nprofile = \"sunspec\"\n\
         host = \"127.0.0.1\"\nport = {}\nreversion_secs = 30\n",
        sim.local_addr().port()
    );
    std::fs::write(dir.join("config.toml"), text).unwrap();
    Config::load(&dir.join("config.toml")).unwrap()
}

async fn post(addr: std::net::SocketAddr, body: String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/leap/dispatch")
        .header("host", "localhost")
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
}

fn slot(id: String, start: DateTime<Utc>, end: DateTime<Utc>, kw: f64) -> serde_json::Value {
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({"meter_event_id": id, "start_time": ts(start), "end_time": ts(end),
        "cancelled": false, "energy_kw": kw, "performance_compensation_cap": "up-to-site-load",
        "priority": 1, "is_voluntary": false, "dispatch_event_types": ["5m"], "programs": ["DRAM"]})
}

/// Back-to-back 1 s timeslots alternating 10 and 20 kW; each boundary's latency is the
/// time until model 124 OutWRte holds the new percentage (of 50 kW).
async fn boundaries(n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim().await;
    let config = config(dir.path(), &sim);
    let cc = Arc::new(ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap());
    let parts = Parts {
        commander: cc.clone(),
        clock: Arc::new(SystemClock),
        live: Arc::new(Vec::new),
    };
    let running = daemon::start(config, parts).await.unwrap();
    let t0 = Utc::now() + chrono::Duration::milliseconds(2000);
    let kw = |k: usize| if k.is_multiple_of(2) { 10.0 } else { 20.0 };
    let at = |k: usize| t0 + chrono::Duration::milliseconds(1000 * k as i64);
    let slots: Vec<_> = (0..n)
        .map(|k| slot(format!("bench-{k}"), at(k), at(k + 1), kw(k)))
        .collect();
    let body = serde_json::json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": METER, "timeslots": slots}]});
    post(running.addr, body.to_string()).await;
    let mut out = Vec::new();
    for k in 0..n {
        let want = kw(k) / 50.0 * 100.0;
        loop {
            let now = Utc::now();
            if now >= at(k) && sim.point(124, "OutWRte") == Some(want) {
                out.push((now - at(k)).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                break;
            }
            assert!(now < at(k + 1), "boundary {k}: setpoint never seen");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    running.stop().await;
    cc.shutdown(Duration::from_secs(3)).await;
    out
}

/// Load steps 30 → 12 kW under a 20 kW up-to-site-load discharge; the time grid import
/// stays below the 0.5 kW margin after each step.
async fn load_steps(n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim().await;
    let config = config(dir.path(), &sim);
    let cc = ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap();
    let cmd = Command {
        kind: Kind::Meter,
        event_id: "bench-steps".into(),
        mode: ExecMode::Execute,
        target: Target::Kw(20.0),
        cap: Cap::UpToSiteLoad,
        limit_kw: None,
        export_allowed_kw: 0.0,
        import_margin_kw: 0.5,
        strategy: Strategy::Award,
        priority: 1,
        programs: vec![],
        until: Utc::now() + chrono::Duration::hours(1),
        reason: "bench".into(),
        known_since: None,
    };
    cc.apply(METER, &cmd).await.unwrap();
    let mut out = Vec::new();
    for k in 0..n {
        sim.set_load(Some(30.0));
        // Settle at 20 kW, then step at an arbitrary phase of the control period.
        tokio::time::sleep(Duration::from_millis(2000 + 137 * k as u64 % PERIOD_MS)).await;
        sim.set_load(Some(12.0));
        let step = Instant::now();
        let mut last_below = None;
        while step.elapsed() < Duration::from_millis(PERIOD_MS * 3) {
            if sim.snapshot().grid_kw < 0.5 - 0.05 {
                last_below = Some(step.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out.push(last_below.map_or(0.0, |d| d.as_secs_f64() * 1000.0));
    }
    cc.shutdown(Duration::from_secs(3)).await;
    out
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{name:<58} n={:<4} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        pct(0.5),
        pct(0.99),
        v[v.len() - 1]
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = boundaries(if quick { 10 } else { 60 }).await;
        report("boundary -> setpoint readable on the device", b);
        let s = load_steps(if quick { 3 } else { 20 }).await;
        report(
            &format!("load step: grid import below margin (period {PERIOD_MS} ms)"),
            s,
        );
    });
}
